"""Rule synthetic_ddr: the synthetic DDR-like lesion set (lesioncl.synthetic)."""

from lesioncl.adapter import run
from lesioncl.synthetic import DdrSetSettings, generate_ddr_lesions


def main(job):
    generate_ddr_lesions(
        job.output.root,
        job.output.truth,
        job.output.qc,
        settings=job.settings(DdrSetSettings, "settings"),
        workers=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
