"""Snakemake adapter: write the synthetic EyePACS-like raw set (lesioncl.synthetic)."""

from lesioncl.synthetic import generate_eyepacs
from lesioncl.utils import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
p = snakemake.params  # noqa: F821
generate_eyepacs(
    snakemake.output.raw,  # noqa: F821
    snakemake.output.truth,  # noqa: F821
    snakemake.output.lesions,  # noqa: F821
    snakemake.output.qc,  # noqa: F821
    seed=p.seed,
    n_train=p.n_train,
    n_test=p.n_test,
    min_height=p.min_height,
    max_height=p.max_height,
    bad_files=p.bad_files,
    grade_distribution=p.grade_distribution,
    public_fraction=p.public_fraction,
    workers=snakemake.threads,  # noqa: F821
    texture=p.texture,
)
