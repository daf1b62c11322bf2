"""Rule kappa_plot: kappa.csv -> kappa vs label fraction of one evaluation."""

from lesioncl.adapter import run
from lesioncl.report import kappa_plot_from_table


def main(job):
    kappa_plot_from_table(job.input[0], job.wildcards.evaluation, job.output[0])


run(snakemake, main)  # noqa: F821 - injected by Snakemake
