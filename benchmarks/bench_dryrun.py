"""Scale check: a dry run of the real config against a full-size EyePACS manifest.

Generates (in a temporary folder) the label files of the full Kaggle set — 35,126
train and 53,576 test rows (10,906 Public, 42,670 Private), empty image folders,
an IDRiD placeholder folder — points a copy of config/eyepacs.yaml at them, and
times `snakemake -n`. Prints the wall time and the number of jobs scheduled: the
crop and the lesion prediction are sharded, so the job count is bounded by the
shard settings, not by the 88,702 images.

    .venv/bin/python benchmarks/bench_dryrun.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_PUBLIC, N_PRIVATE = 35_126, 10_906, 42_670


def write_manifest(raw: Path) -> None:
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    with open(raw / "trainLabels.csv", "w") as fh:
        fh.write("image,level\n")
        for i in range(N_TRAIN // 2):
            fh.write(f"{i + 10}_left,{i % 5}\n{i + 10}_right,{i % 5}\n")
    with open(raw / "retinopathy_solution.csv", "w") as fh:
        fh.write("image,level,Usage\n")
        n_test = N_PUBLIC + N_PRIVATE
        for i in range(n_test // 2):
            usage = "Public" if 2 * i < N_PUBLIC else "Private"
            fh.write(f"{i + 100_000}_left,{i % 5},{usage}\n{i + 100_000}_right,{i % 5},{usage}\n")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_manifest(tmp / "raw")
        (tmp / "idrid" / "A. Segmentation").mkdir(parents=True)
        config = yaml.safe_load((REPO / "config/eyepacs.yaml").read_text())
        config["eyepacs"].update(source="folder", raw_dir=str(tmp / "raw"))
        config["idrid"].update(source="path", path=str(tmp / "idrid"))
        cfg = tmp / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        snakemake = str(Path(sys.executable).with_name("snakemake"))
        cmd = [snakemake, "-n", "--cores", "16", "-s", str(REPO / "Snakefile"),
               "--directory", str(tmp / "work"), "--configfile", str(cfg)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            print(out[-4000:])
            return 1
        total = re.search(r"^total\s+(\d+)", out, re.M)
        print(f"images: {N_TRAIN + N_PUBLIC + N_PRIVATE:,}")
        print(f"dry run: {elapsed:.1f} s, {total.group(1) if total else '?'} jobs")
        table = out.split("Job stats:")[1].split("\n\n")[0]
        print(table.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
