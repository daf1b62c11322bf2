"""Rule detector_eval: the published detector on each source's own val and test splits."""

from pathlib import Path

from lesioncl.adapter import run
from lesioncl.detector.sources import SOURCE_SPLITS, evaluate_sources, write_sources


def main(job):
    sets = []
    for source in job.params.sources:
        images = Path(job.input[f"{source}_images"])
        for split in ("val", "test"):
            if split in SOURCE_SPLITS[source]:
                sets.append((source, split, job.input[f"{source}_{split}"], str(images / split)))
    metrics = evaluate_sources(
        job.input.config,
        job.input.model,
        sets,
        device=job.device(),
        workers=job.operational("detector", "workers")["workers"],
    )
    write_sources(metrics, job.params.sources, job.output.json, job.output.md)


run(snakemake, main)  # noqa: F821 - injected by Snakemake
