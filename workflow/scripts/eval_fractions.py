"""Rule eval_fractions: training rows -> nested label fractions of one seed."""

from lesioncl.adapter import run
from lesioncl.evaluation.fractions import write_fractions


def main(job):
    write_fractions(
        train_csv=job.input[0],
        fractions=job.params.fractions,
        seed=int(job.wildcards.seed),
        output=job.output[0],
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
