"""Rule eval_features: frozen features of one method on one split."""

from lesioncl.adapter import run
from lesioncl.evaluation.features import FeatureSettings, run_feature_extraction


def main(job):
    run_feature_extraction(
        method=job.wildcards.method,
        split=job.wildcards.split,
        images_npy=job.input.npy,
        images_csv=job.input.csv,
        output=job.output[0],
        arch=job.params.arch,
        weights=job.optional_input("weights"),
        imagenet_weights=job.params.imagenet_weights,
        settings=job.settings(FeatureSettings, "settings"),
        device=job.device(),
        **job.operational("evaluation", "channels_last", "workers"),
    )


run(snakemake, main, torch_threads=True)  # noqa: F821 - injected by Snakemake
