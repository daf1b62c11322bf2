"""Writing the synthetic EyePACS and IDRiD sets in their real on-disk layouts.

Each image is drawn from its own random streams, keyed by (seed, data set, image
number), so the sets stream to disk one image at a time, can be drawn by several
processes, and are byte-identical for the same seed. A set is written into a
temporary folder beside its destination and renamed onto it when complete.

This module holds what both sets share (random streams, staging, drawing, tables);
:mod:`.eyepacs_set` and :mod:`.idrid_set` write the two sets.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from lesioncl.progress import progress
from lesioncl.synthetic.geometry import Rendered
from lesioncl.synthetic.grading import (
    HAEMORRHAGE,
    HARD_EXUDATE,
    LESION_KINDS,
    MICROANEURYSM,
    PRERETINAL_HAEMORRHAGE,
    SOFT_EXUDATE,
    haemorrhage_spread_needed,
    icdr_grade,
    sample_lesion_counts,
)
from lesioncl.synthetic.render import render_fundus
from lesioncl.utils import atomic_path, worker_context

log = logging.getLogger(__name__)


# Stream keys: np.random.default_rng([seed, DATASET, PURPOSE, image_number]).
_EYEPACS, _IDRID = 1, 2
_DDR = 7  # the DDR-like lesion set (3-6: the graded sets, graded_sets._DATASET)
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

# The DDR lesion layout (Li et al. 2019, github nkicsl/DDR-dataset).
DDR_SEGMENTATION = "lesion_segmentation"
DDR_DETECTION = "lesion_detection"
#: our split -> DDR's split folder
DDR_SPLITS = {"train": "train", "val": "valid", "test": "test"}
#: our split -> the folder of its masks inside the split folder (a space in valid's)
DDR_LABEL_FOLDERS = {"train": "label", "val": "segmentation label", "test": "label"}
#: mask folder -> (VOC class name, lesion kinds drawn into that mask), in DDR's order
DDR_MASK_TYPES = {
    code: (code.lower(), IDRID_MASK_TYPES[code][1]) for code in ("EX", "HE", "MA", "SE")
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
    lesion_scale: float = 1.0,
    small_vessels: int = 0,
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
        lesion_scale=lesion_scale,
        small_vessels=small_vessels,
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
