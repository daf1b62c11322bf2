"""Detector QC: the published detector's boxes beside the ground truth on IDRiD test images.

For each chosen testing image (those with the most lesion classes, then the most
boxes) the figure has two panels: the ground-truth boxes of ``coco_test.json`` and the
detector's boxes with a score at or above ``score_threshold`` (the lesion index's
threshold, so the picture shows what pretraining will see). Colours are the lesion
classes of :data:`lesioncl.idrid.CLASS_COLOURS`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesioncl.idrid import CLASS_COLOURS
from lesioncl.plotting import pyplot, save_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorQcSettings:
    """What decides the QC picture (defaults: the schema's). Rule ``detector_qc`` fills it
    from ``params.settings``."""

    n_images: int = 4  # IDRiD testing images drawn (config ``detector.qc_images``)
    score_threshold: float = 0.5  # predicted boxes drawn (``lesion_index.score_threshold``)


def choose_test_images(coco: dict[str, Any], n_images: int) -> list[dict[str, Any]]:
    """The ``n_images`` images with the most lesion classes, then the most boxes (ties: id)."""
    by_image = Counter()
    classes: dict[int, set[int]] = {}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]] += 1
        classes.setdefault(ann["image_id"], set()).add(ann["category_id"])
    ranked = sorted(
        coco["images"],
        key=lambda im: (-len(classes.get(im["id"], ())), -by_image[im["id"]], im["id"]),
    )
    return ranked[: max(1, n_images)]


def _counts(category_ids, names: dict[int, str]) -> str:
    counts = Counter(int(c) for c in category_ids)
    return ", ".join(f"{names[c]} {counts[c]}" for c in sorted(counts)) or "no boxes"


def draw_detector_qc(
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    test_ann: str | os.PathLike,
    test_images: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    settings: DetectorQcSettings = DetectorQcSettings(),
    device: str = "auto",
    detector=None,
) -> dict[str, Any]:
    """Draw ground truth | predictions for ``n_images`` IDRiD test images; return what was drawn.

    ``detector`` (a :class:`lesioncl.detector.inference.LesionDetector`) may be passed
    to reuse a loaded model; by default it is built from ``config_path``/``weights_path``.
    """
    plt = pyplot()
    from matplotlib.patches import Patch, Rectangle
    from PIL import Image

    n_images, score_threshold = settings.n_images, settings.score_threshold

    test_ann, test_images = Path(test_ann), Path(test_images)
    try:
        coco = json.loads(test_ann.read_text())
        images, categories = coco["images"], coco["categories"]
        coco.setdefault("annotations", [])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"{test_ann}: not a COCO detection json ({err}); rerun rule idrid_coco"
        ) from err
    if not images:
        raise ValueError(
            f"{test_ann}: has no images; the IDRiD testing set is empty (rerun rule idrid_coco)"
        )
    names = {c["id"]: c["name"] for c in categories}
    chosen = choose_test_images(coco, n_images)
    paths = [test_images / im["file_name"] for im in chosen]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"IDRiD test images missing: {missing[:3]}; rerun rule idrid_coco")

    if detector is None:
        from lesioncl.detector.inference import LesionDetector

        detector = LesionDetector(config_path, weights_path, device=device)
    label_to_category = {i: cid for i, cid in enumerate(sorted(names))}
    detections = list(detector.predict(paths, batch_size=1, workers=0, desc="detector QC"))

    aspect = chosen[0]["height"] / chosen[0]["width"]
    fig, axes = plt.subplots(
        len(chosen), 2, figsize=(12, 6 * aspect * len(chosen) + 0.8), squeeze=False
    )
    drawn = []
    for row, im, det in zip(axes, chosen, detections):
        with Image.open(test_images / im["file_name"]) as img:
            pixels = np.asarray(img.convert("RGB"))
        truth = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        keep = det.scores >= score_threshold
        pred_categories = [label_to_category.get(int(lab), -1) for lab in det.labels[keep]]
        for ax in row:
            ax.imshow(pixels)
            ax.axis("off")
        for ann in truth:
            x, y, w, h = ann["bbox"]
            row[0].add_patch(
                Rectangle(
                    (x, y),
                    w,
                    h,
                    fill=False,
                    linewidth=0.9,
                    edgecolor=CLASS_COLOURS.get(ann["category_id"], "white"),
                )
            )
        for (x1, y1, x2, y2), cid in zip(det.boxes[keep], pred_categories):
            row[1].add_patch(
                Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    linewidth=0.9,
                    edgecolor=CLASS_COLOURS.get(cid, "white"),
                )
            )
        row[0].set_title(
            f"{im['file_name']}: ground truth "
            f"({_counts([a['category_id'] for a in truth], names)})",
            fontsize=8,
        )
        row[1].set_title(
            f"detector, score ≥ {score_threshold:g} "
            f"({_counts([c for c in pred_categories if c in names], names)})",
            fontsize=8,
        )
        drawn.append(
            {
                "image": im["file_name"],
                "truth_boxes": len(truth),
                "predicted_boxes": int(keep.sum()),
                "all_predicted_boxes": int(len(det.scores)),
            }
        )
        log.info(
            "%s: %d ground-truth boxes, %d predicted at score >= %g (%d in all)",
            im["file_name"],
            len(truth),
            int(keep.sum()),
            score_threshold,
            len(det.scores),
        )
    handles = [
        Patch(edgecolor=CLASS_COLOURS.get(c, "white"), facecolor="none", label=names[c])
        for c in sorted(names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_png(fig, out_png, dpi=110)
    return {"images": drawn, "score_threshold": score_threshold}
