"""Snakemake adapter of rule eyepacs_download: Kaggle competition files -> archives/."""

from lesioncl.eyepacs import EyepacsError
from lesioncl.eyepacs.download import download_competition
from lesioncl.utils import setup_logging, write_json

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
try:
    manifest = download_competition(
        competition=snakemake.params.competition,  # noqa: F821
        download_dir=snakemake.params.download_dir,  # noqa: F821
    )
    write_json(snakemake.output.manifest, manifest)  # noqa: F821
except EyepacsError as exc:  # bad input: the message says what to do, no traceback
    log.error("rule eyepacs_download failed: %s", exc)
    raise SystemExit(1)
except Exception:
    log.exception("rule eyepacs_download failed")
    raise
