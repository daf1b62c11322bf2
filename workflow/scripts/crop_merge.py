"""Snakemake adapter of rule crop_merge: shard tables -> manifest, rejects, summary, QC."""

from lesioncl.crop import merge_shards
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    merge_shards(
        labels_csv=snakemake.input.labels,  # noqa: F821
        tables=snakemake.input.tables,  # noqa: F821
        n_shards=snakemake.params.n_shards,  # noqa: F821
        manifest_path=snakemake.output.manifest,  # noqa: F821
        rejects_path=snakemake.output.rejects,  # noqa: F821
        summary_path=snakemake.output.summary,  # noqa: F821
        qc_path=snakemake.output.qc,  # noqa: F821
        qc_images=snakemake.params.qc_images,  # noqa: F821
    )
except Exception:
    log.exception("rule crop_merge failed")
    raise
