"""Rule synthetic_eyepacs: the synthetic EyePACS-like raw set (lesioncl.synthetic)."""

from lesioncl.adapter import run
from lesioncl.synthetic import EyepacsSetSettings, generate_eyepacs


def main(job):
    generate_eyepacs(
        job.output.raw,
        job.output.truth,
        job.output.lesions,
        job.output.qc,
        settings=job.settings(EyepacsSetSettings, "settings"),
        workers=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
