"""Rule synthetic_eyepacs: the synthetic EyePACS-like raw set (lesioncl.synthetic)."""

from lesioncl.adapter import run
from lesioncl.synthetic import generate_eyepacs


def main(job):
    p = job.params
    generate_eyepacs(
        job.output.raw,
        job.output.truth,
        job.output.lesions,
        job.output.qc,
        seed=p.seed,
        n_train=p.n_train,
        n_test=p.n_test,
        min_height=p.min_height,
        max_height=p.max_height,
        bad_files=p.bad_files,
        grade_distribution=p.grade_distribution,
        public_fraction=p.public_fraction,
        workers=job.threads,
        texture=p.texture,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
