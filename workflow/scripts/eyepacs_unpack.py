"""Snakemake adapter of rule eyepacs_unpack: multi-part archives -> raw/ (train/, test/, CSVs)."""

from lesioncl.eyepacs import EyepacsError
from lesioncl.eyepacs.archives import unpack_all
from lesioncl.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    unpack_all(
        archives_dir=snakemake.params.archives_dir,  # noqa: F821
        raw_dir=snakemake.output.raw,  # noqa: F821
        delete_corrupt=True,
        manifest=snakemake.input.manifest,  # noqa: F821
    )
except EyepacsError as exc:  # bad input: the message says what to do, no traceback
    log.error("rule eyepacs_unpack failed: %s", exc)
    raise SystemExit(1)
except Exception:
    log.exception("rule eyepacs_unpack failed")
    raise
