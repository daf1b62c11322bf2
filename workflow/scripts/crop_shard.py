"""Snakemake adapter of rule crop_shard: crop one shard of labels.csv."""

from lesioncl.crop import CropParams, crop_shard
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    crop_shard(
        labels_csv=snakemake.input.labels,  # noqa: F821
        shard=int(snakemake.wildcards.shard),  # noqa: F821
        n_shards=snakemake.params.n_shards,  # noqa: F821
        crops_dir=snakemake.output.crops,  # noqa: F821
        det_dir=snakemake.output.det,  # noqa: F821
        table_path=snakemake.output.table,  # noqa: F821
        params=CropParams(**snakemake.params.crop),  # noqa: F821
        workers=snakemake.threads,  # noqa: F821
    )
except Exception:
    log.exception("rule crop_shard failed")
    raise
