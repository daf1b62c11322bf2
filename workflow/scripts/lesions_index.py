"""Snakemake adapter of rule lesions_index: merge, filter and write the lesion index."""

from lesioncl.lesion_index import build_lesion_index
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    build_lesion_index(
        snakemake.input.shards,  # noqa: F821
        snakemake.input.manifest,  # noqa: F821
        out_pkl=snakemake.output.pkl,  # noqa: F821
        out_json=snakemake.output.json,  # noqa: F821
        out_summary=snakemake.output.summary,  # noqa: F821
        out_histogram=snakemake.output.histogram,  # noqa: F821
        out_qc=snakemake.output.qc,  # noqa: F821
        score_threshold=snakemake.params.score_threshold,  # noqa: F821
        max_box_size=snakemake.params.max_box_size,  # noqa: F821
        border_margin=snakemake.params.border_margin,  # noqa: F821
        size=snakemake.params.size,  # noqa: F821
        qc_images=snakemake.params.qc_images,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
except Exception:
    log.exception("rule lesions_index failed")
    raise
