"""The synthetic DDR-like lesion set (masks and Pascal VOC boxes), its QC overlay.

DDR (Li et al. 2019, github nkicsl/DDR-dataset) publishes its lesion images twice: with
pixel masks under ``lesion_segmentation`` and with boxes under ``lesion_detection``::

    lesion_segmentation/{train,valid,test}/image/<stem>.jpg
    lesion_segmentation/train/label/{EX,HE,MA,SE}/<stem>.tif
    lesion_segmentation/valid/segmentation label/{EX,HE,MA,SE}/<stem>.tif
    lesion_segmentation/test/label/{EX,HE,MA,SE}/<stem>.tif
    lesion_detection/{train,valid,test}/<stem>.xml

The images are drawn like the IDRiD-like ones (rich lesion counts, a grade from
``grade_distribution``, the ICDR rule checked), in frames of varying size and shape
(DDR's come from many cameras): the height is ``height`` x U(0.8, 1.2), rounded to an
even number, the frame an EyePACS-like one. Stems are DDR-like,
``<hospital>-<number>-100`` (``007-0012-100``: the hospital 1-147 drawn per image, the
number the image's position in the whole set, from 1), so unique over the set. Images
``1 .. n_train`` are ``train``, the next ``n_val`` ``val`` (DDR's ``valid``), then
``n_test`` ``test``.

Masks are single-channel uint8 TIFs (0 / 255), the exact pixels the lesion generator
drew: MA microaneurysms, HE haemorrhages and preretinal haemorrhages, EX hard
exudates, SE soft exudates (new vessels have no mask). Unlike IDRiD every image has
all four; a kind the image lacks is an all-black mask. Each VOC file lists one object
per 8-connected component of each mask (classes ``ex``, ``he``, ``ma``, ``se``, in
that order, components in raster order of their first pixel), its box 1-based and
inclusive (``xmin = x + 1``, ``xmax = x + w``).

DDR's quirks (``quirks: true``; the truth CSV's ``quirk`` column names them):

* ``duplicate_objects``: the first, fourth, seventh ... of the train images that have
  boxes (the blanked image aside) repeat one or two of their objects verbatim at the
  end of their VOC file, as some of DDR's train annotations do;
* ``blank_masks``: one train image, the first after the first two that has lesions,
  has four all-black masks while its VOC file lists its boxes (DDR's known issue of
  empty masks for images with visible lesions).

A set with too few train images with lesions (fewer than three train images, or a
``grade_distribution`` weighing grade 0) may lack a quirk; a warning says so.

Not a quirk but the layout, so always: the valid split's masks are in a folder named
``segmentation label`` (with a space), the others' in ``label``.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from lesioncl.idrid.boxes import mask_to_boxes
from lesioncl.synthetic.datasets import (
    _DAMAGE,
    _DDR,
    _PLAN,
    DDR_DETECTION,
    DDR_LABEL_FOLDERS,
    DDR_MASK_TYPES,
    DDR_SEGMENTATION,
    DDR_SPLITS,
    IDRID_JPEG_QUALITY,
    TRUTH_COLUMNS,
    _draw,
    _jpeg,
    _map,
    _rng,
    _Staging,
    _truth_row,
    _write_csv,
)
from lesioncl.synthetic.geometry import eyepacs_geometry
from lesioncl.synthetic.grading import DEFAULT_IDRID_GRADES, check_grade_distribution
from lesioncl.synthetic.idrid_set import mask_overlay_grid

log = logging.getLogger(__name__)

#: The truth CSV's columns: IDRiD's, then the masks with lesion pixels and the quirk.
DDR_TRUTH_COLUMNS = TRUTH_COLUMNS[:-1] + ["masks", "quirk"]
DUPLICATE_OBJECTS, BLANK_MASKS = "duplicate_objects", "blank_masks"
_HOSPITALS = 147  # DDR's images come from 147 hospitals


def ddr_stem(hospital: int, number: int) -> str:
    """DDR-like file stem of image ``number`` (1-based) from ``hospital``: 007-0012-100."""
    return f"{hospital:03d}-{number:04d}-100"


def ddr_paths(root: str | os.PathLike, split: str, stem: str) -> tuple[Path, dict[str, Path], Path]:
    """The image path, the four mask paths (EX, HE, MA, SE) and the VOC path of one
    image under ``root``; ``split`` is ``train``, ``val`` or ``test``."""
    if split not in DDR_SPLITS:
        raise ValueError(f"DDR split must be one of {list(DDR_SPLITS)}, got {split!r}")
    root = Path(root)
    seg = root / DDR_SEGMENTATION / DDR_SPLITS[split]
    image = seg / "image" / f"{stem}.jpg"
    masks = {code: seg / DDR_LABEL_FOLDERS[split] / code / f"{stem}.tif" for code in DDR_MASK_TYPES}
    return image, masks, root / DDR_DETECTION / DDR_SPLITS[split] / f"{stem}.xml"


def _plan_image(seed: int, number: int, height: int) -> tuple[str, int, int]:
    """Image ``number``'s eye, hospital and frame height, from its own plan stream."""
    rng = _rng(seed, _DDR, _PLAN, number)
    eye = "right" if rng.random() < 0.5 else "left"
    hospital = int(rng.integers(1, _HOSPITALS + 1))
    frame_h = 2 * round(height * rng.uniform(0.8, 1.2) / 2)
    return eye, hospital, frame_h


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(
        path, format="TIFF", compression="tiff_deflate"
    )


def _ddr_job(args) -> tuple[dict, list[tuple[str, int, int, int, int]]]:
    number, split, grade, seed, height, folder, texture, lesion_scale, small_vessels = args
    eye, hospital, frame_h = _plan_image(seed, number, height)
    rendered = _draw(
        seed,
        _DDR,
        number,
        grade,
        lambda rng: eyepacs_geometry(rng, frame_h, frame_h, eye),
        rich=True,
        texture=texture,
        lesion_scale=lesion_scale,
        small_vessels=small_vessels,
    )
    stem = ddr_stem(hospital, number)
    image_path, mask_paths, _ = ddr_paths(folder, split, stem)
    image_path.write_bytes(_jpeg(rendered.image, IDRID_JPEG_QUALITY))
    objects, present = [], []
    for code, (name, kinds) in DDR_MASK_TYPES.items():
        mask = rendered.lesion_mask(*kinds)
        _write_mask(mask_paths[code], mask)  # as in DDR: every image has all four
        for x, y, w, h, _ in mask_to_boxes(mask).tolist():
            objects.append((name, x + 1, y + 1, x + w, y + h))
        if mask.any():
            present.append(code)
    g = rendered.geometry
    row = _truth_row(stem, split, "", grade, rendered, g.width, g.height)
    row["masks"] = " ".join(present)
    row["quirk"] = ""
    return row, objects


def _voc_xml(split: str, stem: str, width: int, height: int, objects: Sequence[tuple]) -> bytes:
    """A Pascal VOC annotation of one image (LabelImg-like, no XML declaration)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = DDR_SPLITS[split]
    ET.SubElement(root, "filename").text = f"{stem}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for name, xmin, ymin, xmax, ymax in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space="\t")
    return (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class DdrSetSettings:
    """What decides the synthetic DDR-like lesion set (config ``synthetic.ddr``, with
    ``seed`` and ``synthetic.texture``)."""

    seed: int = 0  # the workflow's seed: every image is a function of it
    n_train: int = 36  # DDR's train split (images 1 ..)
    n_val: int = 12  # DDR's valid split, numbered on
    n_test: int = 18  # DDR's test split, numbered on
    height: int = 640  # the mean frame height in px (each image: x U(0.8, 1.2))
    grade_distribution: tuple[float, ...] = DEFAULT_IDRID_GRADES  # grades 0..4
    quirks: bool = True  # DDR's known quirks (module docstring)
    texture: bool = True  # fine per-image fundus texture
    lesion_scale: float = 1.0  # every lesion's size relative to the field of view
    small_vessels: int = 0  # thin vessel branches grown into the whole field of view

    def __post_init__(self) -> None:
        object.__setattr__(self, "grade_distribution", tuple(self.grade_distribution))
        check_grade_distribution(self.grade_distribution, "ddr.grade_distribution")
        if not _is_int(self.seed):
            raise ValueError(f"config: seed must be an integer, got {self.seed!r}")
        if not _is_int(self.height) or self.height < 128:
            raise ValueError(f"config: synthetic.ddr.height must be >= 128, got {self.height!r}")
        for key in ("n_train", "n_val", "n_test"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(
                    f"config: synthetic.ddr.{key} must be an integer >= 1, got {value!r}"
                )
        scale = self.lesion_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"config: synthetic.lesion_scale must be a number, got {scale!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"config: synthetic.lesion_scale must be > 0, got {scale!r}")
        vessels = self.small_vessels
        if not _is_int(vessels) or vessels < 0:
            raise ValueError(f"config: synthetic.small_vessels must be >= 0, got {vessels!r}")
        for key in ("quirks", "texture"):
            if not isinstance(getattr(self, key), bool):
                name = "synthetic.ddr.quirks" if key == "quirks" else "synthetic.texture"
                raise ValueError(
                    f"config: {name} must be true or false, got {getattr(self, key)!r}"
                )


def _choose_quirks(rows: list[dict], objects: list[list], seed: int) -> tuple[int | None, dict]:
    """The blanked image's index and, per duplicating image's index, the objects it repeats."""
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    blank = next((i for i in train[2:] if rows[i]["masks"]), None)
    boxed = [i for i in train if objects[i]]
    repeats = {}
    for j, i in enumerate(boxed):
        if j % 3 or i == blank:
            continue
        number = i + 1
        rng = _rng(seed, _DDR, _DAMAGE, number)
        k = min(len(objects[i]), int(rng.integers(1, 3)))
        picked = sorted(rng.choice(len(objects[i]), size=k, replace=False).tolist())
        repeats[i] = [objects[i][p] for p in picked]
    return blank, repeats


def generate_ddr_lesions(
    out_dir: str | os.PathLike,
    truth_csv: str | os.PathLike | None = None,
    qc_png: str | os.PathLike | None = None,
    *,
    settings: DdrSetSettings = DdrSetSettings(),
    workers: int = 1,
) -> dict:
    """Write a DDR-like lesion set (``lesion_segmentation``, ``lesion_detection``) under
    ``out_dir`` (replaced on success); returns a summary.

    ``truth_csv``: one row per image (:data:`DDR_TRUTH_COLUMNS`; ``masks``: the mask
    folders with lesion pixels as written). ``qc_png``: the first two train images
    beside themselves with their masks' outlines. The same settings give the same bytes.
    The summary counts the images per split, the grades, the boxes per class (the
    duplicates aside), the duplicated objects and the blanked images.
    """
    s = settings
    n = s.n_train + s.n_val + s.n_test
    p = check_grade_distribution(s.grade_distribution, "ddr.grade_distribution")
    grades = _rng(s.seed, _DDR, _PLAN).choice(5, size=n, p=p).tolist()
    splits = ["train"] * s.n_train + ["val"] * s.n_val + ["test"] * s.n_test
    out_dir = Path(out_dir)
    log.info(
        "drawing %d DDR-like lesion images (seed %d, ~%d px high, %d worker(s)) into %s",
        n,
        s.seed,
        s.height,
        workers,
        out_dir,
    )
    with _Staging(out_dir) as tmp:
        for split in DDR_SPLITS:
            image, masks, xml = ddr_paths(tmp, split, "x")
            for path in (image, *masks.values(), xml):
                path.parent.mkdir(parents=True, exist_ok=True)
        jobs = [
            (
                i + 1,
                splits[i],
                g,
                s.seed,
                s.height,
                str(tmp),
                s.texture,
                s.lesion_scale,
                s.small_vessels,
            )
            for i, g in enumerate(grades)
        ]
        results = list(_map(_ddr_job, jobs, workers, "synthetic DDR lesions"))
        rows = [row for row, _ in results]
        objects = [objs for _, objs in results]
        blank, repeats = _choose_quirks(rows, objects, s.seed) if s.quirks else (None, {})
        if s.quirks and (blank is None or not repeats):
            log.warning(
                "synthetic DDR: too few train images with lesions for every quirk "
                "(blanked image: %s, images with duplicated objects: %d)",
                "none" if blank is None else rows[blank]["image"],
                len(repeats),
            )
        for i, row in enumerate(rows):
            image_path, mask_paths, xml_path = ddr_paths(tmp, row["split"], row["image"])
            listed = objects[i] + repeats.get(i, [])
            if i in repeats:
                row["quirk"] = DUPLICATE_OBJECTS
            if i == blank:
                row["quirk"], row["masks"] = BLANK_MASKS, ""
                black = np.zeros((row["height"], row["width"]), bool)
                for path in mask_paths.values():
                    _write_mask(path, black)
            xml_path.write_bytes(
                _voc_xml(row["split"], row["image"], row["width"], row["height"], listed)
            )
        if qc_png is not None:
            ddr_qc_overlay(tmp, [r for r in rows if r["split"] == "train"][:2], qc_png)
    if truth_csv is not None:
        _write_csv(Path(truth_csv), DDR_TRUTH_COLUMNS, rows)
    summary = {
        "images": {split: splits.count(split) for split in DDR_SPLITS},
        "levels": np.bincount(grades, minlength=5).tolist(),
        "boxes": {
            name: sum(o[0] == name for objs in objects for o in objs)
            for name, _ in DDR_MASK_TYPES.values()
        },
        "duplicated_objects": sum(len(v) for v in repeats.values()),
        "blanked_images": int(blank is not None),
    }
    log.info("synthetic DDR lesions in %s: %s", out_dir, summary)
    return summary


def ddr_qc_overlay(
    root: str | os.PathLike, rows: Sequence[dict], png: str | os.PathLike, tile_h: int = 360
) -> None:
    """Each image beside itself with its masks' outlines (MA cyan, HE blue, EX green,
    SE magenta), read back from the written files."""
    tiles = []
    for row in rows:
        image_path, mask_paths, _ = ddr_paths(root, row["split"], row["image"])
        quirk = f"  ({row['quirk']})" if row.get("quirk") else ""
        label = f"{row['image']} grade {row['level']}  masks: {row['masks']}{quirk}"
        tiles.append((image_path, mask_paths, label))
    mask_overlay_grid(tiles, png, tile_h)
