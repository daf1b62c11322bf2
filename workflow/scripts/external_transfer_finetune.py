"""Rule external_transfer_finetune: the EyePACS fine-tuned grader on a set's test split."""

from lesioncl.adapter import run
from lesioncl.evaluation.finetune_job import run_finetune_transfer


def main(job):
    run_finetune_transfer(
        method=job.wildcards.method,
        seed=int(job.wildcards.seed),
        source_result=job.input.eyepacs,
        test_cache=(job.input.test_npy, job.input.test_csv),
        output=job.output[0],
        device=job.device(),
        threads=job.threads,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
