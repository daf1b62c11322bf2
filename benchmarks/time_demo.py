"""Time the demo from nothing to the report, and say where the time went.

    python benchmarks/time_demo.py [--workdir DIR] [--cores 2] [--controls]

Runs the demo workflow (config/config.yaml) in an empty working directory exactly as
``make demo`` does (the whole DAG, then the report), prints the wall time of each
phase and the ten most expensive jobs from Snakemake's per-rule benchmark files, and
writes the same as JSON (``timing.json`` in the working directory). The environment
must be set up first (``make setup``); its time is not counted. ``--controls`` then
times ``make controls`` too (the controls' target, the default target again, the report).

The speed of a shared machine varies (by half between runs an hour apart on the 2-core
machine of the README's figures), so the demo is bracketed by a calibration: one
ResNet-18 training job of ``benchmarks/bench_omp_wait.py`` (2 threads, PASSIVE, as the
workflow runs) before and after, in steps/s, printed and written with the timings.
``--no-calibration`` skips it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_omp_wait import run_case  # noqa: E402


def calibrate(seconds: float = 15.0) -> float:
    """Steps/s of one 2-thread training job as the workflow runs it (OMP PASSIVE)."""
    return round(run_case(1, 2, seconds, "PASSIVE"), 2)


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True)
    return time.perf_counter() - start


def job_seconds(results: Path) -> list[tuple[str, float]]:
    """(job, wall seconds) of every benchmark file under results/benchmarks."""
    jobs = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        with open(path) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            jobs.append((str(path.relative_to(results / "benchmarks").with_suffix("")), float(rows[-1]["s"])))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="an empty folder (default: a new temporary one)")
    parser.add_argument("--cores", default="2")
    parser.add_argument("--controls", action="store_true", help="then time `make controls`")
    parser.add_argument("--no-calibration", action="store_true", help="no machine-speed runs")
    args = parser.parse_args()
    speed = [] if args.no_calibration else [calibrate()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lesioncl-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    base = [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(work)]
    config = ["--configfile", str(REPO / "config/config.yaml")]
    dag = run([*base, "--cores", args.cores, *config], work)
    report = run([*base, "--cores", "1", "--report", str(work / "results/report.html"), *config], work)
    controls = 0.0
    if args.controls:
        controls += run([*base, "--cores", args.cores, "controls", *config], work)
        controls += run([*base, "--cores", args.cores, *config], work)
        controls += run([*base, "--cores", "1", "--report", str(work / "results/report.html"), *config], work)
    if speed:
        speed.append(calibrate())
    jobs = sorted(job_seconds(work / "results"), key=lambda j: -j[1])
    by_rule: dict[str, float] = {}
    for name, seconds in jobs:
        by_rule[name.split("/")[0]] = by_rule.get(name.split("/")[0], 0.0) + seconds
    summary = {"workdir": str(work), "cores": args.cores, "workflow_s": round(dag, 1), "report_s": round(report, 1),
               "total_s": round(dag + report, 1), "controls_s": round(controls, 1),
               "calibration_steps_per_s": speed, "rules_s": {k: round(v, 1) for k, v in
                                                             sorted(by_rule.items(), key=lambda kv: -kv[1])}}
    (work / "timing.json").write_text(json.dumps(summary, indent=2))
    print(f"demo: {dag / 60:.1f} min workflow + {report / 60:.1f} min report = {(dag + report) / 60:.1f} min "
          f"on {args.cores} cores ({work})")
    if args.controls:
        print(f"controls (make controls): {controls / 60:.1f} min")
    if speed:
        print(f"machine speed (bench_omp_wait.py, one 2-thread job, PASSIVE): {speed[0]} steps/s "
              f"before, {speed[1]} after")
    print("job seconds by rule (jobs run side by side, so they add up to more than the wall time):")
    for rule, seconds in summary["rules_s"].items():
        print(f"  {rule:24s} {seconds:8.1f}")


if __name__ == "__main__":
    main()
