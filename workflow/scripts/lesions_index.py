"""Rule lesions_index: merge, filter and write the lesion index."""

from lesioncl.adapter import run
from lesioncl.lesions import IndexSettings, build_lesion_index


def main(job):
    build_lesion_index(
        job.input.shards,
        job.input.manifest,
        out_pkl=job.output.pkl,
        out_json=job.output.json,
        out_summary=job.output.summary,
        out_histogram=job.output.histogram,
        out_qc=job.output.qc,
        settings=job.settings(IndexSettings, "settings"),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
