"""Small helpers shared by every stage: logging, atomic writes, seeding, devices."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(
    log_file: str | os.PathLike | None = None, level: int = logging.INFO
) -> logging.Logger:
    """Log to ``log_file`` (and stderr). Returns the package logger.

    Snakemake scripts call this with ``snakemake.log[0]`` so that every job has a
    plain-text log next to its outputs. Long loops report through
    :func:`lesioncl.progress.progress`: a live bar on a terminal, and plain progress
    lines (count, rate, ETA) at a bounded rate in this log (and on stderr when it is
    not a terminal, e.g. a SLURM job's output).
    """
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(LOG_FORMAT)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="w")
        fh.setFormatter(formatter)
        root.addHandler(fh)
    logging.captureWarnings(True)
    return logging.getLogger("lesioncl")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A job killed mid-write (SLURM time limit, Ctrl-C) never leaves a truncated file
    under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only; give it the permissions open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (when installed) torch."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


# Variables through which a scheduler hands a job its GPUs (SLURM sets the first
# ones for --gpus/--gres jobs; CUDA_VISIBLE_DEVICES also by other schedulers).
_GPU_VARIABLES = (
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
    "SLURM_GPUS_ON_NODE",
    "SLURM_GPUS",
    "SLURM_GPUS_PER_NODE",
    "SLURM_GPUS_PER_TASK",
    "CUDA_VISIBLE_DEVICES",
)
# Set to 1 to accept the CPU inside a job that was given GPUs (device: auto), e.g.
# the fake GPUs of scripts/slurm/local_cluster.py.
CPU_FALLBACK_VARIABLE = "LESIONCL_CPU_FALLBACK"


def assigned_gpus(environ: Mapping[str, str] | None = None) -> str | None:
    """``NAME=value`` of the first variable saying this job was given GPUs, else None.

    GPU lists ("0", "0,1", "GPU-uuid") count as given; an empty or -1 list (GPUs hidden)
    and a count of 0 do not.
    """
    env = os.environ if environ is None else environ
    for name in _GPU_VARIABLES:
        value = (env.get(name) or "").strip()
        if not value or value in ("-1", "none", "NoDevFiles"):
            continue
        is_count = name not in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
        if is_count and value.rsplit(":", 1)[-1] == "0":
            continue
        return f"{name}={value}"
    return None


def nvidia_driver_version(
    run: Callable[..., Any] | None = None,
    proc_file: str | os.PathLike = "/proc/driver/nvidia/version",
) -> str | None:
    """The NVIDIA driver version (nvidia-smi, else /proc/driver/nvidia/version); None if absent."""
    import re
    import subprocess

    run = subprocess.run if run is None else run
    try:
        out = run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = [line.strip() for line in (out.stdout or "").splitlines() if line.strip()]
        if out.returncode == 0 and lines:
            return f"{lines[0]} (nvidia-smi)"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        text = Path(proc_file).read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text) or re.search(
        r"(\d{3,}\.\d+(?:\.\d+)?)", text
    )
    return f"{m.group(1)} ({proc_file})" if m else None


def no_gpu_message(
    why: str,
    torch_cuda: str | None,
    torch_version: str,
    driver: str | None,
    cuda_warnings: list[str] = (),
) -> str:
    """The message of a job that asked for a GPU and sees none: what, versions, the fix."""
    if torch_cuda is None:
        build = f"torch {torch_version} is a CPU-only build (torch.version.cuda is None)"
        fix = (
            "install the CUDA build of torch (make setup / the conda env on a GPU node), "
            "or run on the CPU with device: cpu"
        )
    else:
        build = f"torch {torch_version} is built for CUDA {torch_cuda}"
        major = torch_cuda.split(".")[0]
        need = "580 or newer" if major == "13" else f"one that supports CUDA {torch_cuda}"
        if driver is None:
            fix = (
                "no NVIDIA driver was found on this node (no nvidia-smi, no "
                "/proc/driver/nvidia/version): check that the job landed on a GPU node and "
                "that the partition's nodes have the driver; or run on the CPU with device: cpu"
            )
        else:
            fix = (
                f"a CUDA {torch_cuda} build needs an NVIDIA driver {need}: ask the cluster's "
                "admins for a newer driver or use nodes that have one, or install a torch "
                "built for the CUDA the driver supports (nvidia-smi shows it); or run on the "
                "CPU with device: cpu"
            )
    said = f" torch said: {' | '.join(cuda_warnings)}." if cuda_warnings else ""
    return (
        f"{why}, but torch sees no CUDA GPU. NVIDIA driver: "
        f"{driver or 'not found'}; {build}.{said} Fix: {fix}. Stopped before any work so "
        "that a GPU job does not run for days on the CPU."
    )


def resolve_device(name: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """Map the config's ``device`` (auto | cpu | cuda) to a torch device string.

    ``cuda``, or ``auto`` inside a job that was given GPUs (:func:`assigned_gpus`),
    stops at once when torch sees no GPU, with the driver and CUDA versions and the
    fix (:func:`no_gpu_message`). ``auto`` elsewhere falls back to the CPU; so does
    ``auto`` in a GPU job with ``LESIONCL_CPU_FALLBACK=1``.
    """
    try:
        import torch
    except ImportError as err:  # a data-only environment
        raise RuntimeError("resolve_device needs torch: run this rule in envs/torch.yaml") from err
    import warnings

    env = os.environ if environ is None else environ
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"config: device is {name!r}; use auto, cpu or cuda")
    if name == "cpu":
        return "cpu"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return "cuda"
    if name == "auto":
        given = assigned_gpus(env)
        if given is None or env.get(CPU_FALLBACK_VARIABLE) == "1":
            return "cpu"
        why = (
            f"device is 'auto' and this job was given GPUs ({given}; set "
            f"{CPU_FALLBACK_VARIABLE}=1 to accept the CPU)"
        )
    else:
        why = "config: device is 'cuda'"
    raise RuntimeError(
        no_gpu_message(
            why,
            torch.version.cuda,
            torch.__version__,
            nvidia_driver_version(),
            [str(w.message) for w in caught],
        )
    )


@contextmanager
def worker_context() -> Iterator[Any]:
    """A multiprocessing context for process pools, safe in threaded parents.

    ``fork`` copies a parent that already runs threads (OpenCV's or torch's thread
    pools, a test runner's) together with any lock one of them held, which can
    deadlock the children. ``forkserver`` starts workers from a clean server
    process, but re-runs the parent's ``__main__`` file in each of them — for a
    Snakemake script that is the script itself, which fails outside Snakemake. So
    while the pool starts, ``__main__`` is presented without its file; the workers'
    functions live in lesioncl modules and are imported normally. Create and use the
    pool inside the ``with`` block.
    """
    import multiprocessing

    main = sys.modules.get("__main__")
    saved = getattr(main, "__file__", None)
    if saved is not None:
        del main.__file__
    try:
        yield multiprocessing.get_context("forkserver")
    finally:
        if saved is not None:
            main.__file__ = saved
