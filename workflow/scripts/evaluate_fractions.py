"""Snakemake adapter of rule eval_fractions: training rows -> nested label fractions of one seed."""

from lesioncl.evaluation.fractions import write_fractions
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    write_fractions(
        train_csv=snakemake.input[0],  # noqa: F821
        fractions=snakemake.params.fractions,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
    )
except Exception:
    log.exception("rule eval_fractions failed")
    raise
