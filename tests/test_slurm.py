"""The workflow on a real single-node SLURM, with the SLURM profile (profiles/slurm).

The cluster (tests/slurm_cluster.py -> scripts/slurm/local_cluster.py) runs
munged, slurmctld and slurmd from Debian's packages, which .ci/run installs
(scripts/slurm/install_slurm.sh); without them these tests are skipped.

Checked: every job of a sub-DAG that ends in a GPU rule (synthetic IDRiD ->
COCO boxes -> detector training, which declares `gpu`) goes through sbatch and
completes, the GPU job asks SLURM for a GPU and lands in the GPU partition
(the example partitions file); a job larger than the node or the partition is
rejected at submission instead of pending forever (EnforcePartLimits=ALL);
stopping snakemake with Ctrl-C cancels its running SLURM jobs.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import (
    REPO,
    jobs_by_id,
    run_snakemake_slurm,
    squeue,
    start_cluster,
    start_snakemake_slurm,
    stop_cluster,
    wait_until,
    why_no_slurm,
    write_test_profile,
)


def needs_slurm(test):
    """A test on the local SLURM cluster: marked `slurm`, skipped without SLURM."""
    test = pytest.mark.skipif(why_no_slurm() is not None, reason=why_no_slurm() or "")(test)
    return pytest.mark.slurm(test)


# one pytest-xdist worker runs them all: they share one local cluster (module fixtures)
pytestmark = pytest.mark.xdist_group("slurm")

GPU_TARGET = "results/detector/model.pth"
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(gpus=2)
    yield cluster
    stop_cluster(cluster)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return write_test_profile(tmp_path_factory.mktemp("slurm-profile") / "slurm-test")


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """The demo config with a tiny IDRiD and a two-epoch detector."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["device"] = "auto"  # GPU rules declare `gpu` (device: cpu would drop it)
    config["synthetic"]["idrid"].update(n_train=4, n_test=2, height=320)
    config["detector"].update(epochs=2, lr_steps=[1], warmup_iters=1, img_scale=[256, 192], workers=0)  # threads = workers + 2 must fit the 2-CPU test node
    path = tmp_path_factory.mktemp("slurm-config") / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _submissions(text: str) -> dict[str, str]:
    """SLURM job id -> snakemake job id, from snakemake's output."""
    return {slurm: job for job, slurm in SUBMITTED.findall(text)}


def test_profile_parses_and_survives_the_workflow_profile():
    """profiles/slurm's keys are all snakemake options, and profiles/default (the
    workflow profile, which snakemake applies on top, key by key) keeps its
    cluster settings."""
    from snakemake.cli import get_argument_parser

    args = get_argument_parser(profiles=[REPO / "profiles" / "slurm", REPO / "profiles" / "default"]).parse_args([])
    assert args.executor == "slurm"
    assert [m.name for m in args.software_deployment_method] == ["CONDA"]
    assert args.latency_wait >= 60 and args.keep_going and args.rerun_incomplete and args.retries >= 1
    assert {"mem_mb", "runtime"} <= set(args.default_resources)
    # cpus_per_task here would override every rule's threads
    assert "cpus_per_task" not in args.default_resources
    assert str(args.slurm_logdir) == "logs/slurm"


@needs_slurm
def test_gpu_subdag_runs_through_sbatch(cluster, profile, small_config, tmp_path):
    work = tmp_path / "run"
    proc = run_snakemake_slurm(cluster, work, profile, GPU_TARGET, configfile=small_config)
    assert proc.returncode == 0, proc.stdout[-8000:] + "\n--- squeue ---\n" + squeue(cluster)

    submitted = _submissions(proc.stdout)
    jobs = jobs_by_id(cluster)
    rules = {jobs[j]["comment"]: j for j in submitted}
    # one SLURM job per rule of the sub-DAG, each one known to slurmctld and completed
    assert set(rules) == {"rule_synthetic_idrid", "rule_idrid_coco", "rule_detector_train"}, (
        proc.stdout[-4000:], jobs)
    for slurm_id in submitted:
        assert jobs[slurm_id]["state"] == "COMPLETED", jobs[slurm_id]

    # the GPU rule asked SLURM for a GPU and went to the GPU partition; the others did not
    gpu_job = rules["rule_detector_train"]
    shown = cluster.run("scontrol", "show", "job", gpu_job).stdout
    assert re.search(r"TresPerJob=\S*gpu:1\b", shown), shown
    assert jobs[gpu_job]["partition"] == "gpu"
    for rule in ("rule_synthetic_idrid", "rule_idrid_coco"):
        assert jobs[rules[rule]]["partition"] == "cpu", jobs[rules[rule]]
        shown = cluster.run("scontrol", "show", "job", rules[rule]).stdout
        assert not re.search(r"TresPerJob=\S*gpu", shown), shown

    # each job ran the rule inside SLURM: its sbatch log (kept by the test profile) exists
    for slurm_id in submitted:
        logs = list((work / "logs" / "slurm").glob(f"rule_*/**/{slurm_id}.log"))
        assert logs, f"no SLURM log for job {slurm_id}"
    detector_log = next((work / "logs" / "slurm" / "rule_detector_train").glob(f"**/{gpu_job}.log"))
    assert "rule detector_train" in detector_log.read_text()

    # the outputs are there, from the jobs
    for rel in ("results/idrid/coco_train.json", "results/detector/model.pth",
                "results/detector/mmdet_config.py", "results/detector/metrics.json"):
        assert (work / rel).stat().st_size > 0, rel

    # and a second run has nothing to submit
    again = run_snakemake_slurm(cluster, work, profile, GPU_TARGET, configfile=small_config)
    assert again.returncode == 0 and not _submissions(again.stdout), again.stdout[-3000:]
    assert "Nothing to be done" in again.stdout


@needs_slurm
@pytest.mark.parametrize("resource, message", [
    ("mem_mb={too_much_mem}", "Memory specification can not be satisfied"),
    ("runtime=2000", "Requested time limit is invalid"),  # > the partitions' 1-day MaxTime
    ("gpu=3", "Requested node configuration is not available"),  # the node has 2 GPUs
], ids=["memory", "time", "gpus"])
def test_job_larger_than_the_cluster_fails_at_once(cluster, profile, small_config, tmp_path,
                                                   resource, message):
    before = set(jobs_by_id(cluster))
    resource = resource.format(too_much_mem=cluster.mem_mb + 1000)
    start = time.monotonic()
    proc = run_snakemake_slurm(cluster, tmp_path / "run", profile, "results/synthetic/idrid",
                               "--set-resources", f"synthetic_idrid:{resource}",
                               configfile=small_config, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "SLURM sbatch failed" in proc.stdout and message in proc.stdout, proc.stdout[-4000:]
    assert elapsed < 120, f"took {elapsed:.0f}s to fail"
    # nothing of this run was left in the queue
    new = {j: info for j, info in jobs_by_id(cluster).items() if j not in before}
    assert not [j for j, info in new.items() if info["state"] in ("PENDING", "RUNNING")], new


@needs_slurm
def test_ctrl_c_cancels_running_jobs(cluster, profile, small_config, tmp_path):
    """SIGINT to snakemake (Ctrl-C) scancels the SLURM jobs it submitted."""
    work = tmp_path / "run"
    work.mkdir()
    config = yaml.safe_load(small_config.read_text())
    config["synthetic"]["idrid"].update(n_train=4000, n_test=1000, height=640)  # minutes: caught running on any machine
    slow = tmp_path / "config.yaml"
    slow.write_text(yaml.safe_dump(config))
    before = set(jobs_by_id(cluster))
    out_path = work / "snakemake.out"
    with open(out_path, "w") as out:
        proc = start_snakemake_slurm(cluster, work, profile, "results/synthetic/idrid",
                                     configfile=slow, out=out)
        try:
            def running() -> list[str]:
                return [j for j, info in jobs_by_id(cluster).items()
                        if j not in before and info["state"] == "RUNNING"]

            assert wait_until(lambda: bool(running()) and "has been submitted" in out_path.read_text(),
                              timeout=120, interval=0.5), (out_path.read_text()[-3000:], squeue(cluster))
            job = running()[0]
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
                proc.wait(timeout=30)
                raise AssertionError("snakemake ignored SIGINT for 120 s; its threads:\n"
                                     + out_path.read_text()[-8000:]) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out_path.read_text()
    assert "Terminating processes on user request" in text, text[-3000:]
    assert wait_until(lambda: jobs_by_id(cluster)[job]["state"] == "CANCELLED", timeout=60), (
        text[-3000:], squeue(cluster))
    assert proc.returncode != 0


# --------------------------------------------------------------------------- time limit
def _toy_inputs(work: Path, n_train: int, n_val: int) -> None:
    """The inputs of rule pretrain_lesion (crop caches, lesion index) made directly from
    generated 64-px crops, at the paths the workflow uses; the chain that normally makes
    them is tested elsewhere and is kept out of this run with --allowed-rules."""
    from lesioncl.pretrain.toydata import write_toy_cache

    results = work / "results"
    paths = write_toy_cache(results, size=64, n_train=n_train, n_val=n_val, colorful=True)
    (results / "lesions").mkdir(parents=True, exist_ok=True)
    paths["index"].rename(results / "lesions" / "lesion_index.pkl")


def _epochs_in(history: Path) -> list[int]:
    """The first column (epoch) of a history CSV."""
    return [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:]]


@needs_slurm
def test_time_limit_then_rerun_resumes_pretraining(cluster, profile, tmp_path):
    """A pretraining job stopped by its SLURM time limit resumes when the workflow is rerun.

    At the limit slurmd sends SIGTERM to the job's processes (KillWait = 10 s before
    SIGKILL); the trainer finishes its step, writes checkpoints/last.pt and exits
    non-zero; Snakemake deletes the job's outputs but not the checkpoint (not an
    output), and the rerun continues from it instead of starting again.
    """
    work = tmp_path / "run"
    _toy_inputs(work, n_train=64, n_val=16)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["device"] = "cpu"
    # ~0.7 epochs a second in one or two threads on a 2-core test machine alone (45 epochs
    # done when the 1-minute limit stops the first run, fewer beside other tests): 120 stay
    # past the limit on a machine twice as fast, and the rerun has ~2 minutes left to train
    epochs = 120
    config["pretrain"].update(patch_size=32, batch_size=16, epochs=epochs, workers=0, val_every=1000,
                              checkpoint_every=1000, proj_hidden=64, proj_dim=32)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/pretrain/lesion_cl/backbone.pth"
    limited = ("--allowed-rules", "pretrain_lesion", "--set-threads", "pretrain_lesion=1",
               "--set-resources", "pretrain_lesion:runtime=1")

    first = run_snakemake_slurm(cluster, work, profile, target, *limited, configfile=configfile, timeout=600)
    assert first.returncode != 0, first.stdout[-4000:]
    (slurm_id, _), = [(s, j) for s, j in _submissions(first.stdout).items()]
    assert jobs_by_id(cluster)[slurm_id]["state"] == "TIMEOUT", (jobs_by_id(cluster), first.stdout[-3000:])
    checkpoint = work / "results" / "pretrain" / "lesion_cl" / "checkpoints" / "last.pt"
    assert checkpoint.is_file(), first.stdout[-3000:]
    log = (work / "logs" / "pretrain" / "lesion_cl.log").read_text()
    assert "stop requested" in log, log[-3000:]
    assert not (work / target).exists()
    import torch

    stopped_at = torch.load(checkpoint, map_location="cpu", weights_only=True)
    done = int(stopped_at["epoch"])
    assert 0 < done < epochs, done

    second = run_snakemake_slurm(cluster, work, profile, target, "--allowed-rules", "pretrain_lesion",
                                 "--set-threads", "pretrain_lesion=2", configfile=configfile, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:]
    log = (work / "logs" / "pretrain" / "lesion_cl.log").read_text()
    assert f"resumed from {checkpoint.relative_to(work)}: {done} epochs" in log, log[:3000]
    # one row per epoch, the interrupted run's rows kept, nothing trained twice
    assert _epochs_in(work / "results" / "pretrain" / "lesion_cl" / "history.csv") == list(range(1, epochs + 1))
    assert (work / target).stat().st_size > 0 and not checkpoint.exists()


@needs_slurm
def test_time_limit_then_rerun_resumes_finetuning(cluster, profile, tmp_path):
    """Fine-tuning checkpoints after every epoch: a job stopped by its time limit loses at
    most the epoch in progress, and the rerun continues after the last finished one."""
    from lesioncl.crop.cache import build_crop_cache

    work = tmp_path / "run"
    _toy_inputs(work, n_train=192, n_val=32)
    results = work / "results"
    # the test split: the toy val crops again (only its size matters here)
    build_crop_cache(results / "crop_manifest.csv", "val", 64, results / "cache" / "crops_test.npy",
                     results / "cache" / "crops_test.csv")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["device"] = "cpu"
    config["evaluation"].update(input_size=64, workers=0, feature_batch_size=64)
    # ~19 epochs done when the 1-minute limit stops the first run on a 2-core machine alone
    epochs = 45
    config["evaluation"]["finetune"].update(epochs=epochs, batch_size=16)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/eval/finetune/random/frac1_seed0.json"
    rules = ("--allowed-rules", "eval_fractions", "eval_finetune")

    first = run_snakemake_slurm(cluster, work, profile, target, *rules, "--set-threads", "eval_finetune=1",
                                "--set-resources", "eval_finetune:runtime=1", configfile=configfile,
                                timeout=600)
    assert first.returncode != 0, first.stdout[-4000:]
    jobs = jobs_by_id(cluster)
    # the job comment is rule_<name>[_wildcards_<values>]
    states = {jobs[s]["comment"].split("_wildcards_")[0]: jobs[s]["state"] for s in _submissions(first.stdout)}
    assert states == {"rule_eval_fractions": "COMPLETED", "rule_eval_finetune": "TIMEOUT"}, (
        states, first.stdout[-3000:])
    checkpoint = results / "eval" / "checkpoints" / "finetune" / "random" / "frac1_seed0.pt"
    assert checkpoint.is_file(), first.stdout[-3000:]
    import torch

    done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    assert 0 < done < epochs, done

    second = run_snakemake_slurm(cluster, work, profile, target, *rules, "--set-threads", "eval_finetune=2",
                                 configfile=configfile, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:]
    log = (work / "logs" / "eval_finetune" / "random" / "frac1_seed0.log").read_text()
    assert f"resuming from {checkpoint.relative_to(work)} after epoch {done}" in log, log[:3000]
    assert _epochs_in(results / "eval" / "finetune" / "random" / "frac1_seed0_history.csv") == list(range(1, epochs + 1))
    assert not checkpoint.exists()


@needs_slurm
def test_time_limit_then_rerun_resumes_detector_training(cluster, profile, tmp_path):
    """The detector (mmengine) stopped by its SLURM time limit resumes from the last
    epoch it saved in results/detector/checkpoints (not an output, so Snakemake keeps
    it); every iteration is trained once and the published model is a plain state_dict."""
    from test_detector import make_coco

    work = tmp_path / "run"
    idrid = work / "results" / "idrid"
    make_coco(idrid, "train", 24, seed=0)  # 12 iterations an epoch, ~0.3 s each on one core
    make_coco(idrid, "test", 2, seed=1)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["device"] = "cpu"
    epochs = 40  # 480 iterations: past a 1-minute limit
    config["detector"].update(epochs=epochs, lr_steps=[], warmup_iters=1, img_scale=[128, 96], workers=0,
                              fpn_channels=16, roi_fc_channels=32, rpn_batch=32, roi_batch=32, batch_size=2,
                              val_interval=1000, log_interval=1)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/detector/model.pth"
    only = ("--allowed-rules", "detector_train")

    first = run_snakemake_slurm(cluster, work, profile, target, *only, "--set-threads", "detector_train=1",
                                "--set-resources", "detector_train:runtime=1", configfile=configfile,
                                timeout=600)
    assert first.returncode != 0, first.stdout[-4000:]
    (slurm_id, _), = [(s, j) for s, j in _submissions(first.stdout).items()]
    assert jobs_by_id(cluster)[slurm_id]["state"] == "TIMEOUT", (jobs_by_id(cluster), first.stdout[-3000:])
    state = work / "results" / "detector" / "checkpoints"
    pointer = state / "last_checkpoint"
    assert pointer.is_file(), (first.stdout[-3000:], sorted(p.name for p in state.glob("*")))
    saved = pointer.read_text().strip()
    done = int(Path(saved).stem.removeprefix("epoch_"))
    assert 0 < done < epochs, saved
    assert not (work / target).exists()

    second = run_snakemake_slurm(cluster, work, profile, target, *only, "--set-threads", "detector_train=2",
                                 configfile=configfile, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:]
    log = (work / "logs" / "detector_train" / "detector_train.log").read_text()
    assert f"resumed from {saved} ({done} of {epochs} epochs done)" in log, log[:3000]
    scalars = work / "results" / "detector" / "work" / "scalars.json"
    steps = [json.loads(line)["step"] for line in scalars.read_text().splitlines()
             if line.strip() and "coco/bbox_mAP_50" not in line]
    assert steps == list(range(1, epochs * 12 + 1)), steps[:5] + steps[-5:]
    import torch

    state_dict = torch.load(work / target, map_location="cpu", weights_only=True)
    assert state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values())
    assert not state.exists()


@needs_slurm
def test_gpu_job_without_a_usable_gpu_stops_at_once(cluster, profile, small_config, tmp_path, monkeypatch):
    """device: auto in a job SLURM gave a GPU (here a fake one: CUDA_VISIBLE_DEVICES set,
    no driver) stops at once with the driver and CUDA versions, instead of training on
    the CPU. (The other tests accept the CPU: LESIONCL_CPU_FALLBACK=1 from the cluster's
    environment.)"""
    monkeypatch.setenv("LESIONCL_CPU_FALLBACK", "0")
    work = tmp_path / "run"
    proc = run_snakemake_slurm(cluster, work, profile, GPU_TARGET, configfile=small_config, timeout=900)
    assert proc.returncode != 0, proc.stdout[-4000:]
    log = (work / "logs" / "detector_train" / "detector_train.log").read_text()
    assert "this job was given GPUs" in log and "torch sees no CUDA GPU" in log, log[-3000:]
    assert "NVIDIA driver: not found" in log and "device: cpu" in log, log[-3000:]
    assert not (work / "results" / "detector" / "checkpoints").exists()  # stopped before training
