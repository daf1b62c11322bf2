"""Rule idrid_coco: IDRiD masks -> boxes -> COCO json + images."""

from lesioncl.adapter import run
from lesioncl.idrid import CocoSettings, build_idrid_coco


def main(job):
    build_idrid_coco(
        source_path=job.input[0],
        coco_paths={"train": job.output.train, "test": job.output.test},
        images_dir=job.output.images,
        summary_path=job.output.summary,
        qc_path=job.output.qc,
        settings=job.settings(CocoSettings, "settings"),
        threads=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
