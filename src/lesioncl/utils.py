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
from typing import Any, Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to ``log_file`` (and stderr). Returns the package logger.

    Snakemake scripts call this with ``snakemake.log[0]`` so that every job has a
    plain-text log next to its outputs; tqdm writes to stderr, which Snakemake
    shows on the console.
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


def resolve_device(name: str = "auto") -> str:
    """Map the config's ``device`` (auto | cpu | cuda) to a torch device string."""
    try:
        import torch
    except ImportError as err:  # a data-only environment
        raise RuntimeError("resolve_device needs torch: run this rule in envs/torch.yaml") from err

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "config: device is 'cuda' but torch sees no CUDA GPU; set device: auto or cpu"
        )
    return name


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
