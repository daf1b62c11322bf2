"""Rule eyepacs_unpack: multi-part archives -> raw/ (train/, test/, CSVs)."""

from lesioncl.adapter import run
from lesioncl.eyepacs import EyepacsError
from lesioncl.eyepacs.archives import unpack_all


def main(job):
    unpack_all(
        archives_dir=job.params.archives_dir,
        raw_dir=job.output.raw,
        delete_corrupt=True,
        manifest=job.input.manifest,
    )


run(snakemake, main, clean_errors=(EyepacsError,))  # noqa: F821 - injected by Snakemake
