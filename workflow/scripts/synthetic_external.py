"""Rule synthetic_external: one synthetic graded set in its published layout."""

from lesioncl.adapter import run
from lesioncl.synthetic.graded_sets import GradedSetSettings, generate_graded_set
from lesioncl.utils import write_json


def main(job):
    summary = generate_graded_set(
        job.wildcards.set,
        job.output.root,
        job.settings(GradedSetSettings, "settings"),
        workers=job.threads,
    )
    write_json(job.output.summary, summary)


run(snakemake, main)  # noqa: F821 - injected by Snakemake
