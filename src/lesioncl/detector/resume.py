"""Resuming the detector's training: the record of what a run trains, the checkpoint to
resume from, and the checkpoints' unpickling allowed only inside the resume folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

log = logging.getLogger(__name__)


RESUME_RECORD = "resume.json"


def _file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def resume_checkpoint(state_dir: Path, record: Mapping[str, Any]) -> Path | None:
    """The checkpoint an interrupted run left in ``state_dir`` for the same ``record``
    (hyper-parameters, seed, data); None to start over (``state_dir`` is then emptied
    and ``record`` written)."""
    saved = state_dir / RESUME_RECORD
    found = None
    if saved.is_file():
        try:
            same = json.loads(saved.read_text()) == json.loads(json.dumps(record))
        except ValueError:
            same = False
        pointer = state_dir / "last_checkpoint"  # written by mmengine after each save
        if not same:
            log.warning(
                "%s: the interrupted run used other settings or data; starting over", state_dir
            )
        elif pointer.is_file():
            named = Path(pointer.read_text().strip())
            for candidate in (named, state_dir / named.name):
                if candidate.is_file():
                    found = candidate
                    break
    if found is not None:
        return found
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    (state_dir / RESUME_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return None


@contextlib.contextmanager
def trust_checkpoints_in(folder: str | os.PathLike) -> Iterator[None]:
    """Let ``torch.load`` unpickle (``weights_only=False``) files inside ``folder`` only:
    mmengine's own resume checkpoints, written by this workflow in its results. Every
    other load keeps torch's safe default; the patch lives only while the block runs."""
    root = Path(folder).resolve()
    original = torch.load

    def load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).resolve().is_relative_to(root):
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def merged_scalars(state_dir: Path) -> list[dict[str, Any]]:
    """mmengine's scalars.json of every (resumed) run in ``state_dir``, in order, a
    logged step of a later run replacing the same step of an earlier one."""
    records: dict[tuple[bool, int], dict[str, Any]] = {}
    for path in sorted(state_dir.glob("*/vis_data/scalars.json")):  # run folders: timestamps
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # the last line of a run killed while writing it
                continue
            records[("coco/bbox_mAP_50" in rec, int(rec["step"]))] = rec
    return [records[k] for k in sorted(records, key=lambda k: (k[0], k[1]))]
