"""Snakemake adapter of rule idrid_coco: IDRiD masks -> boxes -> COCO json + images."""

from lesioncl.idrid import build_idrid_coco
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    build_idrid_coco(
        source_path=snakemake.input[0],  # noqa: F821
        coco_paths={
            "train": snakemake.output.train,
            "test": snakemake.output.test,
        },  # noqa: F821
        images_dir=snakemake.output.images,  # noqa: F821
        summary_path=snakemake.output.summary,  # noqa: F821
        qc_path=snakemake.output.qc,  # noqa: F821
        mask_threshold=snakemake.params.mask_threshold,  # noqa: F821
        max_size=snakemake.params.max_size,  # noqa: F821
        min_box_size=snakemake.params.min_box_size,  # noqa: F821
        qc_images=snakemake.params.qc_images,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
except Exception:
    log.exception("rule idrid_coco failed")
    raise
