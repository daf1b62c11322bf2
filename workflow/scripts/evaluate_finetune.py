"""Snakemake adapter of rule eval_finetune: one fine-tuning run (method x fraction x seed)."""

from lesioncl.evaluation.finetune import FinetuneSettings, run_finetune
from lesioncl.utils import resolve_device, setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    inp = snakemake.input  # noqa: F821
    weights = inp.weights
    weights = [weights] if isinstance(weights, str) else list(weights)  # a Namedlist, maybe empty
    run_finetune(
        method=snakemake.wildcards.method,  # noqa: F821
        fraction=float(snakemake.wildcards.fraction),  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        arch=snakemake.params.arch,  # noqa: F821
        weights=weights[0] if weights else None,
        imagenet_weights=snakemake.params.imagenet_weights,  # noqa: F821
        cache={split: (inp[f"{split}_npy"], inp[f"{split}_csv"]) for split in ("train", "val", "test")},
        fractions_csv=inp.fractions,
        output=snakemake.output.result,  # noqa: F821
        history_csv=snakemake.output.history,  # noqa: F821
        checkpoint=snakemake.params.checkpoint,  # noqa: F821
        tensorboard_dir=snakemake.params.tensorboard,  # noqa: F821
        settings=FinetuneSettings(**snakemake.params.settings),  # noqa: F821
        device=resolve_device(snakemake.params.device),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
except Exception:
    log.exception("rule eval_finetune failed")
    raise
