"""Rule finetune_curves_plot: fine-tuning histories -> curves."""

from lesioncl.adapter import run
from lesioncl.report import plot_finetune_curves


def main(job):
    plot_finetune_curves(
        dict(zip(job.params.methods, job.input)), job.output[0], title=job.params.title
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
