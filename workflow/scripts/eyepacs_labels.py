"""Rule eyepacs_labels: raw folder -> labels.csv, summary, problems."""

from lesioncl.adapter import run
from lesioncl.eyepacs import EyepacsError
from lesioncl.eyepacs.labels import write_labels


def main(job):
    write_labels(
        raw_dir=job.input.raw,
        labels_csv=job.output.labels,
        summary_json=job.output.summary,
        problems_csv=job.output.problems,
        max_missing=job.params.max_missing,
        expect_full=job.params.expect_full,
        error_problems_csv=job.params.error_problems,
    )


run(snakemake, main, clean_errors=(EyepacsError,))  # noqa: F821 - injected by Snakemake
