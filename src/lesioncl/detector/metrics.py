"""The COCO files checked, the published detector evaluated on the test set (COCO bbox
metrics) and its training curves.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from lesioncl.plotting import pyplot, save_png

log = logging.getLogger(__name__)


def check_coco_images(ann_file: str | os.PathLike, images_dir: str | os.PathLike) -> dict[str, Any]:
    """Every image of a COCO file exists under ``images_dir``; returns the parsed json."""
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    try:
        coco = json.loads(ann_file.read_text())
        images = coco["images"]
        coco["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{ann_file}: not a COCO detection json ({err}); rerun the idrid rule"
        ) from err
    if not images:
        raise ValueError(f"{ann_file}: no images; check the IDRiD source (idrid.path)")
    missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{ann_file}: {len(missing)} images missing under {images_dir} (first: {missing[:3]}); "
            "rerun the idrid rule"
        )
    return coco


def evaluate_detector(
    config_path: str,
    weights_path: str,
    test_ann: str,
    test_images: str,
    *,
    device: str = "auto",
    batch_size: int = 2,
    workers: int = 0,
) -> dict[str, Any]:
    """COCO bbox evaluation of the published detector on a COCO test set."""
    from lesioncl.detector.inference import LesionDetector

    coco = check_coco_images(test_ann, test_images)
    detector = LesionDetector(config_path, weights_path, device=device)
    paths = [str(Path(test_images) / im["file_name"]) for im in coco["images"]]
    dets = list(detector.predict(paths, batch_size=batch_size, workers=workers, desc="evaluate"))
    return coco_metrics(test_ann, test_images, dets, detector.classes)


def coco_metrics(
    test_ann: str, test_images: str, detections: Iterable, classes: tuple[str, ...]
) -> dict[str, Any]:
    """pycocotools bbox metrics of ``detections`` (:class:`inference.Detections`)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from lesioncl.detector.compat import apply_patches

    apply_patches()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(test_ann))
    by_path = {str(Path(test_images) / im["file_name"]): im["id"] for im in gt.dataset["images"]}
    cat_ids = sorted(gt.getCatIds())
    results = []
    for det in detections:
        image_id = by_path[str(Path(det.path))]
        for (x1, y1, x2, y2), score, label in zip(
            det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()
        ):
            results.append(
                dict(
                    image_id=image_id,
                    category_id=cat_ids[label],
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                    score=float(score),
                )
            )
    gt_counts = {c: len(gt.getAnnIds(catIds=[c])) for c in cat_ids}
    per_class = {
        name: {"AP": 0.0, "AP_50": 0.0, "gt_boxes": gt_counts[c]}
        for name, c in zip(classes, cat_ids)
    }
    metrics: dict[str, Any] = {
        "mAP": 0.0,
        "mAP_50": 0.0,
        "mAP_75": 0.0,
        "per_class": per_class,
        "test_images": len(by_path),
        "detections": len(results),
    }
    if not results:
        log.warning("the detector found nothing on %s: all APs are 0", test_ann)
        return metrics
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.info("pycocotools summary:\n%s", out.getvalue())
    metrics.update(mAP=_ap(ev.stats[0]), mAP_50=_ap(ev.stats[1]), mAP_75=_ap(ev.stats[2]))
    precision = ev.eval["precision"]  # [iou thr, recall, class, area, max dets]
    for k, (name, c) in enumerate(zip(classes, cat_ids)):
        all_iou = precision[:, :, k, 0, -1]
        iou50 = precision[0, :, k, 0, -1]
        # no ground truth of the class in the test set: AP undefined (None)
        per_class[name]["AP"] = _ap(all_iou[all_iou > -1].mean()) if (all_iou > -1).any() else None
        per_class[name]["AP_50"] = _ap(iou50[iou50 > -1].mean()) if (iou50 > -1).any() else None
    return metrics


def _ap(value: float) -> float:
    return round(max(0.0, float(value)), 4)


def plot_training(
    scalars_json: str | os.PathLike, metrics: Mapping[str, Any], out_png: str | os.PathLike
) -> None:
    """Loss curves, test mAP@0.5 during training and the final per-class AP@0.5."""
    plt = pyplot()

    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    path = Path(scalars_json)
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            (val if "coco/bbox_mAP_50" in rec else train).append(rec)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for key in ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    if val:
        ax.plot(
            [r["step"] for r in val], [r["coco/bbox_mAP_50"] for r in val], "o-", label="mAP@0.5"
        )
        ax.plot(
            [r["step"] for r in val], [r["coco/bbox_mAP"] for r in val], "s-", label="mAP@[.5:.95]"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test set (monitoring only)")
    ax = axes[2]
    names = list(metrics["per_class"])
    values = [metrics["per_class"][n]["AP_50"] or 0.0 for n in names]
    ax.bar(names, values, color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"final test: mAP@0.5 {metrics['mAP_50']:.3f}, mAP {metrics['mAP']:.3f}", fontsize=9
    )
    ax.set_ylabel("AP@0.5")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=100)
