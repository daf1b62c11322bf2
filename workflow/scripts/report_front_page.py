"""Rule report_front_page: the report's front page (front_page.rst)."""

from lesioncl.adapter import run
from lesioncl.report.frontpage import build_front_page


def main(job):
    build_front_page(
        job.input.description,
        job.input.kappa,
        job.output[0],
        job.params.config,
        configfiles=job.params.configfiles,
        methods=job.params.methods,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
