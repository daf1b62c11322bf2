"""Rule crop_cache: crop manifest -> crops_{split}.npy + .csv."""

from lesioncl.adapter import run
from lesioncl.crop.cache import build_crop_cache


def main(job):
    build_crop_cache(
        manifest=job.input.manifest,
        split=job.wildcards.split,
        size=job.params.size,
        npy_out=job.output.npy,
        csv_out=job.output.csv,
        threads=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
