"""Snakemake adapter of rule lesions_predict: detector boxes on one shard of the crops."""

from lesioncl.lesion_index import predict_shard
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    predict_shard(
        snakemake.input.manifest,  # noqa: F821
        snakemake.input.config,  # noqa: F821
        snakemake.input.model,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        shard=int(snakemake.wildcards.shard),  # noqa: F821
        n_shards=snakemake.params.n_shards,  # noqa: F821
        size=snakemake.params.size,  # noqa: F821
        batch_size=snakemake.params.batch_size,  # noqa: F821
        workers=snakemake.params.workers,  # noqa: F821
        device=snakemake.params.device,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
except Exception:
    log.exception("rule lesions_predict failed")
    raise
