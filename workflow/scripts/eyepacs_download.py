"""Rule eyepacs_download: Kaggle competition files -> archives/."""

from lesioncl.adapter import run
from lesioncl.eyepacs import EyepacsError
from lesioncl.eyepacs.download import download_competition
from lesioncl.utils import write_json


def main(job):
    manifest = download_competition(
        competition=job.params.competition,
        download_dir=job.params.download_dir,
    )
    write_json(job.output.manifest, manifest)


run(snakemake, main, clean_errors=(EyepacsError,))  # noqa: F821 - injected by Snakemake
