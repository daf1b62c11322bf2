"""The synthetic IDRiD-like "A. Segmentation" set with its lesion masks, its QC overlay.

Rule synthetic_idrid.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from lesioncl.synthetic.datasets import (
    _IDRID,
    _PLAN,
    IDRID_IMAGES,
    IDRID_JPEG_QUALITY,
    IDRID_MASK_TYPES,
    IDRID_MASKS,
    IDRID_ROOT,
    IDRID_SETS,
    TRUTH_COLUMNS,
    _draw,
    _jpeg,
    _map,
    _rng,
    _Staging,
    _truth_row,
    _write_csv,
)
from lesioncl.synthetic.eyepacs_set import _label
from lesioncl.synthetic.geometry import idrid_geometry
from lesioncl.synthetic.grading import (
    DEFAULT_IDRID_GRADES,
    check_grade_distribution,
)
from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- IDRiD


def idrid_name(number: int) -> str:
    """IDRiD file stem of image ``number`` (1-based): IDRiD_01 ... IDRiD_81."""
    return f"IDRiD_{number:02d}"


def idrid_paths(root: str | os.PathLike, split: str, number: int) -> tuple[Path, dict[str, Path]]:
    """The image path and the five mask paths of one IDRiD image under ``root``."""
    root = Path(root) / IDRID_ROOT
    name = idrid_name(number)
    image = root / IDRID_IMAGES / IDRID_SETS[split] / f"{name}.jpg"
    masks = {
        code: root / IDRID_MASKS / IDRID_SETS[split] / folder / f"{name}_{code}.tif"
        for code, (folder, _) in IDRID_MASK_TYPES.items()
    }
    return image, masks


def _idrid_job(args) -> dict:
    number, split, grade, seed, height, folder, texture, lesion_scale, small_vessels = args
    eye = "right" if _rng(seed, _IDRID, _PLAN, number).random() < 0.5 else "left"
    rendered = _draw(
        seed,
        _IDRID,
        number,
        grade,
        lambda rng: idrid_geometry(rng, height, eye),
        rich=True,
        texture=texture,
        lesion_scale=lesion_scale,
        small_vessels=small_vessels,
    )
    image_path, mask_paths = idrid_paths(folder, split, number)
    image_path.write_bytes(_jpeg(rendered.image, IDRID_JPEG_QUALITY))
    written = []
    for code, (_, kinds) in IDRID_MASK_TYPES.items():
        mask = rendered.disc_mask if code == "OD" else rendered.lesion_mask(*kinds)
        if not mask.any():  # as in IDRiD: no file for a lesion type the image lacks
            continue
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            mask_paths[code], format="TIFF", compression="tiff_deflate"
        )
        written.append(code)
    g = rendered.geometry
    row = _truth_row(idrid_name(number), split, "", grade, rendered, g.width, g.height)
    row["masks"] = " ".join(written)
    return row


@dataclass(frozen=True)
class IdridSetSettings:
    """What decides the synthetic IDRiD-like set (config ``synthetic.idrid``, with ``seed``
    and ``synthetic.texture``; defaults: the schema's). Rule ``synthetic_idrid`` fills it
    from ``params.settings``."""

    seed: int = 0  # the workflow's seed: every image is a function of it
    n_train: int = 40  # the training set (IDRiD_01 ..)
    n_test: int = 16  # the testing set, numbered on
    height: int = 640  # image height in px
    grade_distribution: tuple[float, ...] = DEFAULT_IDRID_GRADES  # grades 0..4
    texture: bool = True  # fine per-image fundus texture
    lesion_scale: float = 1.0  # every lesion's size relative to the field of view
    small_vessels: int = 0  # thin vessel branches grown into the whole field of view

    def __post_init__(self) -> None:
        object.__setattr__(self, "grade_distribution", tuple(self.grade_distribution))


def generate_idrid(
    out_dir: str | os.PathLike,
    truth_csv: str | os.PathLike | None = None,
    qc_png: str | os.PathLike | None = None,
    *,
    settings: IdridSetSettings = IdridSetSettings(),
    workers: int = 1,
) -> dict:
    """Write an IDRiD-like "A. Segmentation" set under ``out_dir``.

    Images ``IDRiD_01 .. IDRiD_{n_train}`` are the training set and the testing set
    continues the numbering (as IDRiD's 01-54 and 55-81). Masks are single-channel
    uint8 TIFs (0 / 255), the exact pixels the lesion generator drew; new vessels
    have no mask (IDRiD has none) and preretinal haemorrhages go into HE.
    """
    seed, height, texture = settings.seed, settings.height, settings.texture
    n_train, n_test = settings.n_train, settings.n_test
    grade_distribution = settings.grade_distribution
    if height < 128:
        raise ValueError(f"config: synthetic.idrid.height must be >= 128, got {height}")
    if n_train < 1 or n_test < 1:
        raise ValueError(
            f"config: synthetic.idrid needs n_train, n_test >= 1, got {n_train}, {n_test}"
        )
    p = check_grade_distribution(grade_distribution, "idrid.grade_distribution")
    rng = _rng(seed, _IDRID, _PLAN)
    grades = rng.choice(5, size=n_train + n_test, p=p).tolist()
    out_dir = Path(out_dir)
    log.info(
        "drawing %d IDRiD-like images (seed %d, %d px high, %d worker(s)) into %s",
        len(grades),
        seed,
        height,
        workers,
        out_dir,
    )
    rows = []
    with _Staging(out_dir) as tmp:
        for split in IDRID_SETS:
            _, masks = idrid_paths(tmp, split, 1)
            (tmp / IDRID_ROOT / IDRID_IMAGES / IDRID_SETS[split]).mkdir(parents=True)
            for path in masks.values():
                path.parent.mkdir(parents=True)
        jobs = [
            (
                i + 1,
                "train" if i < n_train else "test",
                g,
                seed,
                height,
                str(tmp),
                texture,
                settings.lesion_scale,
                settings.small_vessels,
            )
            for i, g in enumerate(grades)
        ]
        rows = list(_map(_idrid_job, jobs, workers, "synthetic IDRiD"))
        if qc_png is not None:
            idrid_qc_overlay(tmp, [r for r in rows if r["split"] == "train"][:2], qc_png)
    if truth_csv is not None:
        _write_csv(Path(truth_csv), TRUTH_COLUMNS[:-1] + ["masks"], rows)
    summary = {
        "images": len(rows),
        "levels": np.bincount(grades, minlength=5).tolist(),
        "masks": {code: sum(code in r["masks"].split() for r in rows) for code in IDRID_MASK_TYPES},
    }
    log.info("synthetic IDRiD in %s: %s", out_dir, summary)
    return summary


_OVERLAY_COLOURS = {
    "MA": (0, 255, 255),
    "HE": (0, 90, 255),
    "EX": (60, 255, 60),
    "SE": (255, 0, 255),
    "OD": (255, 255, 255),
}


def idrid_qc_overlay(
    root: str | os.PathLike, rows: Sequence[dict], png: str | os.PathLike, tile_h: int = 360
) -> None:
    """Each image beside itself with its masks' outlines (MA cyan, HE blue, EX green,
    SE magenta, OD white), read back from the written files."""
    tiles = []
    for row in rows:
        number = int(row["image"].split("_")[1])
        image_path, mask_paths = idrid_paths(root, row["split"], number)
        label = f"{row['image']} grade {row['level']}  masks: {row['masks']}"
        tiles.append((image_path, mask_paths, label))
    mask_overlay_grid(tiles, png, tile_h)


def mask_overlay_grid(
    tiles: Sequence[tuple[Path, dict[str, Path], str]], png: str | os.PathLike, tile_h: int = 360
) -> None:
    """One row per (image, {mask code: mask file}, label): the image beside itself with the
    outlines of the masks that exist (:data:`_OVERLAY_COLOURS`), ``tile_h`` px high."""
    rows = []
    for image_path, mask_paths, label in tiles:
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        overlay = image.copy()
        for code, path in mask_paths.items():
            if path.exists():
                with Image.open(path) as m:
                    mask = (np.asarray(m) > 0).astype(np.uint8)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(
                    overlay, contours, -1, _OVERLAY_COLOURS[code], max(1, image.shape[0] // 400)
                )
        pair = np.concatenate([image, overlay], axis=1)
        scale = tile_h / pair.shape[0]
        pair = cv2.resize(
            pair, (round(pair.shape[1] * scale), tile_h), interpolation=cv2.INTER_AREA
        )
        _label(pair, label)
        rows.append(pair)
    width = max(t.shape[1] for t in rows)
    grid = np.concatenate(
        [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in rows], axis=0
    )
    with atomic_path(png) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
