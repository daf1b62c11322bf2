"""Snakemake adapter of rule kappa_table: run JSONs -> results/tables/kappa.csv and kappa.md."""

from lesioncl.report import build_kappa_table
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    build_kappa_table(
        result_paths=list(snakemake.input.linear) + list(snakemake.input.finetune),  # noqa: F821
        methods=snakemake.params.methods,  # noqa: F821
        fractions=snakemake.params.fractions,  # noqa: F821
        fractions_of=snakemake.params.fractions_of,  # noqa: F821
        evaluations=snakemake.params.evaluations,  # noqa: F821
        csv_path=snakemake.output.csv,  # noqa: F821
        md_path=snakemake.output.md,  # noqa: F821
    )
except Exception:
    log.exception("rule kappa_table failed")
    raise
