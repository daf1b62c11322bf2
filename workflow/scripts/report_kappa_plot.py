"""Snakemake adapter of rule kappa_plot: kappa.csv -> kappa vs label fraction of one evaluation."""

from lesioncl.report import kappa_plot_from_table
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    kappa_plot_from_table(
        snakemake.input[0],  # noqa: F821
        snakemake.wildcards.evaluation,  # noqa: F821
        snakemake.output[0],  # noqa: F821
    )
except Exception:
    log.exception("rule kappa_plot failed")
    raise
