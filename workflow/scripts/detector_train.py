"""Rule detector_train: train, publish and evaluate the lesion detector."""

from pathlib import Path

from lesioncl.adapter import run
from lesioncl.detector.train import train_detector


def main(job):
    images = Path(job.input.images)
    train_detector(
        {**job.params.detector, **job.operational("detector", "workers")},
        train_ann=job.input.train,
        train_images=str(images / "train"),
        test_ann=job.input.test,
        test_images=str(images / "test"),
        out_model=job.output.model,
        out_config=job.output.config,
        out_metrics=job.output.metrics,
        out_curves=job.output.curves,
        work_dir=job.output.work,
        seed=job.params.seed,
        device=job.device(),
        threads=job.threads,
        # beside the outputs, not one of them (kept when a failed job's outputs are deleted)
        resume_dir=str(Path(job.output.model).with_name("checkpoints")),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
