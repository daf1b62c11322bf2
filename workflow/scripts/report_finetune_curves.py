"""Snakemake adapter of rule finetune_curves_plot: fine-tuning histories -> curves."""

from lesioncl.report import plot_finetune_curves
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    plot_finetune_curves(
        dict(zip(snakemake.params.methods, snakemake.input)),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        title=snakemake.params.title,  # noqa: F821
    )
except Exception:
    log.exception("rule finetune_curves_plot failed")
    raise
