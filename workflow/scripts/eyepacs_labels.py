"""Snakemake adapter of rule eyepacs_labels: raw folder -> labels.csv, summary, problems."""

from lesioncl.eyepacs import EyepacsError
from lesioncl.eyepacs.labels import write_labels
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    write_labels(
        raw_dir=snakemake.input.raw,  # noqa: F821
        labels_csv=snakemake.output.labels,  # noqa: F821
        summary_json=snakemake.output.summary,  # noqa: F821
        problems_csv=snakemake.output.problems,  # noqa: F821
        max_missing=snakemake.params.max_missing,  # noqa: F821
        expect_full=snakemake.params.expect_full,  # noqa: F821
        error_problems_csv=snakemake.params.error_problems,  # noqa: F821
    )
except EyepacsError as exc:  # bad input: the message says what to do, no traceback
    log.error("rule eyepacs_labels failed: %s", exc)
    raise SystemExit(1)
except Exception:
    log.exception("rule eyepacs_labels failed")
    raise
