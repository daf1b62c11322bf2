"""Rule lesions_truth_index: the synthetic generator's true lesion boxes as a lesion index."""

from lesioncl.adapter import run
from lesioncl.lesions.controls import TruthIndexSettings
from lesioncl.lesions.sources import build_truth_index


def main(job):
    build_truth_index(
        job.input.lesions,
        job.input.manifest,
        out_pkl=job.output.pkl,
        out_json=job.output.json,
        out_summary=job.output.summary,
        settings=job.settings(TruthIndexSettings, "settings"),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
