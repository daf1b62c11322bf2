"""Rule external_features: frozen features of one method on a graded set's three splits
(one job: the sets are small, a job per split would mostly load torch)."""

from lesioncl.adapter import run
from lesioncl.evaluation.features import FeatureSettings, run_feature_extraction


def main(job):
    for split in ("train", "val", "test"):
        run_feature_extraction(
            method=job.wildcards.method,
            split=split,
            images_npy=getattr(job.input, f"{split}_npy"),
            images_csv=getattr(job.input, f"{split}_csv"),
            output=getattr(job.output, split),
            arch=job.params.arch,
            weights=job.optional_input("weights"),
            imagenet_weights=job.params.imagenet_weights,
            settings=job.settings(FeatureSettings, "settings"),
            device=job.device(),
            **job.operational("evaluation", "channels_last", "workers"),
        )


run(snakemake, main, torch_threads=True)  # noqa: F821 - injected by Snakemake
