"""IDRiD -> COCO detection json + (resized) images, with a summary (rule idrid_coco)."""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from lesioncl.idrid.boxes import (
    binarise,
    mask_to_boxes,
    output_size,
    read_mask_values,
    scale_boxes,
)
from lesioncl.idrid.layout import IdridImage, load_layout
from lesioncl.idrid.qc import draw_qc
from lesioncl.idrid.sources import (
    CATEGORIES,
    LESIONS,
    SPLITS,
    IdridLayoutError,
    IdridSource,
    open_idrid_source,
)
from lesioncl.utils import write_json

log = logging.getLogger("lesioncl.idrid")


# --------------------------------------------------------------------------- COCO
@dataclass(frozen=True)
class CocoSettings:
    """What decides the COCO files and images (config ``idrid``; defaults: the schema's).

    Rule ``idrid_coco`` fills it from ``params.settings``.
    """

    mask_threshold: float = 1  # a mask pixel is lesion when its channel maximum is above this
    max_size: int | None = None  # longest side of the written images (None: full size)
    min_box_size: float = 1  # scaled boxes below this (output px) grow around their centre
    qc_images: int = 4  # training images drawn in the QC picture


@dataclass
class _ImageResult:
    image: dict
    annotations: list[dict]
    zero_one_masks: list[str]
    empty_masks: list[str]
    grown: int


def _process_image(
    source: IdridSource,
    item: IdridImage,
    out_dir: Path,
    threshold: float,
    max_size: int | None,
    min_box_size: float,
) -> _ImageResult:
    from PIL import Image

    new_w, new_h = output_size(item.width, item.height, max_size)
    sx, sy = new_w / item.width, new_h / item.height
    file_name = PurePosixPath(item.image).name
    dest = out_dir / file_name
    if (new_w, new_h) == (item.width, item.height):
        source.copy_to(item.image, dest)
    else:
        with Image.open(io.BytesIO(source.read_bytes(item.image))) as img:
            img.draft("RGB", (new_w, new_h))  # fast JPEG DCT downscale, still >= target
            img = img.convert("RGB").resize((new_w, new_h), Image.Resampling.LANCZOS)
            img.save(dest, format="JPEG", quality=95, subsampling=0)

    annotations, zero_one, empty, grown_total = [], [], [], 0
    for lesion in LESIONS:
        rel = item.masks.get(lesion.code)
        if rel is None:
            continue
        values = read_mask_values(source.read_bytes(rel))
        if values.shape != (item.height, item.width):
            raise IdridLayoutError(
                f"{source.display(rel)}: decoded mask is {values.shape[1]}x{values.shape[0]} "
                f"but its image is {item.width}x{item.height}. Fix: replace the mask with "
                "the official file."
            )
        mask, was_zero_one = binarise(values, threshold)
        if was_zero_one:
            log.info("%s: 0/1 mask, treating 1 as lesion", source.display(rel))
            zero_one.append(rel)
        stats = mask_to_boxes(mask)
        if len(stats) == 0:
            level = logging.WARNING if values.max() > 0 else logging.INFO
            log.log(
                level,
                "%s: no lesion pixel above %s (max value %s)",
                source.display(rel),
                threshold,
                values.max(),
            )
            empty.append(rel)
            continue
        boxes, grown = scale_boxes(stats[:, :4], sx, sy, new_w, new_h, min_box_size)
        grown_total += grown
        for box, area in zip(boxes, stats[:, 4]):
            annotations.append(
                {
                    "image_id": item.number,
                    "category_id": lesion.category_id,
                    "bbox": [round(float(v), 3) for v in box],
                    "area": round(float(area) * sx * sy, 3),
                    "iscrowd": 0,
                }
            )
    image = {
        "id": item.number,
        "file_name": file_name,
        "width": new_w,
        "height": new_h,
        "orig_width": item.width,
        "orig_height": item.height,
    }
    return _ImageResult(image, annotations, zero_one, empty, grown_total)


def _size_stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": int(arr.size),
        "min": float(arr.min()),
        "p10": float(np.percentile(arr, 10)),
        "median": float(np.median(arr)),
        "mean": round(float(arr.mean()), 3),
        "p90": float(np.percentile(arr, 90)),
        "max": float(arr.max()),
    }


def _split_summary(items: list[IdridImage], coco: dict, results: list[_ImageResult]) -> dict:
    per_class = {}
    for lesion in LESIONS:
        anns = [a for a in coco["annotations"] if a["category_id"] == lesion.category_id]
        per_class[lesion.name] = {
            "masks": sum(lesion.code in it.masks for it in items),
            "images_with_boxes": len({a["image_id"] for a in anns}),
            "boxes": len(anns),
            "box_width": _size_stats([a["bbox"][2] for a in anns]),
            "box_height": _size_stats([a["bbox"][3] for a in anns]),
            "area": _size_stats([a["area"] for a in anns]),
        }
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    return {
        "images": len(coco["images"]),
        "boxes": len(coco["annotations"]),
        "images_without_boxes": sorted(
            im["file_name"] for im in coco["images"] if im["id"] not in with_boxes
        ),
        "original_sizes": sorted({f"{it.width}x{it.height}" for it in items}),
        "output_sizes": sorted({f"{im['width']}x{im['height']}" for im in coco["images"]}),
        "per_class": per_class,
        "zero_one_masks": sorted(m for r in results for m in r.zero_one_masks),
        "empty_masks": sorted(m for r in results for m in r.empty_masks),
        "grown_boxes": sum(r.grown for r in results),
    }


def build_idrid_coco(
    source_path: str | os.PathLike,
    coco_paths: dict[str, str | os.PathLike],
    images_dir: str | os.PathLike,
    summary_path: str | os.PathLike,
    qc_path: str | os.PathLike | None = None,
    settings: CocoSettings = CocoSettings(),
    threads: int = 1,
) -> dict:
    """Validate the IDRiD input, extract the boxes and write the COCO files.

    ``coco_paths`` maps split ("train", "test") to its json; the images go to
    ``images_dir/{split}/`` (``file_name`` is relative to that folder). Returns the
    summary (also written to ``summary_path``).
    """
    from lesioncl.progress import progress

    mask_threshold, max_size = settings.mask_threshold, settings.max_size
    min_box_size = settings.min_box_size
    missing = set(SPLITS) - set(coco_paths)
    if missing:
        raise ValueError(f"coco_paths lacks the split(s) {sorted(missing)}")
    images_dir = Path(images_dir)
    summary = {
        "source": str(source_path),
        "mask_threshold": mask_threshold,
        "max_size": max_size,
        "min_box_size": min_box_size,
        "categories": {c["id"]: c["name"] for c in CATEGORIES},
        "splits": {},
    }
    with open_idrid_source(source_path) as source:
        log.info("reading IDRiD from %s", source.description)
        layout = load_layout(source)
        summary["layout_root"] = source.description
        for split, items in layout.items():
            out_dir = images_dir / split
            out_dir.mkdir(parents=True, exist_ok=True)
            log.info("%s: %d images", split, len(items))

            def work(item: IdridImage, out_dir: Path = out_dir) -> _ImageResult:
                return _process_image(source, item, out_dir, mask_threshold, max_size, min_box_size)

            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                results = list(
                    progress(
                        pool.map(work, items),
                        total=len(items),
                        desc=f"IDRiD {split}",
                        unit="img",
                    )
                )
            coco = {
                "info": {
                    "description": f"IDRiD segmentation {SPLITS[split]}: lesion boxes from the "
                    "masks (one per 8-connected component)",
                    "source": source.description,
                },
                "images": [r.image for r in results],
                "annotations": [],
                "categories": CATEGORIES,
            }
            for result in results:
                for ann in result.annotations:
                    coco["annotations"].append({"id": len(coco["annotations"]) + 1, **ann})
            write_json(coco_paths[split], coco)
            summary["splits"][split] = _split_summary(items, coco, results)
            log.info(
                "%s: %d images, %d boxes (%s)",
                split,
                len(coco["images"]),
                len(coco["annotations"]),
                ", ".join(
                    f"{name} {c['boxes']}"
                    for name, c in summary["splits"][split]["per_class"].items()
                ),
            )
    write_json(summary_path, summary)
    if qc_path is not None:
        draw_qc(coco_paths["train"], images_dir / "train", qc_path, settings.qc_images)
    return summary
