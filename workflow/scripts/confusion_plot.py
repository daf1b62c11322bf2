"""Rule confusion_plot: run JSONs -> test confusion matrices."""

from lesioncl.adapter import run
from lesioncl.report import confusion_plot_from_results


def main(job):
    confusion_plot_from_results(
        list(job.input), job.params.methods, job.params.evaluations, job.output[0]
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
