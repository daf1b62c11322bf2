"""Snakemake adapter of rule detector_qc: detector boxes beside the ground truth on IDRiD test images."""

from pathlib import Path

from lesioncl.detector.qc import draw_detector_qc
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    draw_detector_qc(
        snakemake.input.config,  # noqa: F821
        snakemake.input.model,  # noqa: F821
        snakemake.input.test,  # noqa: F821
        str(Path(snakemake.input.images) / "test"),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        n_images=snakemake.params.n_images,  # noqa: F821
        score_threshold=snakemake.params.score_threshold,  # noqa: F821
        device=snakemake.params.device,  # noqa: F821
    )
except Exception:
    log.exception("rule detector_qc failed")
    raise
