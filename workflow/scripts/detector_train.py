"""Snakemake adapter of rule detector_train: train, publish and evaluate the lesion detector."""

from pathlib import Path

from lesioncl.detector.train import train_detector
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    images = Path(snakemake.input.images)  # noqa: F821
    train_detector(
        snakemake.params.detector,  # noqa: F821
        train_ann=snakemake.input.train,  # noqa: F821
        train_images=str(images / "train"),
        test_ann=snakemake.input.test,  # noqa: F821
        test_images=str(images / "test"),
        out_model=snakemake.output.model,  # noqa: F821
        out_config=snakemake.output.config,  # noqa: F821
        out_metrics=snakemake.output.metrics,  # noqa: F821
        out_curves=snakemake.output.curves,  # noqa: F821
        work_dir=snakemake.output.work,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
        device=snakemake.params.device,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        # beside the outputs, not one of them (kept when a failed job's outputs are deleted)
        resume_dir=str(Path(snakemake.output.model).with_name("checkpoints")),  # noqa: F821
    )
except Exception:
    log.exception("rule detector_train failed")
    raise
