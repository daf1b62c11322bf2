"""The shards merged, filtered (score, size, border) and written as the index.

Rule lesions_index.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from lesioncl.lesions.fileformat import (
    BOX_COLUMNS,
    DETECTION_COLUMNS,
    FILTER_REASONS,
    ROUND_DECIMALS,
    SPLITS,
    validate_index,
    write_lesion_index,
)
from lesioncl.lesions.predict import index_key, read_crop_manifest
from lesioncl.lesions.qc import plot_qc, plot_summary
from lesioncl.utils import write_json

log = logging.getLogger("lesioncl.lesions")


@dataclass(frozen=True)
class IndexSettings:
    """What decides the lesion index (config ``lesion_index``; defaults: the schema's).

    Rule ``lesions_index`` fills it from ``params.settings``.
    """

    score_threshold: float = 0.5  # keep a box when its score is above this
    max_box_size: float = 128  # keep a box when its width and height are <= this (crop px)
    border_margin: float = 5  # keep a box when x1..y2 lie inside (margin, size - margin)
    size: int = 512  # the side of the square crops (config ``crop.size``)
    qc_images: int = 12  # images drawn in qc_boxes.png
    seed: int = 0  # draws the QC images (config ``seed``)

    def __post_init__(self) -> None:
        if not 0 <= self.border_margin < self.size / 2:
            raise ValueError(
                f"lesion_index.border_margin={self.border_margin} must lie in "
                f"[0, size/2={self.size / 2})"
            )


# --------------------------------------------------------------------------- filter
def read_detections(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate the shard tables, checking their columns."""
    tables = []
    for path in paths:
        table = pd.read_csv(path, dtype={"image": str, "split": str, "label_name": str})
        missing = [c for c in DETECTION_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; rerun lesions_predict")
        if len(table):
            tables.append(table[DETECTION_COLUMNS])
    if not tables:
        return pd.DataFrame(columns=DETECTION_COLUMNS)
    return pd.concat(tables, ignore_index=True)


def filter_reasons(
    detections: pd.DataFrame,
    *,
    score_threshold: float,
    max_box_size: float,
    border_margin: float,
    size: int,
) -> pd.Series:
    """Why each detection is dropped (first failing rule: score, size, border), or "" if kept.

    Coordinates are rounded to 0.1 px first, as they are stored.
    """
    boxes = detections[BOX_COLUMNS].astype(float).round(ROUND_DECIMALS)
    x1, y1, x2, y2 = (boxes[c] for c in BOX_COLUMNS)
    score_ok = detections["score"].astype(float) > score_threshold
    size_ok = ((x2 - x1) <= max_box_size) & ((y2 - y1) <= max_box_size)
    lo, hi = border_margin, size - border_margin
    border_ok = pd.Series(True, index=detections.index)
    for c in (x1, y1, x2, y2):
        border_ok &= (c > lo) & (c < hi)
    reason = pd.Series("", index=detections.index, dtype=object)
    reason[~border_ok] = "border"
    reason[~size_ok] = "size"
    reason[~score_ok] = "score"
    return reason


def make_index(kept: pd.DataFrame) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """``{split: {'<image>.jpeg': [(x1, y1, x2, y2), ...]}}`` of the kept detections.

    Boxes of an image keep the detector's order (descending score); values are Python
    floats rounded to 0.1 px. Every split in :data:`SPLITS` is present (maybe empty).
    """
    index: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {s: {} for s in SPLITS}
    kept = kept.sort_values(
        ["split", "image", "score"], ascending=[True, True, False], kind="stable"
    )
    for (split, image), group in kept.groupby(["split", "image"], sort=True):
        boxes = group[BOX_COLUMNS].astype(float).round(ROUND_DECIMALS).to_numpy()
        index.setdefault(str(split), {})[index_key(str(image))] = [
            tuple(round(float(v), ROUND_DECIMALS) for v in box) for box in boxes
        ]
    return index


def summarise(
    index: Mapping[str, Mapping[str, list]],
    images_in: Mapping[str, int],
    reasons: pd.Series,
    detections: pd.DataFrame,
    max_hist: int = 50,
) -> dict[str, Any]:
    """Per-split counts, boxes-per-image histograms and filter statistics.

    ``boxes_per_image_histogram[k]`` is the number of images with ``k`` kept boxes
    (``k = 0``: left out of the index); the last bin counts ``max_hist`` or more.
    """
    splits: dict[str, Any] = {}
    for split in SPLITS:
        n_in = int(images_in.get(split, 0))
        per_image = [len(b) for b in index.get(split, {}).values()]
        counts = Counter(min(n, max_hist) for n in per_image)
        counts[0] = n_in - len(per_image)
        splits[split] = {
            "images_in": n_in,
            "images_with_boxes": len(per_image),
            "images_without_boxes": n_in - len(per_image),
            "boxes": int(sum(per_image)),
            "mean_boxes_per_indexed_image": float(np.mean(per_image)) if per_image else 0.0,
            "boxes_per_image_histogram": [int(counts.get(k, 0)) for k in range(max_hist + 1)],
        }
    dropped = Counter(r for r in reasons if r)
    return {
        "splits": splits,
        "detections": int(len(detections)),
        "kept": int((reasons == "").sum()),
        "dropped": {r: int(dropped.get(r, 0)) for r in FILTER_REASONS},
        "kept_per_class": {
            str(k): int(v) for k, v in Counter(detections.loc[reasons == "", "label_name"]).items()
        },
    }


def build_lesion_index(
    shard_csvs: Iterable[str | os.PathLike],
    manifest_path: str | os.PathLike,
    *,
    out_pkl: str | os.PathLike,
    out_json: str | os.PathLike,
    out_summary: str | os.PathLike,
    out_histogram: str | os.PathLike,
    out_qc: str | os.PathLike,
    settings: IndexSettings,
) -> dict[str, Any]:
    """Merge, filter and write the lesion index with its summary and QC pictures."""
    size, max_box_size = settings.size, settings.max_box_size
    manifest = read_crop_manifest(manifest_path)
    rows = manifest[manifest["split"].isin(SPLITS)]
    detections = read_detections(shard_csvs)
    unknown = set(detections["image"]) - set(rows["image"])
    if unknown:
        raise ValueError(
            f"detections name images not in the train/val rows of {manifest_path} "
            f"(e.g. {sorted(unknown)[:3]}); the shards are stale – rerun lesions_predict"
        )
    reasons = filter_reasons(
        detections,
        score_threshold=settings.score_threshold,
        max_box_size=max_box_size,
        border_margin=settings.border_margin,
        size=size,
    )
    index = make_index(detections[reasons == ""])
    validate_index(index, source="the new lesion index", size=size, max_box_size=max_box_size)
    write_lesion_index(index, out_pkl, out_json)
    images_in = Counter(rows["split"])
    summary = summarise(index, images_in, reasons, detections)
    summary["filters"] = {
        "score_threshold": settings.score_threshold,
        "max_box_size": max_box_size,
        "border_margin": settings.border_margin,
        "size": size,
    }
    write_json(out_summary, summary)
    for split, s in summary["splits"].items():
        log.info(
            "%s: %d images in, %d with >=1 box, %d without (left out), %d boxes",
            split,
            s["images_in"],
            s["images_with_boxes"],
            s["images_without_boxes"],
            s["boxes"],
        )
        hist = s["boxes_per_image_histogram"]
        log.info(
            "%s boxes per image (count: images, last bin: %d or more): %s",
            split,
            len(hist) - 1,
            {k: v for k, v in enumerate(hist) if v},
        )
    log.info(
        "detections: %d, kept %d, dropped %s",
        summary["detections"],
        summary["kept"],
        summary["dropped"],
    )
    plot_summary(summary, out_histogram)
    plot_qc(index, rows, out_qc, n_images=settings.qc_images, seed=settings.seed, size=size)
    return summary
