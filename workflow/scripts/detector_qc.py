"""Rule detector_qc: detector boxes beside the ground truth on IDRiD test images."""

from pathlib import Path

from lesioncl.adapter import run
from lesioncl.detector.qc import DetectorQcSettings, draw_detector_qc


def main(job):
    draw_detector_qc(
        job.input.config,
        job.input.model,
        job.input.test,
        str(Path(job.input.images) / "test"),
        job.output[0],
        settings=job.settings(DetectorQcSettings, "settings"),
        device=job.device(),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
