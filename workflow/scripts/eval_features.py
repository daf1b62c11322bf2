"""Rule eval_features: frozen features of one method on one split."""

from lesioncl.adapter import run
from lesioncl.evaluation.features import run_feature_extraction


def main(job):
    run_feature_extraction(
        method=job.wildcards.method,
        split=job.wildcards.split,
        images_npy=job.input.npy,
        images_csv=job.input.csv,
        output=job.output[0],
        arch=job.params.arch,
        weights=job.optional_input("weights"),
        seed=job.params.seed,
        imagenet_weights=job.params.imagenet_weights,
        input_size=job.params.input_size,
        batch_size=job.params.batch_size,
        device=job.device(),
        amp=job.params.amp,
        **job.operational("evaluation", "channels_last", "workers"),
    )


run(snakemake, main, torch_threads=True)  # noqa: F821 - injected by Snakemake
