"""A real single-node SLURM cluster for the tests (scripts/slurm/local_cluster.py),
and a profile for it derived from the real one (profiles/slurm/).

The cluster's daemons (munged, slurmctld, slurmd) run from a private temp folder
with their own munge key, ports and slurm.conf; the clients and the jobs find it
through ``SLURM_CONF``. At the end exactly those daemons are stopped, by PID.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm" / "config.v8+.yaml"
PARTITIONS_EXAMPLE = REPO / "profiles" / "slurm" / "partitions.example.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

_spec = importlib.util.spec_from_file_location("local_cluster", REPO / "scripts" / "slurm" / "local_cluster.py")
local_cluster = importlib.util.module_from_spec(_spec)
sys.modules["local_cluster"] = local_cluster
_spec.loader.exec_module(local_cluster)

LocalSlurm = local_cluster.LocalSlurm


def why_no_slurm() -> str | None:
    """Why a local SLURM cannot run here, or None when it can."""
    missing = local_cluster.missing_tools()
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}); "
                "install it with: bash scripts/slurm/install_slurm.sh")
    if os.geteuid() != 0:
        return "a local SLURM node (slurmd) needs root"
    return None


def start_cluster(**kwargs) -> LocalSlurm:
    # a short folder: munge and slurmd sockets live there (108-byte path limit)
    root = Path(tempfile.mkdtemp(prefix="lesioncl-slurm-", dir="/tmp"))
    cluster = LocalSlurm(root, **kwargs)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def stop_cluster(cluster: LocalSlurm) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


def write_test_profile(folder: Path, partitions: Path = PARTITIONS_EXAMPLE) -> Path:
    """profiles/slurm/ with the settings a throw-away test cluster needs.

    Kept from the real profile: executor, resources, retries, rerun-incomplete, ...
    Changed: no conda (the tests run in the project's venv: building the envs
    needs the internet and takes long); job states from squeue (the test
    cluster has no slurmdbd, `sacct` knows no jobs); the first status check after
    2 s instead of 40 s; SLURM logs of successful jobs kept (the tests read them);
    no retries (a failure shows at once); the example partitions file.
    """
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm", profile
    profile.pop("software-deployment-method", None)
    profile.update({
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-keep-successful-logs": True,
        "slurm-partition-config": str(partitions),
        "retries": 0,
        "latency-wait": 10,
        "max-jobs-per-second": 10,
        "max-status-checks-per-second": 5,
        "jobs": 8,
    })
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.v8+.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def default_sigint() -> None:
    """Popen preexec_fn: SIGINT back to its default in the child, so that snakemake (Python)
    installs its KeyboardInterrupt handler. A shell that starts a command in the background
    without job control (``cmd &`` in a script, nohup) sets SIGINT to "ignore", exec keeps
    that, and Python then leaves it ignored: Ctrl-C (SIGINT) would never reach snakemake."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_snakemake_slurm(cluster: LocalSlurm, workdir: Path, profile: Path, *args: str,
                          configfile: Path, out, snakefile: Path = REPO / "Snakefile") -> subprocess.Popen:
    """Start the workflow with the SLURM profile against ``cluster``, output to ``out``:
    unbuffered, with faulthandler (SIGABRT prints every thread's stack) and SIGINT at
    its default, in a session of its own."""
    cmd = [SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir),
           "--configfile", str(configfile), "--profile", str(profile), *args]
    env = cluster.env() | {"PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=workdir, start_new_session=True, preexec_fn=default_sigint)


def run_snakemake_slurm(cluster: LocalSlurm, workdir: Path, profile: Path, *args: str,
                        configfile: Path, timeout: float = 1200,
                        snakefile: Path = REPO / "Snakefile") -> subprocess.CompletedProcess:
    """Run the workflow with the SLURM profile against ``cluster``.

    On timeout snakemake gets SIGINT (it cancels its SLURM jobs) and then, if
    it is still there after a minute, SIGKILL; the call then fails.
    """
    out_path = workdir / "snakemake.out"
    workdir.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w") as out:
        proc = start_snakemake_slurm(cluster, workdir, profile, *args, configfile=configfile,
                                     out=out, snakefile=snakefile)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = out_path.read_text(errors="replace")
    if timed_out:
        raise AssertionError(f"snakemake on SLURM did not finish in {timeout:.0f}s: {' '.join(proc.args)}\n"
                             f"{text[-8000:]}\n--- squeue ---\n{squeue(cluster)}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, "")


def squeue(cluster: LocalSlurm) -> str:
    return cluster.run("squeue", "--states=all", "--noheader",
                       "--format=%i|%T|%P|%b|%k|%r", check=False).stdout


def jobs_by_id(cluster: LocalSlurm) -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows (MinJobAge=600 s): state, partition, gres, comment."""
    jobs = {}
    for line in squeue(cluster).splitlines():
        jobid, state, partition, gres, comment, reason = line.split("|")
        jobs[jobid] = {"state": state, "partition": partition, "gres": gres,
                       "comment": comment, "reason": reason}
    return jobs


def wait_until(predicate, timeout: float, interval: float = 1.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
