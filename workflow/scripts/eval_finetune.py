"""Rule eval_finetune: one fine-tuning run (method x fraction x seed)."""

from lesioncl.adapter import run
from lesioncl.evaluation.finetune import FinetuneSettings
from lesioncl.evaluation.finetune_job import run_finetune


def main(job):
    inp = job.input
    run_finetune(
        method=job.wildcards.method,
        fraction=float(job.wildcards.fraction),
        seed=int(job.wildcards.seed),
        arch=job.params.arch,
        weights=job.optional_input("weights"),
        imagenet_weights=job.params.imagenet_weights,
        cache={
            split: (inp[f"{split}_npy"], inp[f"{split}_csv"]) for split in ("train", "val", "test")
        },
        fractions_csv=inp.fractions,
        output=job.output.result,
        history_csv=job.output.history,
        checkpoint=job.params.checkpoint,
        tensorboard_dir=job.params.tensorboard,
        settings=job.settings(
            FinetuneSettings, **job.operational("evaluation", "channels_last", "workers")
        ),
        device=job.device(),
        threads=job.threads,
        model_output=job.params.model or None,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
