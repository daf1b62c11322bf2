"""Snakemake adapter of rule confusion_plot: run JSONs -> test confusion matrices."""

from lesioncl.report import confusion_plot_from_results
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    confusion_plot_from_results(
        list(snakemake.input),  # noqa: F821
        snakemake.params.methods,  # noqa: F821
        snakemake.params.evaluations,  # noqa: F821
        snakemake.output[0],  # noqa: F821
    )
except Exception:
    log.exception("rule confusion_plot failed")
    raise
