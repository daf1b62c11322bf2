"""Rule pretrain_curves_plot: history.csv files -> loss curves."""

from lesioncl.adapter import run
from lesioncl.report import plot_pretrain_curves


def main(job):
    plot_pretrain_curves(dict(zip(job.params.methods, job.input)), job.output[0])


run(snakemake, main)  # noqa: F821 - injected by Snakemake
