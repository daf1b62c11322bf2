"""Snakemake adapter of rule crop_cache: crop manifest -> crops_{split}.npy + .csv."""

from lesioncl.pretrain.cache import build_crop_cache
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    build_crop_cache(
        manifest=snakemake.input.manifest,  # noqa: F821
        split=snakemake.wildcards.split,  # noqa: F821
        size=snakemake.params.size,  # noqa: F821
        npy_out=snakemake.output.npy,  # noqa: F821
        csv_out=snakemake.output.csv,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
except Exception:
    log.exception("rule crop_cache failed")
    raise
