"""The synthetic EyePACS-like raw set in the Kaggle layout, its truth tables, its QC grid.

Rule synthetic_eyepacs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from lesioncl.synthetic.datasets import (
    _DAMAGE,
    _EYEPACS,
    _LOOK,
    _PLAN,
    BAD_KINDS,
    EYEPACS_JPEG_QUALITY,
    LESION_COLUMNS,
    TRUTH_COLUMNS,
    _draw,
    _jpeg,
    _lesion_rows,
    _map,
    _rng,
    _Staging,
    _truth_row,
    _write_csv,
)
from lesioncl.synthetic.geometry import eyepacs_geometry
from lesioncl.synthetic.grading import (
    DEFAULT_EYEPACS_GRADES,
    HAEMORRHAGE,
    HARD_EXUDATE,
    LESION_KINDS,
    MICROANEURYSM,
    PRERETINAL_HAEMORRHAGE,
    SOFT_EXUDATE,
    check_grade_distribution,
)
from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- EyePACS


@dataclass(frozen=True)
class EyepacsRecord:
    """One planned EyePACS image."""

    number: int
    image: str  # file stem, e.g. "10_left"
    split: str  # train | test
    patient_id: int
    eye: str  # left | right
    level: int
    usage: str  # Public | Private for test images, "" for train
    bad: str = ""  # one of BAD_KINDS, or ""


def plan_eyepacs(
    seed: int,
    n_train: int,
    n_test: int,
    grade_distribution: Sequence[float] = DEFAULT_EYEPACS_GRADES,
    public_fraction: float = 0.4,
    bad_files: bool = True,
) -> list[EyepacsRecord]:
    """Patients, eyes, grades, Usage and broken files of an EyePACS-like set.

    Every patient has both eyes, in the same split; ids are unique across train and
    test. The two eyes' grades are correlated (the second eye copies the first one
    half of the time) without changing the grade distribution. Usage is drawn per
    test patient: ``public_fraction`` of them Public, the rest Private.
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if n < 2 or n % 2:
            raise ValueError(
                f"config: synthetic.eyepacs.{name} must be an even number >= 2 "
                f"(each patient has both eyes), got {n}"
            )
    if not 0 <= public_fraction <= 1:
        raise ValueError(
            f"config: synthetic.eyepacs.public_fraction must be in [0, 1], got {public_fraction}"
        )
    if bad_files and n_train < 2 * len(BAD_KINDS):
        raise ValueError(
            f"config: synthetic.eyepacs.bad_files needs n_train >= {2 * len(BAD_KINDS)} "
            f"(got {n_train}); raise n_train or set bad_files: false"
        )
    p = check_grade_distribution(grade_distribution, "eyepacs.grade_distribution")
    rng = _rng(seed, _EYEPACS, _PLAN)
    n_tr, n_te = n_train // 2, n_test // 2
    ids = rng.choice(np.arange(1, 8 * (n_tr + n_te) + 20), size=n_tr + n_te, replace=False)
    train_ids, test_ids = np.sort(ids[:n_tr]), np.sort(ids[n_tr:])
    n_public = round(public_fraction * n_te)
    if n_te >= 2 and 0 < public_fraction < 1:
        n_public = min(max(n_public, 1), n_te - 1)
    public = set(rng.permutation(test_ids)[:n_public].tolist())

    records: list[EyepacsRecord] = []
    for split, pids in (("train", train_ids), ("test", test_ids)):
        for pid in pids.tolist():
            first = int(rng.choice(5, p=p))
            second = first if rng.random() < 0.5 else int(rng.choice(5, p=p))
            usage = "" if split == "train" else ("Public" if pid in public else "Private")
            for eye, level in (("left", first), ("right", second)):
                records.append(
                    EyepacsRecord(len(records), f"{pid}_{eye}", split, pid, eye, level, usage)
                )
    if bad_files:
        picks = rng.choice(n_train, size=len(BAD_KINDS), replace=False)
        for kind, i in zip(BAD_KINDS, sorted(picks.tolist())):
            r = records[i]
            records[i] = EyepacsRecord(
                r.number, r.image, r.split, r.patient_id, r.eye, r.level, r.usage, kind
            )
    return records


def _eyepacs_job(args) -> tuple[dict, list[dict]]:
    record, seed, min_height, max_height, folder, texture, lesion_scale, small_vessels = args
    record = EyepacsRecord(**record)
    path = Path(folder) / record.split / f"{record.image}.jpeg"
    geom_fn = lambda rng: eyepacs_geometry(rng, min_height, max_height, record.eye)  # noqa: E731
    if record.bad in ("zero_bytes", "all_black"):
        geom = geom_fn(_rng(seed, _EYEPACS, _LOOK, record.number))
        data = (
            b""
            if record.bad == "zero_bytes"
            else _jpeg(np.zeros((geom.height, geom.width, 3), np.uint8), EYEPACS_JPEG_QUALITY)
        )
        path.write_bytes(data)
        return _truth_row(
            record.image,
            record.split,
            record.usage,
            record.level,
            None,
            geom.width,
            geom.height,
            record.bad,
        ), []
    rendered = _draw(
        seed,
        _EYEPACS,
        record.number,
        record.level,
        geom_fn,
        rich=False,
        texture=texture,
        lesion_scale=lesion_scale,
        small_vessels=small_vessels,
    )
    data = _jpeg(rendered.image, EYEPACS_JPEG_QUALITY)
    if record.bad == "truncated_jpeg":
        keep = _rng(seed, _EYEPACS, _DAMAGE, record.number).uniform(0.4, 0.7)
        data = data[: int(len(data) * keep)]
    path.write_bytes(data)
    g = rendered.geometry
    return (
        _truth_row(
            record.image,
            record.split,
            record.usage,
            record.level,
            rendered,
            g.width,
            g.height,
            record.bad,
        ),
        _lesion_rows(record.image, rendered),
    )


@dataclass(frozen=True)
class EyepacsSetSettings:
    """What decides the synthetic EyePACS-like set (config ``synthetic.eyepacs``, with
    ``seed`` and ``synthetic.texture``; defaults: the schema's). Rule
    ``synthetic_eyepacs`` fills it from ``params.settings``."""

    seed: int = 0  # the workflow's seed: every image is a function of it
    n_train: int = 240  # images in train/ (even: every patient has both eyes)
    n_test: int = 160  # images in test/ (Public: validation, Private: test)
    min_height: int = 360  # image heights are drawn in [min_height, max_height]
    max_height: int = 560
    bad_files: bool = True  # add a truncated JPEG, an all-black image and a zero-byte file
    grade_distribution: tuple[float, ...] = DEFAULT_EYEPACS_GRADES  # grades 0..4
    public_fraction: float = 0.4  # test patients with Usage=Public
    texture: bool = True  # fine per-image fundus texture
    lesion_scale: float = 1.0  # every lesion's size relative to the field of view
    small_vessels: int = 0  # thin vessel branches grown into the whole field of view

    def __post_init__(self) -> None:
        object.__setattr__(self, "grade_distribution", tuple(self.grade_distribution))


def generate_eyepacs(
    out_dir: str | os.PathLike,
    truth_csv: str | os.PathLike,
    lesions_csv: str | os.PathLike | None = None,
    qc_png: str | os.PathLike | None = None,
    *,
    settings: EyepacsSetSettings = EyepacsSetSettings(),
    workers: int = 1,
) -> dict:
    """Write an EyePACS-like raw set in the Kaggle layout.

    ``out_dir`` gets ``train/*.jpeg``, ``trainLabels.csv`` (image,level),
    ``test/*.jpeg`` and ``retinopathy_solution.csv`` (image,level,Usage).
    ``truth_csv`` lists every image with its drawn lesion counts (QC);
    ``lesions_csv`` every drawn lesion's box in raw-image pixels; ``qc_png`` a grid
    of examples per grade. Returns a summary.
    """
    seed, n_train, n_test = settings.seed, settings.n_train, settings.n_test
    min_height, max_height = settings.min_height, settings.max_height
    grade_distribution, public_fraction = settings.grade_distribution, settings.public_fraction
    bad_files, texture = settings.bad_files, settings.texture
    if not 128 <= min_height <= max_height:
        raise ValueError(
            f"config: synthetic.eyepacs needs 128 <= min_height <= max_height, "
            f"got {min_height}, {max_height}"
        )
    records = plan_eyepacs(seed, n_train, n_test, grade_distribution, public_fraction, bad_files)
    out_dir = Path(out_dir)
    log.info(
        "drawing %d EyePACS-like images (seed %d, heights %d-%d, %d worker(s)) into %s",
        len(records),
        seed,
        min_height,
        max_height,
        workers,
        out_dir,
    )
    truth: list[dict] = []
    lesions: list[dict] = []
    with _Staging(out_dir) as tmp:
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        jobs = [
            (
                asdict(r),
                seed,
                min_height,
                max_height,
                str(tmp),
                texture,
                settings.lesion_scale,
                settings.small_vessels,
            )
            for r in records
        ]
        for row, boxes in _map(_eyepacs_job, jobs, workers, "synthetic EyePACS"):
            truth.append(row)
            lesions.extend(boxes)
        _write_csv(
            tmp / "trainLabels.csv",
            ["image", "level"],
            [{"image": r.image, "level": r.level} for r in records if r.split == "train"],
        )
        _write_csv(
            tmp / "retinopathy_solution.csv",
            ["image", "level", "Usage"],
            [
                {"image": r.image, "level": r.level, "Usage": r.usage}
                for r in records
                if r.split == "test"
            ],
        )
        if qc_png is not None:
            eyepacs_qc_grid(tmp, truth, qc_png)
    _write_csv(Path(truth_csv), TRUTH_COLUMNS, truth)
    if lesions_csv is not None:
        _write_csv(Path(lesions_csv), LESION_COLUMNS, lesions)
    summary = _summary(records, truth)
    log.info("synthetic EyePACS in %s: %s", out_dir, summary)
    return summary


def _summary(records: Sequence[EyepacsRecord], truth: Sequence[dict]) -> dict:
    out: dict = {"images": len(records), "bad_files": {r.image: r.bad for r in records if r.bad}}
    for split in ("train", "test"):
        levels = [r.level for r in records if r.split == split]
        out[f"{split}_levels"] = np.bincount(levels, minlength=5).tolist()
    out["test_usage"] = {u: sum(r.usage == u for r in records) for u in ("Public", "Private")}
    out["lesions"] = {k: int(sum(row[k] for row in truth)) for k in LESION_KINDS}
    return out


def _label(tile: np.ndarray, text: str) -> None:
    cv2.rectangle(tile, (0, 0), (tile.shape[1], 24), (0, 0, 0), -1)
    cv2.putText(
        tile, text, (5, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA
    )


def _tile(path: Path, height: int, width: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((width, height), Image.Resampling.LANCZOS)
        arr = np.asarray(im)
    tile = np.zeros((height, width, 3), np.uint8)
    y, x = (height - arr.shape[0]) // 2, (width - arr.shape[1]) // 2
    tile[y : y + arr.shape[0], x : x + arr.shape[1]] = arr
    return tile


def eyepacs_qc_grid(
    raw_dir: str | os.PathLike,
    truth: Sequence[dict],
    png: str | os.PathLike,
    per_grade: int = 2,
    tile_h: int = 220,
    tile_w: int = 300,
) -> None:
    """A grid of generated training images, one column per grade, read back from disk."""
    raw_dir = Path(raw_dir)
    grid = np.zeros((per_grade * tile_h, 5 * tile_w, 3), np.uint8)
    for grade in range(5):
        rows = [
            r for r in truth if r["split"] == "train" and not r["bad_file"] and r["level"] == grade
        ]
        for k in range(per_grade):
            tile = np.zeros((tile_h, tile_w, 3), np.uint8)
            text = f"grade {grade}: none"
            if k < len(rows):
                row = rows[k]
                tile = _tile(raw_dir / "train" / f"{row['image']}.jpeg", tile_h, tile_w)
                n = " ".join(
                    f"{short}{row[kind]}"
                    for short, kind in (
                        ("MA", MICROANEURYSM),
                        ("HE", HAEMORRHAGE),
                        ("EX", HARD_EXUDATE),
                        ("SE", SOFT_EXUDATE),
                        ("NV", "neovascularisation"),
                        ("PRH", PRERETINAL_HAEMORRHAGE),
                    )
                    if row[kind]
                )
                text = f"grade {grade} {row['image']} {n}"
            _label(tile, text)
            grid[k * tile_h : (k + 1) * tile_h, grade * tile_w : (grade + 1) * tile_w] = tile
    with atomic_path(png) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
