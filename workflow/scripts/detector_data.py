"""Rule detector_data: the detector's sources joined into one training and test set."""

from lesioncl.adapter import run
from lesioncl.detector.sources import merge_coco


def main(job):
    sources = {}
    for source in job.params.sources:
        files = {"images": job.input[f"{source}_images"]}
        for split in ("train", "test"):
            files[split] = job.input[f"{source}_{split}"]
        sources[source] = files
    merge_coco(
        sources,
        {"train": job.output.train, "test": job.output.test},
        job.output.images,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
