"""Rule crop_shard: crop one shard of labels.csv."""

from lesioncl.adapter import run
from lesioncl.crop import CropParams, crop_shard


def main(job):
    crop_shard(
        labels_csv=job.input.labels,
        shard=int(job.wildcards.shard),
        n_shards=job.params.n_shards,
        crops_dir=job.output.crops,
        det_dir=job.output.det,
        table_path=job.output.table,
        params=job.settings(CropParams, "crop"),
        workers=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
