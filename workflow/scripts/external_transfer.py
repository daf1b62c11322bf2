"""Rule external_transfer: the EyePACS linear head graded on a set's test split as it is."""

from lesioncl.adapter import run
from lesioncl.evaluation.linear import run_transfer


def main(job):
    run_transfer(
        method=job.wildcards.method,
        seed=int(job.wildcards.seed),
        source_result=job.input.eyepacs,
        test_features=job.input.test,
        output=job.output[0],
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
