"""Rule crop_merge: shard tables -> manifest, rejects, summary, QC."""

from lesioncl.adapter import run
from lesioncl.crop import merge_shards


def main(job):
    merge_shards(
        labels_csv=job.input.labels,
        tables=job.input.tables,
        n_shards=job.params.n_shards,
        manifest_path=job.output.manifest,
        rejects_path=job.output.rejects,
        summary_path=job.output.summary,
        qc_path=job.output.qc,
        qc_images=job.params.qc_images,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
