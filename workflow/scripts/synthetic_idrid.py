"""Rule synthetic_idrid: the synthetic IDRiD-like segmentation set (lesioncl.synthetic)."""

from lesioncl.adapter import run
from lesioncl.synthetic import generate_idrid


def main(job):
    p = job.params
    generate_idrid(
        job.output.root,
        job.output.truth,
        job.output.qc,
        seed=p.seed,
        n_train=p.n_train,
        n_test=p.n_test,
        height=p.height,
        grade_distribution=p.grade_distribution,
        workers=job.threads,
        texture=p.texture,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
