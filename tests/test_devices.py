"""A job that asked for a GPU and sees none stops at once, saying why; a detector on a
GPU with an mmcv built without CUDA ops stops before training.

This machine has no GPU: what torch and the system report (torch.cuda.is_available,
torch.version.cuda, nvidia-smi, /proc/driver/nvidia/version, the scheduler's
variables) is set by monkeypatching those queries.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lesioncl import utils
from lesioncl.utils import assigned_gpus, nvidia_driver_version, resolve_device

PROC_TEXT = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  "
             "(dvs-builder@U16-I3-B03-4-3)  Tue Mar  5 22:15:33 UTC 2024\nGCC version:  gcc version 12.2.0\n")


def _smi(version: str | None):
    """A stand-in for subprocess.run that answers nvidia-smi (None: not installed)."""
    def run(cmd, **kwargs):
        assert cmd[0] == "nvidia-smi"
        if version is None:
            raise FileNotFoundError("nvidia-smi")
        return SimpleNamespace(returncode=0, stdout=f"{version}\n{version}\n", stderr="")
    return run


@pytest.fixture
def no_gpu(monkeypatch):
    """torch sees no GPU, warns as torch does with a too-old driver; driver 550 via nvidia-smi."""
    def is_available():
        import warnings

        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(utils, "nvidia_driver_version", lambda: "550.54.15 (nvidia-smi)")


def test_cuda_without_gpu_names_driver_torch_cuda_and_fix(no_gpu):
    with pytest.raises(RuntimeError) as err:
        resolve_device("cuda", environ={})
    text = str(err.value)
    for needle in ("device is 'cuda'", "550.54.15", "CUDA 13.0", "580 or newer", "device: cpu",
                   "driver on your system is too old"):
        assert needle in text, (needle, text)


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_GPUS": "0"},
    {"CUDA_VISIBLE_DEVICES": "0,1"},
    {"SLURM_GPUS_ON_NODE": "2"},
    {"SLURM_GPUS": "a100:1"},
], ids=["slurm-job-gpus", "cuda-visible-devices", "slurm-gpus-on-node", "slurm-gpus"])
def test_auto_in_a_job_given_gpus_stops(no_gpu, env):
    with pytest.raises(RuntimeError) as err:
        resolve_device("auto", environ=env)
    text = str(err.value)
    name, value = next(iter(env.items()))
    assert f"{name}={value}" in text and "550.54.15" in text and "CUDA 13.0" in text, text
    assert "LESIONCL_CPU_FALLBACK=1" in text


@pytest.mark.parametrize("env", [
    {},
    {"CUDA_VISIBLE_DEVICES": ""},
    {"CUDA_VISIBLE_DEVICES": "-1"},
    {"SLURM_GPUS_ON_NODE": "0"},
    {"SLURM_JOB_GPUS": "0", "LESIONCL_CPU_FALLBACK": "1"},
], ids=["no-variables", "hidden-empty", "hidden-minus-one", "zero-gpus", "fallback-accepted"])
def test_auto_without_gpus_uses_the_cpu(no_gpu, env):
    assert resolve_device("auto", environ=env) == "cpu"
    assert resolve_device("cpu", environ={"SLURM_JOB_GPUS": "0"}) == "cpu"


def test_cpu_only_torch_says_so(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="CPU-only build"):
        resolve_device("cuda", environ={})


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="use auto, cpu or cuda"):
        resolve_device("gpu", environ={})


def test_assigned_gpus_reads_the_scheduler_variables():
    assert assigned_gpus({}) is None
    assert assigned_gpus({"SLURM_STEP_GPUS": "3"}) == "SLURM_STEP_GPUS=3"
    assert assigned_gpus({"SLURM_GPUS_PER_NODE": "h100:0"}) is None


def test_driver_version_from_nvidia_smi_or_proc(tmp_path):
    proc = tmp_path / "version"
    proc.write_text(PROC_TEXT)
    assert nvidia_driver_version(run=_smi("570.86.10"), proc_file=proc) == "570.86.10 (nvidia-smi)"
    assert nvidia_driver_version(run=_smi(None), proc_file=proc) == f"550.54.15 ({proc})"
    legacy = tmp_path / "legacy"
    legacy.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    assert nvidia_driver_version(run=_smi(None), proc_file=legacy).startswith("535.104.05")

    def failing(cmd, **kwargs):
        return SimpleNamespace(returncode=9, stdout="", stderr="NVIDIA-SMI has failed")
    assert nvidia_driver_version(run=failing, proc_file=tmp_path / "absent") is None


def test_no_driver_at_all(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(utils, "nvidia_driver_version", lambda: None)
    with pytest.raises(RuntimeError) as err:
        resolve_device("auto", environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert "NVIDIA driver: not found" in str(err.value) and "GPU node" in str(err.value)


# --------------------------------------------------------------------------- mmcv ops
def test_mmcv_without_cuda_ops_is_refused_on_a_gpu():
    from lesioncl.detector.compat import check_mmcv_cuda_ops

    with pytest.raises(RuntimeError) as err:
        check_mmcv_cuda_ops("cuda", ops_version="not available")
    text = str(err.value)
    assert "FORCE_CUDA=1" in text and "envs/torch.post-deploy.sh" in text and "device: cpu" in text, text
    check_mmcv_cuda_ops("cuda", ops_version="13.0")  # a CUDA build passes
    check_mmcv_cuda_ops("cpu", ops_version="not available")  # the CPU needs no CUDA ops


def test_this_machines_mmcv_is_a_cpu_build():
    """The query itself, on the real mmcv: the CPU build here reports no CUDA."""
    pytest.importorskip("mmcv.ops")
    from lesioncl.detector.compat import mmcv_cuda_ops_version

    assert mmcv_cuda_ops_version().startswith("not available")


def test_detector_training_stops_before_training_on_a_gpu_without_cuda_ops(tmp_path, monkeypatch):
    """torch claims a GPU; this machine's mmcv has CPU ops only: train_detector stops
    before it builds the runner (no checkpoint, no model)."""
    pytest.importorskip("mmcv.ops")
    import mmengine.device.utils as mmengine_device

    from lesioncl.detector.train import train_detector
    from test_detector import make_coco, schema_defaults

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mmengine_device, "DEVICE", mmengine_device.DEVICE)  # restored afterwards
    train_ann, train_images = make_coco(tmp_path, "train", 2, seed=0)
    test_ann, test_images = make_coco(tmp_path, "test", 1, seed=1)
    hp = schema_defaults("detector") | dict(backbone="resnet18", init="random", workers=0)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="built without its CUDA ops"):
        train_detector(hp, train_ann=str(train_ann), train_images=str(train_images), test_ann=str(test_ann),
                       test_images=str(test_images), out_model=str(out / "model.pth"),
                       out_config=str(out / "mmdet_config.py"), out_metrics=str(out / "metrics.json"),
                       out_curves=str(out / "curves.png"), work_dir=str(out / "work"), device="cuda")
    assert not (out / "model.pth").exists() and not list(tmp_path.rglob("*.pth"))


def test_the_real_queries_run_here():
    """Without monkeypatching: this GPU-less machine resolves auto to the CPU (no GPU
    variables set by the test runner) and the driver query answers without error."""
    if assigned_gpus() is not None or torch.cuda.is_available():
        pytest.skip("a GPU or GPU variables on this machine")
    assert resolve_device("auto") == "cpu"
    version = nvidia_driver_version()
    assert version is None or version[0].isdigit()
