"""Torch jobs sharing cores: OpenMP threads that spin while they wait (libgomp's default,
``OMP_WAIT_POLICY`` unset) against threads that sleep (``OMP_WAIT_POLICY=PASSIVE``, what
the workflow sets for its jobs in workflow/rules/common.smk).

Each case starts ``--jobs`` processes at once, each training a ResNet-18 on 32-px
batches (the demo's pretraining step) in ``--threads`` torch threads for ``--seconds``,
and sums their steps per second. The two policies run side by side, one case after the
other, on the same machine:

* ``--jobs 1``: one job alone on its cores (what spinning is meant to speed up);
* ``--jobs 2`` (or more): more threads than cores, as when Snakemake runs several torch
  jobs (or a job and another program) on one machine.

    python benchmarks/bench_omp_wait.py                     # 1 and 2 jobs of 2 threads
    python benchmarks/bench_omp_wait.py --jobs 1 3 --threads 2 --seconds 20

Printed: steps/s of each policy and their ratio (PASSIVE / default) per case.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

WORKER = """
import sys, time, torch, torchvision
torch.set_num_threads(int(sys.argv[1]))
seconds = float(sys.argv[2])
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=128)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(64, 3, 32, 32)
for _ in range(2):  # warm-up
    opt.zero_grad(); model(x).sum().backward(); opt.step()
start, steps = time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    opt.zero_grad(); model(x).sum().backward(); opt.step(); steps += 1
print(steps / (time.perf_counter() - start))
"""


def run_case(jobs: int, threads: int, seconds: float, policy: str | None) -> float:
    """Total steps/s of ``jobs`` concurrent training processes under ``policy``."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(threads), str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(jobs)
    ]
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a benchmark process failed (exit {proc.returncode})")
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2], help="concurrent jobs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per job")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per job")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; ResNet-18, batch 64 at 32 px, {args.threads} threads per job")
    print("| jobs | threads in all | default (spin) steps/s | PASSIVE steps/s | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for jobs in args.jobs:
        spin = run_case(jobs, args.threads, args.seconds, None)
        passive = run_case(jobs, args.threads, args.seconds, "PASSIVE")
        print(
            f"| {jobs} | {jobs * args.threads} | {spin:.2f} | {passive:.2f} | "
            f"{passive / spin:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
