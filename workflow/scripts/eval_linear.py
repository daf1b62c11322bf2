"""Rule eval_linear: one linear evaluation (method x fraction x seed)."""

from lesioncl.adapter import run
from lesioncl.evaluation.linear import LinearSettings, run_linear


def main(job):
    run_linear(
        method=job.wildcards.method,
        fraction=float(job.wildcards.fraction),
        seed=int(job.wildcards.seed),
        train_features=job.input.train,
        val_features=job.input.val,
        test_features=job.input.test,
        fractions_csv=job.input.fractions,
        output=job.output[0],
        settings=job.settings(LinearSettings, "settings"),
        tensorboard_dir=job.params.tensorboard,
        threads=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
