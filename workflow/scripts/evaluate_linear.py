"""Snakemake adapter of rule eval_linear: one linear evaluation (method x fraction x seed)."""

from lesioncl.evaluation.linear import run_linear
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    run_linear(
        method=snakemake.wildcards.method,  # noqa: F821
        fraction=float(snakemake.wildcards.fraction),  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        train_features=snakemake.input.train,  # noqa: F821
        val_features=snakemake.input.val,  # noqa: F821
        test_features=snakemake.input.test,  # noqa: F821
        fractions_csv=snakemake.input.fractions,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        epochs=snakemake.params.epochs,  # noqa: F821
        lr=snakemake.params.lr,  # noqa: F821
        weight_decays=snakemake.params.weight_decays,  # noqa: F821
        batch_size=snakemake.params.batch_size,  # noqa: F821
        class_balanced=snakemake.params.class_balanced,  # noqa: F821
        tensorboard_dir=snakemake.params.tensorboard,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
except Exception:
    log.exception("rule eval_linear failed")
    raise
