"""Rule external_table: every external run JSON -> results/tables/external.{csv,md}."""

from lesioncl.adapter import run
from lesioncl.external.tables import build_external_table


def main(job):
    sets = job.params.sets
    build_external_table(
        results_of={name: getattr(job.input, f"results_{name}") for name in sets},
        summaries={name: getattr(job.input, f"summary_{name}") for name in sets},
        methods=job.params.methods,
        fractions=job.params.fractions,
        transfer_fraction=job.params.transfer_fraction,
        finetune_transfer_fraction=job.params.finetune_transfer_fraction,
        csv_path=job.output.csv,
        md_path=job.output.md,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
