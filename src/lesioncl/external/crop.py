"""A graded set through the EyePACS crop: 512 crops, a manifest, the rejects, a QC picture.

Every image goes through :func:`lesioncl.crop.decode.crop_image` with the workflow's
crop settings (PNG and TIFF too: any format Pillow reads), so a backbone sees the
external crops exactly as it saw the EyePACS ones. The crop is cut around the field of
view, not around the frame: the frame's size (tied to grade in APTOS 2019) does not
reach the crop. The manifest has the columns :func:`lesioncl.crop.cache.build_crop_cache`
reads, so the crop cache and every evaluation of the EyePACS crops run on it unchanged.

One difference from the EyePACS crop, on purpose (``fov_box``, the default): every image
is cut around its field of view, square frames included. The EyePACS crop (the paper's)
keeps a square frame whole; in APTOS 2019 most grade-0 images are squares of one size,
so their crops would show a smaller disc with black corners than the other grades'
crops, a cue of the grade that is not in the retina.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pandas as pd

from lesioncl.crop.box import CropParams
from lesioncl.crop.qc import qc_figure
from lesioncl.crop.shards import CropTask, run_tasks
from lesioncl.external.layouts import LABEL_COLUMNS, REJECT_COLUMNS
from lesioncl.utils import atomic_path, write_json

log = logging.getLogger("lesioncl.external")


def _write_csv(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_labels(labels: pd.DataFrame, rejects: pd.DataFrame, labels_out, rejects_out) -> None:
    _write_csv(labels[LABEL_COLUMNS], labels_out)
    _write_csv(rejects.reindex(columns=REJECT_COLUMNS), rejects_out)


def crop_external(
    name: str,
    labels_csv: str | os.PathLike,
    layout_rejects_csv: str | os.PathLike,
    crops_dir: str | os.PathLike,
    manifest_out: str | os.PathLike,
    rejects_out: str | os.PathLike,
    summary_out: str | os.PathLike,
    qc_out: str | os.PathLike | None,
    params: CropParams,
    workers: int = 1,
    qc_images: int = 6,
    fov_box: bool = True,
) -> dict:
    """Crop every image of ``labels_csv``; the rejects of the layout and of the crop in one
    table (column ``stage``), nothing dropped silently."""
    labels = pd.read_csv(labels_csv, dtype={"image": str, "split": str, "path": str})
    crops_dir = Path(crops_dir)
    crops_dir.mkdir(parents=True, exist_ok=True)
    params = dataclasses.replace(params, detect_scale=None)  # no detection crops
    if fov_box:  # every frame counts as wide: the box is the field of view's
        params = dataclasses.replace(params, wide_ratio=0.0)
    tasks = [
        CropTask(i, r.image, r.path, str(crops_dir / f"{r.image}.jpeg"), None, params)
        for i, r in enumerate(labels.itertuples(index=False))
    ]
    results = pd.DataFrame(run_tasks(tasks, workers, desc=f"crop {name}"))
    table = pd.concat(
        [labels.rename(columns={"path": "raw_path"}).reset_index(drop=True), results], axis=1
    )
    ok = table[table["status"] == "ok"]
    manifest = ok[["image", "level", "split", "path"]]
    _write_csv(manifest, manifest_out)
    layout = pd.read_csv(layout_rejects_csv, dtype=str).assign(stage="layout")
    cropped_out = table[table["status"] != "ok"].rename(columns={"raw_path": "file"})
    crop_rejects = cropped_out.reindex(columns=REJECT_COLUMNS).assign(stage="crop")
    rejects = pd.concat([layout, crop_rejects], ignore_index=True)
    _write_csv(rejects.reindex(columns=["stage", *REJECT_COLUMNS]), rejects_out)
    reasons = {str(k): int(v) for k, v in rejects["reason"].value_counts().items()}
    summary = {
        "set": name,
        "input": {"total": int(len(labels) + len(layout)), "listed_usable": int(len(labels))},
        "cropped": {
            "total": int(len(manifest)),
            **{s: int(n) for s, n in manifest["split"].value_counts().items()},
        },
        "grades": {
            s: {int(g): int(n) for g, n in grp["level"].value_counts().sort_index().items()}
            for s, grp in manifest.groupby("split")
        },
        "rejected": {
            "total": int(len(rejects)),
            "layout": int(len(layout)),
            "crop": int(len(crop_rejects)),
        },
        "reasons": reasons,
        "frame_sizes": {
            "distinct": int(ok[["orig_width", "orig_height"]].drop_duplicates().shape[0])
        },
    }
    write_json(summary_out, summary)
    if qc_out is not None:
        qc_figure(ok, summary, qc_out, qc_images)
    log.info(
        "%s: %d cropped (%s), %d rejected (%s)",
        name,
        len(manifest),
        summary["cropped"],
        len(rejects),
        reasons,
    )
    for split in ("train", "val", "test"):
        if not (manifest["split"] == split).any():
            raise ValueError(
                f"{name}: no cropped image in split {split} ({rejects_out} lists the rejects); "
                "the set is too small for its split settings (external.split)"
            )
    return summary
