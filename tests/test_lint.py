"""The workflow's code is formatted (snakefmt) and passes Snakemake's linter; the Python
code (src/, workflow/scripts/) passes ruff's linter and is formatted as ruff would.

The same checks as `make lint`. A failure lists the findings per file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent
WORKFLOW_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def test_snakefmt_check():
    """snakefmt --check: every Snakefile/rule file is formatted as snakefmt would."""
    assert len(WORKFLOW_FILES) > 1
    unformatted = {}
    for path in WORKFLOW_FILES:
        proc = subprocess.run([str(BIN / "snakefmt"), "--check", "--compact-diff", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), f"snakefmt failed on {path}:\n{proc.stderr}"
        if proc.returncode == 1:
            unformatted[str(path.relative_to(REPO))] = proc.stdout[-1500:]
    assert not unformatted, (
        "run `snakefmt Snakefile workflow/rules` to format:\n"
        + "\n".join(f"--- {name} ---\n{diff}" for name, diff in unformatted.items()))


def _ruff(*args: str) -> subprocess.CompletedProcess:
    # the files and rules are those of [tool.ruff] in pyproject.toml
    return subprocess.run([str(BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_ruff_check():
    """ruff check: lint findings of src/ and workflow/scripts/ (pyproject.toml [tool.ruff])."""
    proc = _ruff("check", "--output-format", "concise", "--no-cache")
    assert proc.returncode == 0, (
        "run `ruff check --fix` and fix the rest by hand:\n" + (proc.stdout + proc.stderr)[-3000:])


def test_ruff_format_check():
    """ruff format --check: every Python file of src/ and workflow/scripts/ is formatted."""
    proc = _ruff("format", "--check", "--diff", "--no-cache")
    assert proc.returncode == 0, "run `ruff format` to format:\n" + (proc.stdout + proc.stderr)[-3000:]


def _lint_findings(text: str) -> dict[str, list[str]]:
    """Snakemake's text lint report as {file or rule: [finding, ...]}."""
    findings: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"Lints for (?:snakefile|rule) (.+):$", line)
        if head:
            current = head.group(1).replace(str(REPO) + "/", "")
            findings.setdefault(current, [])
        elif current and line.startswith("    * "):
            findings[current].append(line[6:].rstrip(":"))
    return findings


def test_lint_findings_parser():
    sample = (f"Lints for snakefile {REPO}/workflow/rules/a.smk:\n"
              "    * Mixed rules and functions in same snakefile.:\n"
              "      Small one-liner functions ...\n"
              f"Lints for rule r (line 3, {REPO}/workflow/rules/b.smk):\n"
              "    * Param p is a prefix of input or output file but hardcoded:\n")
    assert _lint_findings(sample) == {
        "workflow/rules/a.smk": ["Mixed rules and functions in same snakefile."],
        "r (line 3, workflow/rules/b.smk)": ["Param p is a prefix of input or output file but hardcoded"],
    }


def test_snakemake_lint(tmp_path):
    """snakemake --lint on the demo config reports nothing."""
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--lint", "--configfile", str(REPO / "config" / "config.yaml")],
        capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    findings = {k: v for k, v in _lint_findings(text).items() if v}
    assert not findings and proc.returncode == 0, (
        "snakemake --lint findings:\n"
        + "\n".join(f"{where}:\n  - " + "\n  - ".join(items) for where, items in findings.items())
        + f"\n--- output ---\n{text[-3000:]}")
