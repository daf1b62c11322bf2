"""Snakemake adapter of rule eval_features: frozen features of one method on one split."""

import torch

from lesioncl.evaluation.features import run_feature_extraction
from lesioncl.utils import resolve_device, setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    weights = snakemake.input.weights  # noqa: F821
    weights = [weights] if isinstance(weights, str) else list(weights)  # a Namedlist, maybe empty
    run_feature_extraction(
        method=snakemake.wildcards.method,  # noqa: F821
        split=snakemake.wildcards.split,  # noqa: F821
        images_npy=snakemake.input.npy,  # noqa: F821
        images_csv=snakemake.input.csv,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        arch=snakemake.params.arch,  # noqa: F821
        weights=weights[0] if weights else None,
        seed=snakemake.params.seed,  # noqa: F821
        imagenet_weights=snakemake.params.imagenet_weights,  # noqa: F821
        input_size=snakemake.params.input_size,  # noqa: F821
        batch_size=snakemake.params.batch_size,  # noqa: F821
        device=resolve_device(snakemake.params.device),  # noqa: F821
        amp=snakemake.params.amp,  # noqa: F821
        channels_last=snakemake.params.channels_last,  # noqa: F821
        workers=snakemake.params.workers,  # noqa: F821
    )
except Exception:
    log.exception("rule eval_features failed")
    raise
