"""DDR's lesion folders: find them, scan them, read the VOC files (every problem listed)."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lesioncl.ddr")

SEGMENTATION = "lesion_segmentation"
DETECTION = "lesion_detection"
#: DDR's split folders -> the workflow's split names
SPLITS = {"train": "train", "valid": "val", "test": "test"}
IMAGE_FOLDER = "image"
#: the masks' folder: ``label`` in train and test, ``segmentation label`` in valid
LABEL_FOLDERS = ("label", "segmentation label")
#: mask folder (DDR's code) and VOC class name -> our category id (lesioncl.idrid.CATEGORIES)
MASK_CODES = {"MA": 1, "HE": 2, "EX": 3, "SE": 4}
VOC_CLASSES = {"ma": 1, "he": 2, "ex": 3, "se": 4}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".tif", ".tiff", ".png")
ANNOTATIONS = ("masks", "voc")

LAYOUT_HELP = f"""DDR's lesion data, as in its release (the chunks joined with
`cat DDR-dataset.zip.0* > DDR-dataset.zip` and unzipped):
  <ddr.path>/{SEGMENTATION}/{{train,valid,test}}/{IMAGE_FOLDER}/<name>.jpg
  <ddr.path>/{SEGMENTATION}/{{train,test}}/label/{{EX,HE,MA,SE}}/<name>.tif
  <ddr.path>/{SEGMENTATION}/valid/segmentation label/{{EX,HE,MA,SE}}/<name>.tif
  <ddr.path>/{DETECTION}/{{train,valid,test}}/<name>.xml   (ddr.annotations: voc)
ddr.path may also be the '{SEGMENTATION}' folder itself (masks only)."""


class DdrLayoutError(ValueError):
    """The DDR input does not have DDR's layout (the message lists every problem)."""


@dataclass
class DdrImage:
    split: str  # train | val | test (DDR's "valid" is val)
    stem: str
    image: Path
    masks: dict[str, Path] = field(default_factory=dict)  # mask code -> file
    xml: Path | None = None


def find_root(path: str | os.PathLike) -> Path:
    """The DDR root (holding ``lesion_segmentation``) for ``ddr.path``: the root itself,
    ``DDR-dataset`` one level down, or the ``lesion_segmentation`` folder."""
    path = Path(path)
    if not path.exists():
        raise DdrLayoutError(
            f"{path}: DDR input not found. Fix: set ddr.path to the unzipped DDR-dataset "
            f"folder (or ddr.source: synthetic).\n{LAYOUT_HELP}"
        )
    if path.is_file():
        raise DdrLayoutError(
            f"{path}: a file; ddr.path must be the unzipped folder. Fix: join the chunks "
            "(`cat DDR-dataset.zip.0* > DDR-dataset.zip`), unzip, and point ddr.path at the "
            f"folder.\n{LAYOUT_HELP}"
        )
    if path.name == SEGMENTATION:
        return path.parent
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        if (candidate / SEGMENTATION).is_dir():
            return candidate
    raise DdrLayoutError(
        f"{path}: no '{SEGMENTATION}' folder here or one level down.\n{LAYOUT_HELP}"
    )


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file for the files of ``folder`` with one of ``suffixes`` (any case)."""
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    }


def scan_layout(
    root: Path, annotations: str = "masks"
) -> tuple[dict[str, list[DdrImage]], list[str]]:
    """The images of each split with their masks (``masks``) or VOC file (``voc``);
    returns (images per split, problems)."""
    if annotations not in ANNOTATIONS:
        raise ValueError(
            f"config: ddr.annotations must be one of {ANNOTATIONS}, got {annotations!r}"
        )
    problems: list[str] = []
    layout: dict[str, list[DdrImage]] = {}
    for ddr_split, split in SPLITS.items():
        seg = root / SEGMENTATION / ddr_split
        image_dir = seg / IMAGE_FOLDER
        if not image_dir.is_dir():
            problems.append(f"missing folder {image_dir}")
            continue
        images = _files(image_dir, IMAGE_SUFFIXES)
        if not images:
            problems.append(f"no images in {image_dir}")
        items = {stem: DdrImage(split, stem, p) for stem, p in images.items()}
        if annotations == "masks":
            labels = [seg / name for name in LABEL_FOLDERS if (seg / name).is_dir()]
            if not labels:
                problems.append(
                    f"missing folder {seg / LABEL_FOLDERS[0]} (or '{LABEL_FOLDERS[1]}')"
                )
            elif len(labels) > 1:
                problems.append(
                    f"two mask folders in {seg}: {labels[0].name!r} and "
                    f"{labels[1].name!r}; keep one"
                )
            else:
                problems += _scan_masks(labels[0], items)
        else:
            det = root / DETECTION / ddr_split
            if not det.is_dir():
                problems.append(f"missing folder {det} (ddr.annotations: voc)")
                continue
            xmls = _files(det, (".xml",))
            if not xmls:
                problems.append(f"no .xml files in {det}")
            beside = _files(det, IMAGE_SUFFIXES)
            for stem, xml in xmls.items():
                if stem not in items and stem in beside:
                    items[stem] = DdrImage(split, stem, beside[stem])
                if stem not in items:
                    problems.append(
                        f"annotation without image: {xml} has no {image_dir / stem}.jpg"
                    )
                    continue
                items[stem].xml = xml
            unannotated = sorted(s for s, it in items.items() if it.xml is None)
            if unannotated:
                log.info(
                    "%s: %d image(s) without a VOC file (not used): %s",
                    image_dir,
                    len(unannotated),
                    ", ".join(unannotated[:5]) + (" ..." if len(unannotated) > 5 else ""),
                )
            items = {s: it for s, it in items.items() if it.xml is not None}
        layout[split] = [items[s] for s in sorted(items)]
    return layout, problems


def _scan_masks(label_dir: Path, items: dict[str, DdrImage]) -> list[str]:
    problems = []
    folders = {p.name.upper(): p for p in label_dir.iterdir() if p.is_dir()}
    for name, folder in sorted(folders.items()):
        if name not in MASK_CODES:
            problems.append(
                f"unknown lesion class folder {folder} (expected {', '.join(MASK_CODES)})"
            )
    for code in MASK_CODES:
        folder = folders.get(code)
        if folder is None:
            log.warning("%s: no %s folder; no image has a %s mask", label_dir, code, code)
            continue
        for stem, path in _files(folder, MASK_SUFFIXES).items():
            if stem not in items:
                problems.append(f"mask without image: {path} (no image named {stem})")
                continue
            items[stem].masks[code] = path
    return problems


@dataclass
class VocBoxes:
    boxes: list[tuple[int, float, float, float, float]]  # (category, x, y, w, h), COCO pixels
    duplicates: int = 0
    clipped: int = 0
    degenerate: int = 0
    size: tuple[int, int] | None = None  # (width, height) the file states


def read_voc(xml: Path, width: int, height: int) -> VocBoxes:
    """The boxes of one VOC file in COCO pixels, duplicates removed and counted.

    VOC corners are 1-based and inclusive (x = xmin - 1, w = xmax - xmin + 1); boxes are
    clipped to the ``width`` x ``height`` image. An unknown class name, a missing
    coordinate or an unreadable file raise :class:`DdrLayoutError` naming the file.
    """
    try:
        tree = ET.parse(xml)
    except (ET.ParseError, OSError) as exc:
        raise DdrLayoutError(f"{xml}: not a readable VOC XML file ({exc})") from exc
    root = tree.getroot()
    out = VocBoxes([])
    size = root.find("size")
    if size is not None:
        try:
            out.size = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
        except (TypeError, ValueError):
            out.size = None
    seen = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in VOC_CLASSES:
            raise DdrLayoutError(
                f"{xml}: unknown lesion class {name!r} (DDR's classes: "
                f"{', '.join(VOC_CLASSES)}). Fix: correct or remove the object."
            )
        box = obj.find("bndbox")
        try:
            x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError) as exc:
            raise DdrLayoutError(
                f"{xml}: an object '{name}' without numeric xmin/ymin/xmax/ymax"
            ) from exc
        key = (name, x1, y1, x2, y2)
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        left, top = max(0.0, x1 - 1), max(0.0, y1 - 1)
        right, bottom = min(float(width), x2), min(float(height), y2)
        if (left, top, right, bottom) != (x1 - 1, y1 - 1, x2, y2):
            out.clipped += 1
        if right <= left or bottom <= top:
            out.degenerate += 1
            continue
        out.boxes.append((VOC_CLASSES[name], left, top, right - left, bottom - top))
    return out
