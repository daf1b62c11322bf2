"""DDR -> COCO detection json + (resized) images, with a summary and rejects (rule ddr_coco)."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesioncl.ddr.layout import (
    LAYOUT_HELP,
    MASK_CODES,
    SPLITS,
    DdrImage,
    DdrLayoutError,
    find_root,
    read_voc,
    scan_layout,
)
from lesioncl.idrid.boxes import (
    binarise,
    mask_to_boxes,
    output_size,
    read_mask_values,
    scale_boxes,
)
from lesioncl.idrid.coco import _size_stats
from lesioncl.idrid.layout import _image_size as image_size
from lesioncl.idrid.qc import draw_qc
from lesioncl.idrid.sources import CATEGORIES
from lesioncl.utils import atomic_path, write_json

log = logging.getLogger("lesioncl.ddr")

REJECT_COLUMNS = ["split", "image", "reason", "detail"]


@dataclass(frozen=True)
class DdrCocoSettings:
    """What decides DDR's COCO files (config ``ddr``; defaults: the schema's).

    Rule ``ddr_coco`` fills it from ``params.settings``.
    """

    annotations: str = "masks"  # masks (-> boxes as for IDRiD) | voc (DDR's lesion_detection)
    mask_threshold: float = 1  # a mask pixel is lesion when its channel maximum is above this
    max_size: int | None = None  # longest side of the written images (None: full size)
    min_box_size: float = 1  # scaled boxes below this (output px) grow around their centre
    qc_images: int = 4  # training images drawn in the QC picture


@dataclass
class _Result:
    image: dict
    annotations: list[dict]
    reject: dict | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _mask_boxes(item: DdrImage, width: int, height: int, threshold: float, counts: dict):
    """(category, x, y, w, h, area) of every mask component, at full resolution."""
    out = []
    for code, category in MASK_CODES.items():
        path = item.masks.get(code)
        if path is None:
            counts["missing_masks"] += 1
            continue
        values = read_mask_values(path.read_bytes())
        if values.shape != (height, width):
            raise DdrLayoutError(
                f"{path}: the mask is {values.shape[1]}x{values.shape[0]} but its image "
                f"{item.image} is {width}x{height}. Fix: replace it with the released file."
            )
        mask, zero_one = binarise(values, threshold)
        counts["zero_one_masks"] += int(zero_one)
        stats = mask_to_boxes(mask)
        if len(stats) == 0:
            counts["empty_masks"] += 1
        out += [(category, *row) for row in stats.tolist()]
    return out


def _write_resized(src: Path, dest: Path, width: int, height: int) -> None:
    """The image at ``width`` x ``height`` as a JPEG (q95, 4:4:4), as for IDRiD."""
    from PIL import Image

    with Image.open(src) as img:
        img.draft("RGB", (width, height))  # fast JPEG DCT downscale, still >= target
        img = img.convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.LANCZOS)
        img.save(dest, format="JPEG", quality=95, subsampling=0)


def _process(item: DdrImage, image_id: int, out_dir: Path, s: DdrCocoSettings) -> _Result:
    counts = dict.fromkeys(
        ("missing_masks", "empty_masks", "zero_one_masks", "duplicates", "clipped", "degenerate"),
        0,
    )
    try:
        with open(item.image, "rb") as fh:
            width, height = image_size(fh)
    except Exception as exc:  # noqa: BLE001 - any decoder error: a counted reject
        reject = {"reason": "unreadable", "detail": f"{item.image}: {exc}"}
        return _Result({}, [], reject, counts)
    if s.annotations == "masks":
        found = _mask_boxes(item, width, height, s.mask_threshold, counts)
        areas = [float(b[5]) for b in found]
        empty_detail = "every lesion mask is empty (DDR's known all-black masks)"
    else:
        voc = read_voc(item.xml, width, height)
        for key in ("duplicates", "clipped", "degenerate"):
            counts[key] += getattr(voc, key)
        if voc.size is not None and voc.size != (width, height):
            log.warning(
                "%s states %dx%d but %s is %dx%d; boxes are taken as the image's pixels",
                item.xml,
                *voc.size,
                item.image,
                width,
                height,
            )
        found = voc.boxes
        areas = [float(w * h) for *_, w, h in found]
        empty_detail = f"{item.xml.name} lists no lesion"
    if not found:
        return _Result({}, [], {"reason": "no_lesion", "detail": empty_detail}, counts)
    boxes = np.array([b[1:5] for b in found], dtype=np.float64).reshape(-1, 4)

    new_w, new_h = output_size(width, height, s.max_size)
    sx, sy = new_w / width, new_h / height
    dest = out_dir / f"{item.stem}.jpg"
    if (new_w, new_h) == (width, height) and item.image.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(item.image, dest)  # full size: the JPEG as released
    else:
        _write_resized(item.image, dest, new_w, new_h)
    scaled, grown = scale_boxes(boxes, sx, sy, new_w, new_h, s.min_box_size)
    counts["grown"] = grown
    annotations = [
        {
            "image_id": image_id,
            "category_id": int(category[0]),
            "bbox": [round(float(v), 3) for v in box],
            "area": round(area * sx * sy, 3),
            "iscrowd": 0,
        }
        for category, box, area in zip(found, scaled, areas)
    ]
    image = {
        "id": image_id,
        "file_name": dest.name,
        "width": new_w,
        "height": new_h,
        "orig_width": width,
        "orig_height": height,
        "ddr_name": item.image.name,
    }
    return _Result(image, annotations, None, counts)


def _split_summary(coco: dict, results: list[_Result]) -> dict:
    per_class = {}
    for category in CATEGORIES:
        anns = [a for a in coco["annotations"] if a["category_id"] == category["id"]]
        per_class[category["name"]] = {
            "images_with_boxes": len({a["image_id"] for a in anns}),
            "boxes": len(anns),
            "box_width": _size_stats([a["bbox"][2] for a in anns]),
            "box_height": _size_stats([a["bbox"][3] for a in anns]),
        }
    totals: dict[str, int] = {}
    for result in results:
        for key, value in result.counts.items():
            totals[key] = totals.get(key, 0) + value
    rejects: dict[str, int] = {}
    for result in results:
        if result.reject:
            rejects[result.reject["reason"]] = rejects.get(result.reject["reason"], 0) + 1
    return {
        "images_listed": len(results),
        "images": len(coco["images"]),
        "boxes": len(coco["annotations"]),
        "rejected": rejects,
        "duplicate_objects_removed": totals.get("duplicates", 0),
        "boxes_clipped": totals.get("clipped", 0),
        "boxes_degenerate": totals.get("degenerate", 0),
        "empty_masks": totals.get("empty_masks", 0),
        "missing_masks": totals.get("missing_masks", 0),
        "zero_one_masks": totals.get("zero_one_masks", 0),
        "grown_boxes": totals.get("grown", 0),
        "output_sizes": len({(im["width"], im["height"]) for im in coco["images"]}),
        "per_class": per_class,
    }


def build_ddr_coco(
    source_path: str | os.PathLike,
    coco_paths: dict[str, str | os.PathLike],
    images_dir: str | os.PathLike,
    summary_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    qc_path: str | os.PathLike | None = None,
    settings: DdrCocoSettings = DdrCocoSettings(),
    threads: int = 1,
) -> dict:
    """Validate DDR's lesion folders, extract the boxes and write one COCO file per split.

    ``coco_paths`` maps split (train, val, test; DDR's ``valid`` is val) to its json; the
    images go to ``images_dir/{split}/``. Images without any lesion (every mask empty, or
    a VOC file without objects) are left out and listed in ``rejects_path`` with the
    reason. Returns the summary (also written to ``summary_path``).
    """
    from lesioncl.progress import progress

    missing = set(SPLITS.values()) - set(coco_paths)
    if missing:
        raise ValueError(f"coco_paths lacks the split(s) {sorted(missing)}")
    root = find_root(source_path)
    layout, problems = scan_layout(root, settings.annotations)
    if problems:
        raise DdrLayoutError(
            f"DDR input {root}: {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n"
            + LAYOUT_HELP
        )
    images_dir = Path(images_dir)
    summary = {
        "source": str(source_path),
        "root": str(root),
        "annotations": settings.annotations,
        "mask_threshold": settings.mask_threshold,
        "max_size": settings.max_size,
        "min_box_size": settings.min_box_size,
        "categories": {c["id"]: c["name"] for c in CATEGORIES},
        "splits": {},
    }
    rejects = []
    for split, items in layout.items():
        out_dir = images_dir / split
        out_dir.mkdir(parents=True, exist_ok=True)

        def work(pair, out_dir: Path = out_dir) -> _Result:
            number, item = pair
            return _process(item, number, out_dir, settings)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            results = list(
                progress(
                    pool.map(work, enumerate(items, start=1)),
                    total=len(items),
                    desc=f"DDR {split}",
                    unit="img",
                )
            )
        coco = {
            "info": {
                "description": f"DDR lesion {split} ({settings.annotations} -> boxes)",
                "source": str(root),
            },
            "images": [r.image for r in results if r.reject is None],
            "annotations": [],
            "categories": CATEGORIES,
        }
        for item, result in zip(items, results):
            if result.reject is not None:
                rejects.append({"split": split, "image": item.image.name, **result.reject})
            for ann in result.annotations:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, **ann})
        write_json(coco_paths[split], coco)
        summary["splits"][split] = _split_summary(coco, results)
        part = summary["splits"][split]
        log.info(
            "%s: %d of %d images, %d boxes (%s); rejected %s; duplicates removed %d",
            split,
            part["images"],
            part["images_listed"],
            part["boxes"],
            ", ".join(f"{n} {c['boxes']}" for n, c in part["per_class"].items()),
            part["rejected"] or "none",
            part["duplicate_objects_removed"],
        )
    with atomic_path(rejects_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REJECT_COLUMNS)
        writer.writeheader()
        writer.writerows(rejects)
    summary["rejects"] = len(rejects)
    write_json(summary_path, summary)
    if qc_path is not None:
        draw_qc(coco_paths["train"], images_dir / "train", qc_path, settings.qc_images)
    return summary
