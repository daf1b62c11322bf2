"""Rule lesions_predict: detector boxes on one shard of the crops."""

from lesioncl.adapter import run
from lesioncl.lesions import PredictSettings, predict_shard


def main(job):
    predict_shard(
        job.input.manifest,
        job.input.config,
        job.input.model,
        job.output[0],
        shard=int(job.wildcards.shard),
        n_shards=job.params.n_shards,
        settings=job.settings(PredictSettings, "settings"),
        workers=job.operational("lesion_index", "workers")["workers"],
        device=job.device(),
        threads=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
