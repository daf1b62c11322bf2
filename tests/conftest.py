"""Shared fixtures: paths of the repository and a runner for the workflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# as in the workflow's jobs (workflow/rules/common.smk): torch threads in the two test
# workers, and in the jobs they start, sleep while they wait instead of spinning
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_snakemake(workdir: Path, *args: str, configfile: Path | None = None, check: bool = True,
                  timeout: int = 3600) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` (outputs land there)."""
    # --configfile takes several values: it goes last so that targets in args stay targets
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args,
           "--configfile", str(configfile or REPO / "config" / "config.yaml")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-12000:]}"
        )
    return proc


@pytest.fixture(autouse=True)
def _no_stamp_from_an_in_process_parse():
    """A test that parses the workflow in this process (tests/test_config.py) sets the
    stamp its jobs would write (lesioncl.provenance.export_to_jobs); no later test's
    lesioncl.adapter.run may write it into this checkout."""
    os.environ.pop("LESIONCL_PROVENANCE", None)
    yield
    os.environ.pop("LESIONCL_PROVENANCE", None)


@pytest.fixture
def repo() -> Path:
    return REPO
