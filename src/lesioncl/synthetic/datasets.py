"""Writing the synthetic EyePACS and IDRiD sets in their real on-disk layouts.

Each image is drawn from its own random streams, keyed by (seed, data set, image
number), so the sets stream to disk one image at a time, can be drawn by several
processes, and are byte-identical for the same seed. A set is written into a
temporary folder beside its destination and renamed onto it when complete.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from lesioncl.progress import progress
from lesioncl.synthetic.grading import (
    DEFAULT_EYEPACS_GRADES,
    DEFAULT_IDRID_GRADES,
    HAEMORRHAGE,
    HARD_EXUDATE,
    LESION_KINDS,
    MICROANEURYSM,
    PRERETINAL_HAEMORRHAGE,
    SOFT_EXUDATE,
    check_grade_distribution,
    haemorrhage_spread_needed,
    icdr_grade,
    sample_lesion_counts,
)
from lesioncl.synthetic.render import Rendered, eyepacs_geometry, idrid_geometry, render_fundus
from lesioncl.utils import atomic_path, worker_context

log = logging.getLogger(__name__)

# Stream keys: np.random.default_rng([seed, DATASET, PURPOSE, image_number]).
_EYEPACS, _IDRID = 1, 2
_PLAN, _LOOK, _COUNTS, _LESIONS, _DAMAGE = 0, 1, 2, 3, 4

EYEPACS_JPEG_QUALITY = 90
IDRID_JPEG_QUALITY = 95

#: The deliberately broken EyePACS files (bad_files: true), in the order they are assigned.
BAD_KINDS = ("truncated_jpeg", "all_black", "zero_bytes")

TRUTH_COLUMNS = [
    "image",
    "split",
    "usage",
    "level",
    "width",
    "height",
    *LESION_KINDS,
    "haemorrhage_quadrants",
    "bad_file",
]
LESION_COLUMNS = ["image", "kind", "x1", "y1", "x2", "y2"]

# The IDRiD "A. Segmentation" layout.
IDRID_ROOT = "A. Segmentation"
IDRID_IMAGES = "1. Original Images"
IDRID_MASKS = "2. All Segmentation Groundtruths"
IDRID_SETS = {"train": "a. Training Set", "test": "b. Testing Set"}
#: mask code -> (folder, lesion kinds drawn into that mask); OD is the optic disc.
IDRID_MASK_TYPES = {
    "MA": ("1. Microaneurysms", (MICROANEURYSM,)),
    "HE": ("2. Haemorrhages", (HAEMORRHAGE, PRERETINAL_HAEMORRHAGE)),
    "EX": ("3. Hard Exudates", (HARD_EXUDATE,)),
    "SE": ("4. Soft Exudates", (SOFT_EXUDATE,)),
    "OD": ("5. Optic Disc", ()),
}


def _rng(seed: int, dataset: int, purpose: int, number: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, dataset, purpose, number])


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _truth_row(
    name: str,
    split: str,
    usage: str,
    level: int,
    rendered: Rendered | None,
    width: int,
    height: int,
    bad: str = "",
) -> dict:
    counts = rendered.counts() if rendered is not None else dict.fromkeys(LESION_KINDS, 0)
    quadrants = rendered.haemorrhage_quadrants() if rendered is not None else 0
    return {
        "image": name,
        "split": split,
        "usage": usage,
        "level": level,
        "width": width,
        "height": height,
        **counts,
        "haemorrhage_quadrants": quadrants,
        "bad_file": bad,
    }


def _lesion_rows(name: str, rendered: Rendered) -> list[dict]:
    rows = []
    for lesion in rendered.lesions:
        x1, y1, x2, y2 = lesion.bbox
        rows.append({"image": name, "kind": lesion.kind, "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    return rows


def _draw(
    seed: int,
    dataset: int,
    number: int,
    grade: int,
    geometry_fn: Callable,
    rich: bool,
    texture: bool = True,
) -> Rendered:
    """One image: the look from its own stream, the lesions from the grade's."""
    look = _rng(seed, dataset, _LOOK, number)
    geom = geometry_fn(look)
    counts = sample_lesion_counts(grade, _rng(seed, dataset, _COUNTS, number), rich=rich)
    rendered = render_fundus(
        geom,
        counts,
        look,
        _rng(seed, dataset, _LESIONS, number),
        spread_haemorrhages=haemorrhage_spread_needed(grade),
        texture=texture,
    )
    drawn = icdr_grade(rendered.counts(), rendered.haemorrhage_quadrants())
    if drawn != grade:  # the sampler and the placement guarantee it; a bug otherwise
        raise AssertionError(
            f"synthetic image {number}: drew grade {drawn} for target {grade} "
            f"({rendered.counts()}, {rendered.haemorrhage_quadrants()} quadrants)"
        )
    return rendered


@dataclass
class _Staging:
    """A temporary folder beside ``final`` that replaces it on success."""

    final: Path

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".tmp", dir=self.final.parent)
        )
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.final.exists():
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _map(fn: Callable, items: Sequence, workers: int, desc: str) -> Iterator:
    """``fn`` over ``items`` in order, in ``workers`` processes, with a progress bar."""
    bar = progress(total=len(items), desc=desc, unit="img", mininterval=1.0)
    try:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
        else:
            with (
                worker_context() as ctx,
                ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool,
            ):
                for result in pool.map(
                    fn, items, chunksize=max(1, min(16, len(items) // (4 * workers)))
                ):
                    yield result
                    bar.update()
    finally:
        bar.close()


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)


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
    record, seed, min_height, max_height, folder, texture = args
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
        seed, _EYEPACS, record.number, record.level, geom_fn, rich=False, texture=texture
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


def generate_eyepacs(
    out_dir: str | os.PathLike,
    truth_csv: str | os.PathLike,
    lesions_csv: str | os.PathLike | None = None,
    qc_png: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    n_train: int = 240,
    n_test: int = 160,
    min_height: int = 360,
    max_height: int = 560,
    bad_files: bool = True,
    grade_distribution: Sequence[float] = DEFAULT_EYEPACS_GRADES,
    public_fraction: float = 0.4,
    workers: int = 1,
    texture: bool = True,
) -> dict:
    """Write an EyePACS-like raw set in the Kaggle layout.

    ``out_dir`` gets ``train/*.jpeg``, ``trainLabels.csv`` (image,level),
    ``test/*.jpeg`` and ``retinopathy_solution.csv`` (image,level,Usage).
    ``truth_csv`` lists every image with its drawn lesion counts (QC);
    ``lesions_csv`` every drawn lesion's box in raw-image pixels; ``qc_png`` a grid
    of examples per grade. Returns a summary.
    """
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
        jobs = [(asdict(r), seed, min_height, max_height, str(tmp), texture) for r in records]
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
    number, split, grade, seed, height, folder, texture = args
    eye = "right" if _rng(seed, _IDRID, _PLAN, number).random() < 0.5 else "left"
    rendered = _draw(
        seed,
        _IDRID,
        number,
        grade,
        lambda rng: idrid_geometry(rng, height, eye),
        rich=True,
        texture=texture,
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


def generate_idrid(
    out_dir: str | os.PathLike,
    truth_csv: str | os.PathLike | None = None,
    qc_png: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    n_train: int = 40,
    n_test: int = 16,
    height: int = 640,
    grade_distribution: Sequence[float] = DEFAULT_IDRID_GRADES,
    workers: int = 1,
    texture: bool = True,
) -> dict:
    """Write an IDRiD-like "A. Segmentation" set under ``out_dir``.

    Images ``IDRiD_01 .. IDRiD_{n_train}`` are the training set and the testing set
    continues the numbering (as IDRiD's 01-54 and 55-81). Masks are single-channel
    uint8 TIFs (0 / 255), the exact pixels the lesion generator drew; new vessels
    have no mask (IDRiD has none) and preretinal haemorrhages go into HE.
    """
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
            (i + 1, "train" if i < n_train else "test", g, seed, height, str(tmp), texture)
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
        _label(pair, f"{row['image']} grade {row['level']}  masks: {row['masks']}")
        tiles.append(pair)
    width = max(t.shape[1] for t in tiles)
    grid = np.concatenate(
        [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles], axis=0
    )
    with atomic_path(png) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
