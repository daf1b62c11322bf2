"""Resume state of long training jobs (pretraining, fine-tuning): one way for both.

* :func:`fingerprint` – a short hash of what determines a run's result (its settings and
  the name, size and modification time of its input files); a checkpoint is reused only
  by a run with the same fingerprint.
* :func:`save` – ``torch.save`` to a temporary file renamed onto the path, so a job
  killed mid-write leaves the previous checkpoint, never a torn one.
* :func:`load` – ``torch.load(weights_only=True)`` (plain tensors and Python types, no
  code runs); an unreadable file or one of other settings is ignored with a warning, so
  it never blocks a fresh start.
* :func:`capture_rng_state` / :func:`restore_rng_state` – Python, NumPy and torch RNG
  states as tensors and plain types (loadable with ``weights_only``).

Checkpoints live beside the outputs, are never declared outputs (Snakemake deletes the
outputs of a failed job) and are removed by the job after success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)

FINGERPRINT_LENGTH = 16


def file_stamp(path: str | os.PathLike | None) -> list | None:
    """``[name, size, mtime_ns]`` of a file; None for no path or no file."""
    if not path or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return [Path(path).name, st.st_size, st.st_mtime_ns]


def fingerprint(settings: Mapping[str, Any], files: Iterable[str | os.PathLike | None] = ()) -> str:
    """Hash of ``settings`` (JSON-able, keys sorted) and the stamps of ``files``."""
    obj = {"settings": dict(settings), "files": [file_stamp(p) for p in files]}
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def save(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (with its ``fingerprint``) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load(
    path: str | os.PathLike | None, fingerprint: str, fmt: int | None = None
) -> dict[str, Any] | None:
    """The state saved at ``path`` when it exists and belongs to this run, else None.

    ``fmt``: the checkpoint format a state must carry (``state["format"]``), if any.
    """
    if not path or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file must not block a fresh start
        log.warning(
            "ignoring unreadable resume checkpoint %s (%s); starting from scratch", path, err
        )
        return None
    if (fmt is not None and state.get("format") != fmt) or state.get("fingerprint") != fingerprint:
        log.warning(
            "resume checkpoint %s was written for other settings or data "
            "(fingerprint %s, now %s); starting from scratch",
            path,
            state.get("fingerprint"),
            fingerprint,
        )
        return None
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python/NumPy/torch RNG states as tensors and plain types (``weights_only`` loadable)."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": {
            "version": version,
            "state": torch.tensor(keys, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only on as many GPUs as were saved)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
