"""Detector boxes on one shard of the detection-resolution crops, rescaled into the crops.

Rule lesions_predict.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesioncl.lesions.fileformat import (
    BOX_COLUMNS,
    DET_BOX_COLUMNS,
    DETECTION_COLUMNS,
    MANIFEST_COLUMNS,
    SPLITS,
)
from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.lesions")


@dataclass(frozen=True)
class PredictSettings:
    """What decides the detections of one shard (config ``lesion_index``; defaults: the
    schema's). Rule ``lesions_predict`` fills it from ``params.settings``; the shard
    partition (``n_shards``) is passed beside it, as in ``crop_shard``."""

    size: int = 512  # the side of the square crops the boxes are rescaled into (``crop.size``)
    batch_size: int = 8  # images per detector batch


# --------------------------------------------------------------------------- shards
def read_crop_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """``crop_manifest.csv`` with the columns this stage needs, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: crop manifest not found; run the crop rule first")
    manifest = pd.read_csv(path, dtype={"image": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; the crop stage must write "
            f"{MANIFEST_COLUMNS} (regenerate it with the crop rule)"
        )
    bad = manifest[(manifest["det_width"] <= 0) | (manifest["det_height"] <= 0)]
    if len(bad):
        raise ValueError(
            f"{path}: non-positive det_width/det_height for {list(bad['image'][:5])}; "
            "regenerate the crops"
        )
    return manifest


def shard_rows(manifest: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """Rows of the train and val splits with ``i % n_shards == shard``.

    ``i`` counts the train+val rows in manifest order, so the shards partition them.
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    rows = manifest[manifest["split"].isin(SPLITS)].reset_index(drop=True)
    return rows.iloc[shard::n_shards].reset_index(drop=True)


def rescale_boxes(boxes: np.ndarray, det_width: float, det_height: float, size: int) -> np.ndarray:
    """Boxes ``(n, 4)`` x1, y1, x2, y2 from the ``det_width``×``det_height`` image into
    the ``size``×``size`` crop: x × size/det_width, y × size/det_height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx = size / float(det_width)
    sy = size / float(det_height)
    return boxes * np.array([sx, sy, sx, sy])


def index_key(image: str) -> str:
    """The index key of a manifest image name: ``10_left`` → ``10_left.jpeg``."""
    return image if image.endswith(".jpeg") else f"{image}.jpeg"


def predict_shard(
    manifest_path: str | os.PathLike,
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    shard: int,
    n_shards: int,
    settings: PredictSettings,
    device: str = "auto",
    workers: int = 0,
    threads: int = 1,
) -> pd.DataFrame:
    """Run the detector on one shard of the train+val crops; write all raw detections."""
    import torch

    from lesioncl.detector.inference import LesionDetector  # heavy: mmdet

    size, batch_size = settings.size, settings.batch_size
    torch.set_num_threads(max(1, threads - workers))  # the rest: loader workers
    manifest_path = Path(manifest_path)
    rows = shard_rows(read_crop_manifest(manifest_path), shard, n_shards)
    missing = [p for p in rows["det_path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{manifest_path}: {len(missing)} det_path files do not exist (first: {missing[:3]}): "
            "the crop folders changed after the manifest was written. Recreate the crops: rerun "
            "with --forcerun crop_shard (and your --configfile)"
        )
    log.info(
        "shard %d/%d: %d images (%s)", shard, n_shards, len(rows), dict(Counter(rows["split"]))
    )
    records: list[dict[str, Any]] = []
    if len(rows):
        detector = LesionDetector(config_path, weights_path, device=device)
        by_path = {p: i for i, p in enumerate(rows["det_path"])}
        for det in detector.predict(
            list(rows["det_path"]),
            batch_size=batch_size,
            workers=workers,
            desc=f"lesions shard {shard}",
        ):
            row = rows.iloc[by_path[det.path]]
            w, h = int(row["det_width"]), int(row["det_height"])
            if (det.width, det.height) != (w, h):
                raise ValueError(
                    f"{det.path}: the detector read a {det.width}x{det.height} (w x h) image but "
                    f"{manifest_path} says det_width={w}, det_height={h}; the manifest is stale "
                    "or swapped – rerun the crop rule"
                )
            crop_boxes = rescale_boxes(det.boxes, w, h, size)
            for k in range(len(det.scores)):
                label = int(det.labels[k])
                records.append(
                    {
                        "image": row["image"],
                        "split": row["split"],
                        "label": label,
                        "label_name": detector.classes[label],
                        "score": float(det.scores[k]),
                        **dict(zip(BOX_COLUMNS, crop_boxes[k].tolist())),
                        **dict(zip(DET_BOX_COLUMNS, det.boxes[k].tolist())),
                        "det_width": w,
                        "det_height": h,
                    }
                )
    table = pd.DataFrame.from_records(records, columns=DETECTION_COLUMNS)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info(
        "shard %d: %d detections on %d images written to %s",
        shard,
        len(table),
        table["image"].nunique(),
        out_csv,
    )
    return table
