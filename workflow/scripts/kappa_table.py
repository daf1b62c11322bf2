"""Rule kappa_table: run JSONs -> results/tables/kappa.csv and kappa.md."""

from lesioncl.adapter import run
from lesioncl.report import build_kappa_table


def main(job):
    build_kappa_table(
        result_paths=list(job.input.linear) + list(job.input.finetune),
        methods=job.params.methods,
        fractions=job.params.fractions,
        fractions_of=job.params.fractions_of,
        evaluations=job.params.evaluations,
        csv_path=job.output.csv,
        md_path=job.output.md,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
