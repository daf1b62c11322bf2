"""The detector's lesion data from several sources (config ``detector.datasets``).

:func:`merge_coco` joins the sources' COCO splits into one training set and one test
set (rule ``detector_data``; used when ``detector.datasets`` is not IDRiD alone, whose
files the detector reads directly, so that a detector trained before this option
existed keeps its inputs). :func:`evaluate_sources` measures the published detector
on each source's own splits (rule ``detector_eval``: IDRiD test; DDR valid and test),
and :func:`sources_markdown` makes its table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from lesioncl.utils import atomic_path, write_json

log = logging.getLogger(__name__)

#: the lesion sources the detector can train on, in the order they are merged
SOURCES = ("idrid", "ddr")
#: the splits each source has (IDRiD's segmentation set: no validation split)
SOURCE_SPLITS = {"idrid": ("train", "test"), "ddr": ("train", "val", "test")}
LABELS = {"idrid": "IDRiD", "ddr": "DDR"}


def check_datasets(datasets: Sequence[str]) -> list[str]:
    """``detector.datasets`` as a list in :data:`SOURCES` order; errors name the key."""
    names = list(datasets)
    unknown = sorted(set(names) - set(SOURCES))
    if unknown or not names:
        raise ValueError(
            f"config: detector.datasets must be a non-empty subset of {list(SOURCES)}, got {names}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"config: detector.datasets names a source twice: {names}")
    return [s for s in SOURCES if s in names]


def source_files(results: str, sources: Sequence[str], splits: Sequence[str]) -> dict[str, str]:
    """The named inputs ``<source>_<split>`` (COCO json) and ``<source>_images`` of the
    detector's sources, for the splits each has (rules detector_data, detector_eval)."""
    files = {}
    for source in sources:
        for split in splits:
            if split in SOURCE_SPLITS[source]:
                files[f"{source}_{split}"] = f"{results}/{source}/coco_{split}.json"
        files[f"{source}_images"] = f"{results}/{source}/images"
    return files


def _link(src: Path, dest: Path) -> None:
    """A hard link (no copy of the images) where the file system allows, else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def merge_coco(
    sources: Mapping[str, Mapping[str, str | os.PathLike]],
    out: Mapping[str, str | os.PathLike],
    images_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Join the ``sources``' COCO files split by split.

    ``sources``: name -> {split: coco json, ..., "images": folder holding ``<split>/``}.
    ``out``: split -> merged json; the images are linked to
    ``images_dir/<split>/<source>/<file>``. Image and annotation ids are renumbered;
    each image keeps its ``source`` and original id (``source_id``). The categories
    must be the same in every source. Returns {split: {source: images}}.
    """
    images_dir = Path(images_dir)
    counts: dict[str, dict[str, int]] = {}
    for split, out_json in out.items():
        merged: dict[str, Any] = {
            "info": {"description": f"detector {split}: {', '.join(sources)}"},
            "images": [],
            "annotations": [],
            "categories": None,
        }
        counts[split] = {}
        for name, files in sources.items():
            if split not in files:
                continue
            coco = json.loads(Path(files[split]).read_text())
            if merged["categories"] is None:
                merged["categories"] = coco["categories"]
            elif coco["categories"] != merged["categories"]:
                raise ValueError(
                    f"{files[split]}: its categories differ from the other sources' "
                    f"({coco['categories']} against {merged['categories']}); rerun its rule"
                )
            folder = images_dir / split / name
            folder.mkdir(parents=True, exist_ok=True)
            ids = {}
            for im in coco["images"]:
                ids[im["id"]] = len(merged["images"]) + 1
                _link(Path(files["images"]) / split / im["file_name"], folder / im["file_name"])
                merged["images"].append(
                    {
                        **im,
                        "id": ids[im["id"]],
                        "file_name": f"{name}/{im['file_name']}",
                        "source": name,
                        "source_id": im["id"],
                    }
                )
            for ann in coco["annotations"]:
                merged["annotations"].append(
                    {**ann, "id": len(merged["annotations"]) + 1, "image_id": ids[ann["image_id"]]}
                )
            counts[split][name] = len(coco["images"])
        write_json(out_json, merged)
        log.info("%s: %s", split, ", ".join(f"{n} {k} images" for n, k in counts[split].items()))
    return counts


def evaluate_sources(
    config_path: str,
    weights_path: str,
    sets: Sequence[tuple[str, str, str, str]],
    *,
    device: str = "auto",
    workers: int = 0,
) -> dict[str, Any]:
    """COCO bbox metrics of the published detector on each (source, split, json, images
    folder); returns {source: {split: metrics}}."""
    from lesioncl.detector.metrics import evaluate_detector

    out: dict[str, Any] = {}
    for source, split, ann, images in sets:
        log.info("evaluating on %s %s (%s)", source, split, ann)
        metrics = evaluate_detector(
            config_path, weights_path, ann, images, device=device, workers=workers
        )
        out.setdefault(source, {})[split] = metrics
        log.info("%s %s: mAP %.4f, mAP@0.5 %.4f", source, split, metrics["mAP"], metrics["mAP_50"])
    return out


def sources_markdown(metrics: Mapping[str, Any], datasets: Sequence[str]) -> str:
    """The per-source table: mAP, mAP@0.5 and AP@0.5 per class on each split."""
    first = next((m for by_split in metrics.values() for m in by_split.values()), None)
    classes = list(first["per_class"]) if first else []

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = [
        f"Detector trained on: {', '.join(LABELS.get(d, d) for d in datasets)}",
        "",
        "| source | split | images | mAP | mAP@0.5 | "
        + " | ".join(f"AP@0.5 {c}" for c in classes)
        + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(classes),
    ]
    for source, by_split in metrics.items():
        for split, m in by_split.items():
            lines.append(
                f"| {LABELS.get(source, source)} | {split} | {m['test_images']} | "
                f"{cell(m['mAP'])} | {cell(m['mAP_50'])} | "
                + " | ".join(cell(m["per_class"][c]["AP_50"]) for c in classes)
                + " |"
            )
    return "\n".join(lines) + "\n"


def write_sources(metrics: Mapping[str, Any], datasets: Sequence[str], json_path, md_path) -> None:
    write_json(json_path, {"datasets": list(datasets), "sources": metrics})
    with atomic_path(md_path) as tmp:
        tmp.write_text(sources_markdown(metrics, datasets))
