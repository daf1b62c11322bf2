"""Snakemake adapter: write the synthetic IDRiD-like segmentation set (lesioncl.synthetic)."""

from lesioncl.synthetic import generate_idrid
from lesioncl.utils import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
p = snakemake.params  # noqa: F821
generate_idrid(
    snakemake.output.root,  # noqa: F821
    snakemake.output.truth,  # noqa: F821
    snakemake.output.qc,  # noqa: F821
    seed=p.seed,
    n_train=p.n_train,
    n_test=p.n_test,
    height=p.height,
    grade_distribution=p.grade_distribution,
    workers=snakemake.threads,  # noqa: F821
    texture=p.texture,
)
