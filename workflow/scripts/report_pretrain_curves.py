"""Snakemake adapter of rule pretrain_curves_plot: history.csv files -> loss curves."""

from lesioncl.report import plot_pretrain_curves
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    plot_pretrain_curves(
        dict(zip(snakemake.params.methods, snakemake.input)),  # noqa: F821
        snakemake.output[0],  # noqa: F821
    )
except Exception:
    log.exception("rule pretrain_curves_plot failed")
    raise
