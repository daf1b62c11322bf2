"""Snakemake adapter of rule report_front_page: the report's front page (front_page.rst)."""

from lesioncl.frontpage import build_front_page
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    build_front_page(
        snakemake.input.description,  # noqa: F821
        snakemake.input.kappa,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        snakemake.params.config,  # noqa: F821
        configfiles=snakemake.params.configfiles,  # noqa: F821
        methods=snakemake.params.methods,  # noqa: F821
    )
except Exception:
    log.exception("rule report_front_page failed")
    raise
