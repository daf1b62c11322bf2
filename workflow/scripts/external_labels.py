"""Rule external_labels: a graded set's layout -> labels.csv and the layout's rejects."""

from lesioncl.adapter import run
from lesioncl.external import ExternalLayoutError, read_external
from lesioncl.external.crop import write_labels
from lesioncl.external.split import SplitSettings


def main(job):
    labels, rejects = read_external(
        job.wildcards.set, job.params.path, job.settings(SplitSettings, "split")
    )
    write_labels(labels, rejects, job.output.labels, job.output.rejects)


run(snakemake, main, clean_errors=(ExternalLayoutError,))  # noqa: F821 - injected by Snakemake
