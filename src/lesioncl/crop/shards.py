"""One shard of labels.csv cropped in a process pool (rule crop_shard)."""

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lesioncl.crop.box import (
    DETECT_SPLITS,
    INT_COLUMNS,
    LABEL_COLUMNS,
    SHARD_COLUMNS,
    CropParams,
    CropReject,
)
from lesioncl.crop.decode import crop_image
from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.crop")


# --------------------------------------------------------------------------- shards


def shard_rows(n_rows: int, shard: int, n_shards: int) -> np.ndarray:
    """Row indices of shard ``shard``: the rows i with ``i % n_shards == shard``."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    return np.arange(shard, n_rows, n_shards)


def read_labels(labels_csv: str | os.PathLike) -> pd.DataFrame:
    """The labels table, checked: required columns, unique image names."""
    labels = pd.read_csv(
        labels_csv, dtype={"image": str, "patient_id": str, "eye": str, "split": str, "path": str}
    )
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(
            f"{labels_csv}: missing column(s) {missing}; the labels table needs "
            f"{list(LABEL_COLUMNS)} (written by rule eyepacs_labels)"
        )
    dup = labels["image"][labels["image"].duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"{labels_csv}: image names must be unique (crops are named after them); "
            f"duplicated: {list(dup[:10])}"
        )
    if labels["path"].isna().any():
        bad = labels.loc[labels["path"].isna(), "image"].tolist()[:10]
        raise ValueError(f"{labels_csv}: empty path for image(s) {bad}")
    return labels


@dataclass
class CropTask:
    """One image to crop: labels row, name, raw file, 512-crop and detection-crop paths
    (``det`` None: no detection crop)."""

    row: int
    image: str
    src: str
    out: str | None
    det: str | None
    params: CropParams = field(repr=False)


def _crop_task(task: CropTask) -> dict:
    base = {"row": task.row, "status": "ok", "reason": "", "detail": ""}
    try:
        res = crop_image(task.src, task.out, task.det, task.params)
    except CropReject as rej:
        return {**base, "status": "rejected", "reason": rej.reason, "detail": rej.detail}
    except Exception as exc:  # a bug, not bad input: stop with the file named
        raise RuntimeError(f"cropping {task.src} failed unexpectedly: {exc!r}") from exc
    x1, y1, x2, y2 = res.box
    return {
        **base,
        "path": task.out,
        "det_path": task.det,
        "det_width": res.det_width,
        "det_height": res.det_height,
        "orig_width": res.orig_width,
        "orig_height": res.orig_height,
        "box_x1": x1,
        "box_y1": y1,
        "box_x2": x2,
        "box_y2": y2,
        "box_method": res.box_method,
        "decode_scale": res.decode_scale,
        "det_scale": res.det_scale,
    }


def init_worker() -> None:
    """One OpenCV thread per process: the parallelism is the process pool."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def run_tasks(tasks: Sequence[CropTask], workers: int, desc: str = "crop") -> list[dict]:
    """Crop every task, in a pool of ``workers`` processes (in-process when 1), with progress."""
    from lesioncl.progress import progress

    if workers <= 1 or len(tasks) <= 1:
        init_worker()
        return [_crop_task(t) for t in progress(tasks, desc=desc, unit="img", mininterval=2)]
    from lesioncl.utils import worker_context

    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    with worker_context() as ctx, ctx.Pool(workers, initializer=init_worker) as pool:
        return list(
            progress(
                pool.imap(_crop_task, tasks, chunksize=chunk),
                total=len(tasks),
                desc=desc,
                unit="img",
                mininterval=2,
            )
        )


def crop_shard(
    labels_csv: str | os.PathLike,
    shard: int,
    n_shards: int,
    crops_dir: str | os.PathLike,
    det_dir: str | os.PathLike,
    table_path: str | os.PathLike,
    params: CropParams,
    workers: int = 1,
) -> pd.DataFrame:
    """Crop the rows ``i % n_shards == shard`` of the labels table; write the shard table.

    Images of the :data:`DETECT_SPLITS` (train, val) also get a detection crop in
    ``det_dir``; the test images, which the detector never sees, do not.
    """
    labels = read_labels(labels_csv)
    rows = shard_rows(len(labels), shard, n_shards)
    crops_dir, det_dir = Path(crops_dir), Path(det_dir)
    crops_dir.mkdir(parents=True, exist_ok=True)
    det_dir.mkdir(parents=True, exist_ok=True)
    part = labels.iloc[rows]
    tasks = [
        CropTask(
            int(i),
            str(r.image),
            str(r.path),
            str(crops_dir / f"{r.image}.jpeg"),
            str(det_dir / f"{r.image}.jpeg") if r.split in DETECT_SPLITS else None,
            params,
        )
        for i, r in zip(rows, part.itertuples(index=False))
    ]
    log.info(
        "shard %d/%d: %d of %d images, %d worker(s), params %s",
        shard,
        n_shards,
        len(tasks),
        len(labels),
        workers,
        asdict(params),
    )
    t0 = time.perf_counter()
    results = run_tasks(tasks, workers, desc=f"crop shard {shard}")
    elapsed = time.perf_counter() - t0
    meta = part.rename(columns={"path": "raw_path"})[
        ["image", "patient_id", "eye", "level", "split", "raw_path"]
    ]
    table = pd.concat([meta.reset_index(drop=True), pd.DataFrame(results)], axis=1)
    table = table.reindex(columns=list(SHARD_COLUMNS))
    for column in INT_COLUMNS:
        table[column] = table[column].astype("Int64")
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)

    n_ok = int((table["status"] == "ok").sum())
    log.info(
        "shard %d: %d images in %.1f s (%.1f images/s): %d cropped, %d rejected",
        shard,
        len(table),
        elapsed,
        len(table) / max(elapsed, 1e-9),
        n_ok,
        len(table) - n_ok,
    )
    for method, n in Counter(table.loc[table["status"] == "ok", "box_method"]).most_common():
        log.info("  box %s: %d", method, n)
    for _, r in table[table["status"] != "ok"].iterrows():
        log.warning("  rejected %s (%s): %s", r["image"], r["reason"], r["detail"])
    return table
