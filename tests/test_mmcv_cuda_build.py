"""envs/torch.post-deploy.sh, CUDA path (FORCE_CUDA=1): the checks that run before the build.

The build itself (about an hour on 2 cores for one architecture) is not run here; these
tests stop at the plan (``LESIONCL_MMCV_PLAN=1``) or at the error the script gives for a
toolchain it cannot build with. The figures of a real build are in the README.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "envs" / "torch.post-deploy.sh"
NVCC = shutil.which("nvcc")
needs_cuda_torch = pytest.mark.skipif(not torch.version.cuda, reason="torch is a CPU-only build")
needs_nvcc = pytest.mark.skipif(NVCC is None or not torch.version.cuda, reason="no nvcc, or a CPU-only torch")


def plan(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST")}
    base.update(FORCE_CUDA="1", LESIONCL_MMCV_PLAN="1", PYTHON=sys.executable, LESIONCL_ROOT=str(REPO),
                XDG_CACHE_HOME=str(tmp_path / "cache"))
    base.update(env)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=base, timeout=120)


def test_force_cuda_without_nvcc_says_what_to_install(tmp_path):
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if shutil.which("nvcc", path=path):
        pytest.skip("nvcc is installed in a system folder")
    proc = plan(tmp_path, PATH=path)
    assert proc.returncode == 1
    assert "nvcc is not on the PATH" in proc.stderr and "cuda-nvcc" in proc.stderr and "FORCE_CUDA=0" in proc.stderr
    assert "wheel_dir=" not in proc.stdout


@needs_cuda_torch
def test_an_nvcc_of_another_cuda_major_is_refused(tmp_path):
    fake = tmp_path / "bin" / "nvcc"  # stands for an installed CUDA 11.8 toolkit, which this machine lacks
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 11.8, V11.8.89'\n")
    fake.chmod(0o755)
    proc = plan(tmp_path, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert proc.returncode == 1
    assert f"nvcc is CUDA 11.8 but torch was built with CUDA {torch.version.cuda}" in proc.stderr


@needs_nvcc
def test_cuda_home_is_found_through_an_nvcc_wrapper(tmp_path):
    """torch alone takes CUDA_HOME = the grandparent of the nvcc on the PATH: for a wrapper
    script (as /usr/local/bin/nvcc is on some machines) that folder has no CUDA headers."""
    wrapper = tmp_path / "wrap" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{NVCC}" "$@"\n')
    wrapper.chmod(0o755)
    proc = plan(tmp_path, PATH=f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}", TORCH_CUDA_ARCH_LIST="9.0")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("CUDA ops:"))
    cuda_home = Path(line.split("CUDA_HOME=")[1].split(",")[0])
    assert cuda_home != tmp_path / "wrap"
    assert any((cuda_home / sub / "cuda_runtime.h").is_file()
               for sub in ("include", f"targets/{os.uname().machine}-linux/include"))
    assert "TORCH_CUDA_ARCH_LIST=9.0" in line
    # torch's CUDA headers include cusparse.h & co.: from the toolkit, else from torch's nvidia wheels
    for header in ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h"):
        in_toolkit = any((cuda_home / sub / header).is_file()
                         for sub in ("include", f"targets/{os.uname().machine}-linux/include"))
        if not in_toolkit:
            note = next(x for x in proc.stderr.splitlines() if "taken from torch's nvidia wheels" in x)
            folders = note.rsplit("(", 1)[1].rstrip(")").split(os.pathsep)
            assert header in note and any((Path(f) / header).is_file() for f in folders)
    assert "flavour=cuda" in proc.stdout and "9.0" in proc.stdout.split("flavour=")[1].splitlines()[0]


@needs_nvcc
def test_a_wrong_cuda_home_and_the_default_architectures(tmp_path):
    proc = plan(tmp_path, CUDA_HOME=str(tmp_path))
    assert proc.returncode == 1 and f"CUDA_HOME={tmp_path} has no include/cuda_runtime.h" in proc.stderr
    proc = plan(tmp_path)
    assert proc.returncode == 0, proc.stderr
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        expected = ";".join(f"{a}.{b}" for a, b in sorted(caps))
    else:  # no GPU: every architecture this torch was built for, with a note that it is slow
        expected = ";".join(f"{a[3:-1]}.{a[-1]}" for a in torch.cuda.get_arch_list() if a[3:].isdigit())
        assert "TORCH_CUDA_ARCH_LIST is not set" in proc.stderr
    assert f"TORCH_CUDA_ARCH_LIST={expected}" in proc.stderr
