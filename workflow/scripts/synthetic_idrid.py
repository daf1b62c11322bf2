"""Rule synthetic_idrid: the synthetic IDRiD-like segmentation set (lesioncl.synthetic)."""

from lesioncl.adapter import run
from lesioncl.synthetic import IdridSetSettings, generate_idrid


def main(job):
    generate_idrid(
        job.output.root,
        job.output.truth,
        job.output.qc,
        settings=job.settings(IdridSetSettings, "settings"),
        workers=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
