"""Rule ddr_coco: DDR's lesion masks or VOC boxes -> COCO json + images."""

from lesioncl.adapter import run
from lesioncl.ddr import DdrCocoSettings, build_ddr_coco


def main(job):
    build_ddr_coco(
        source_path=job.input[0],
        coco_paths={split: job.output[split] for split in ("train", "val", "test")},
        images_dir=job.output.images,
        summary_path=job.output.summary,
        rejects_path=job.output.rejects,
        qc_path=job.output.qc,
        settings=job.settings(DdrCocoSettings, "settings"),
        threads=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
