"""Synthetic graded sets in the published layouts of IDRiD grading, APTOS 2019,
Messidor-2 and DDR grading (:mod:`lesioncl.external.layouts`), with their quirks.

The images are drawn like the EyePACS-like set (the grade decides the lesions, the
ICDR rules check it), each set from its own random streams, so that the tests and the
demo go through the real readers. The quirks each layout carries (``quirks: true``):

* ``idrid_grading``: names restart in each split (``IDRiD_001`` in both), the label
  CSVs have a trailing space in ``Risk of macular edema `` and two empty unnamed
  columns; 4288 x 2848-like frames (1.5 : 1, the circle cut at top and bottom).
* ``aptos2019``: PNG files; image size tied to grade as in the real set (most grade-0
  images are 1050 x 1050-like squares, the others wider frames of other sizes); a
  ``test.csv`` and ``test_images/`` without labels, which the reader must ignore.
* ``messidor2``: PNG and JPG files, some listed in ``messidor_data.csv`` with their
  extension in another case; two ungradable images (``adjudicated_gradable`` 0, no
  grade).
* ``ddr_grading``: ``valid`` for the validation split, JPG files, and images graded 5
  (DDR's ungradable).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lesioncl.synthetic.datasets import _draw, _jpeg, _map, _rng, _Staging, _write_csv
from lesioncl.synthetic.geometry import _anatomy, eyepacs_geometry, idrid_geometry
from lesioncl.synthetic.grading import check_grade_distribution

log = logging.getLogger(__name__)

#: Random-stream keys of the graded sets (EyePACS 1, IDRiD segmentation 2).
_DATASET = {"idrid_grading": 3, "aptos2019": 4, "messidor2": 5, "ddr_grading": 6}
GRADED_LAYOUTS = tuple(_DATASET)
_PLAN = 0


@dataclass(frozen=True)
class GradedSetSettings:
    """What decides one synthetic graded set (config ``synthetic.external``)."""

    seed: int = 0
    n_images: int = 60  # graded images (the layout's extra files come on top)
    height: int = 320  # the frame height (APTOS: the squares' side varies around it)
    grade_distribution: tuple[float, ...] = (0.45, 0.1, 0.25, 0.1, 0.1)
    quirks: bool = True  # each layout's known quirks (module docstring)
    texture: bool = True
    lesion_scale: float = 1.0
    small_vessels: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grade_distribution", tuple(self.grade_distribution))
        check_grade_distribution(self.grade_distribution, "external.grade_distribution")
        if self.n_images < 10:
            raise ValueError(
                f"config: synthetic.external.n_images must be >= 10, got {self.n_images}"
            )
        if self.height < 128:
            raise ValueError(f"config: synthetic.external.height must be >= 128, got {self.height}")


def _square(rng: np.random.Generator, side: int, eye: str):
    radius = side * rng.uniform(0.44, 0.48)
    return _anatomy(rng, side, side, side / 2, side / 2, radius, eye)


def _geometry_fn(layout: str, height: int, grade: int, number: int):
    eye = "left" if number % 2 else "right"
    if layout == "idrid_grading":
        return lambda rng: idrid_geometry(rng, height, eye)
    if layout == "aptos2019":
        # the real set's quirk: grade-0 images are mostly one square size, the others vary
        if grade == 0:
            return lambda rng: _square(rng, height, eye)
        return lambda rng: eyepacs_geometry(rng, int(height * 0.8), int(height * 1.3), eye)
    return lambda rng: eyepacs_geometry(rng, int(height * 0.9), int(height * 1.1), eye)


def _image_job(args) -> None:
    layout, number, grade, path, fmt, s = args
    s = GradedSetSettings(**s)
    draw_grade = min(grade, 4)  # DDR's ungradable (5): a picture of some grade
    rendered = _draw(
        s.seed,
        _DATASET[layout],
        number,
        draw_grade,
        _geometry_fn(layout, s.height, draw_grade, number),
        rich=False,
        texture=s.texture,
        lesion_scale=s.lesion_scale,
        small_vessels=s.small_vessels,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        buf = io.BytesIO()
        Image.fromarray(rendered.image).save(buf, format="PNG", compress_level=1)
        Path(path).write_bytes(buf.getvalue())
    else:
        Path(path).write_bytes(_jpeg(rendered.image, 92))


def _plan(layout: str, s: GradedSetSettings) -> list[int]:
    rng = _rng(s.seed, _DATASET[layout], _PLAN)
    grades = rng.choice(5, size=s.n_images, p=np.asarray(s.grade_distribution)).tolist()
    # every grade present at least twice, so that every split can hold each grade
    for g in range(5):
        while grades.count(g) < 2:
            grades[int(rng.integers(len(grades)))] = g
    return [int(g) for g in grades]


def _idrid_grading(root: Path, grades: list[int], s: GradedSetSettings):
    base = root / "B. Disease Grading"
    n_test = max(5, len(grades) // 5)
    jobs, tables = [], {"train": [], "test": []}
    for i, grade in enumerate(grades):
        split = "test" if i < n_test else "train"
        number = len(tables[split]) + 1  # names restart in each split
        name = f"IDRiD_{number:03d}"
        folder = "b. Testing Set" if split == "test" else "a. Training Set"
        jobs.append((i, grade, base / "1. Original Images" / folder / f"{name}.jpg", "jpg"))
        tables[split].append(
            {
                "Image name": name,
                "Retinopathy grade": grade,
                "Risk of macular edema ": int(grade >= 3),
            }
        )
    labels = base / "2. Groundtruths"
    labels.mkdir(parents=True, exist_ok=True)
    for split, csv_name in (
        ("train", "a. IDRiD_Disease Grading_Training Labels.csv"),
        ("test", "b. IDRiD_Disease Grading_Testing Labels.csv"),
    ):
        lines = ["Image name,Retinopathy grade,Risk of macular edema ,,"]
        lines += [
            f"{r['Image name']},{r['Retinopathy grade']},{r['Risk of macular edema ']},,"
            for r in tables[split]
        ]
        (labels / csv_name).write_text("\n".join(lines) + "\n")
    return jobs


def _aptos2019(root: Path, grades: list[int], s: GradedSetSettings):
    rng = _rng(s.seed, _DATASET["aptos2019"], _PLAN + 1)
    ids = [f"{int(v):012x}" for v in rng.choice(2**47, size=len(grades) + 3, replace=False)]
    jobs, rows = [], []
    for i, grade in enumerate(grades):
        jobs.append((i, grade, root / "train_images" / f"{ids[i]}.png", "png"))
        rows.append({"id_code": ids[i], "diagnosis": grade})
    _write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    if s.quirks:  # unlabelled test images: never read
        test = ids[len(grades) :]
        for j, code in enumerate(test):
            jobs.append((len(grades) + j, 0, root / "test_images" / f"{code}.png", "png"))
        _write_csv(root / "test.csv", ["id_code"], [{"id_code": c} for c in test])
    return jobs


def _messidor2(root: Path, grades: list[int], s: GradedSetSettings):
    jobs, rows = [], []
    extra = [None, None] if s.quirks else []  # the ungradable images
    for i, grade in enumerate(grades + extra):
        stem = f"2005{i:04d}_{40000 + 7 * i}_0100_PP" if i % 3 else f"IM{i:06d}"
        ext = ".png" if i % 5 < 3 else ".JPG" if i % 2 else ".jpg"
        listed = f"{stem}{ext.lower() if (s.quirks and ext == '.JPG') else ext}"
        jobs.append(
            (
                i,
                0 if grade is None else grade,
                root / "IMAGES" / f"{stem}{ext}",
                "png" if ext == ".png" else "jpg",
            )
        )
        rows.append(
            {
                "image_id": listed,
                "adjudicated_dr_grade": "" if grade is None else grade,
                "adjudicated_dme": "" if grade is None else int(grade >= 3),
                "adjudicated_gradable": 0 if grade is None else 1,
            }
        )
    _write_csv(
        root / "messidor_data.csv",
        ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
        rows,
    )
    return jobs


def _ddr_grading(root: Path, grades: list[int], s: GradedSetSettings):
    base = root / "DR_grading"
    n = len(grades)
    cut = {"test": max(5, n // 5), "valid": max(5, n // 10)}
    grades = grades + ([5, 5, 5] if s.quirks else [])
    jobs, lists = [], {"train": [], "valid": [], "test": []}
    for i, grade in enumerate(grades):
        if i >= n:  # the ungradable ones, one per split
            split = ("train", "valid", "test")[i - n]
        else:
            split = (
                "test"
                if i < cut["test"]
                else "valid"
                if i < cut["test"] + cut["valid"]
                else "train"
            )
        name = f"007-{1000 + i:04d}-100.jpg"
        jobs.append((i, grade, base / split / name, "jpg"))
        lists[split].append(f"{name} {grade}")
    base.mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return jobs


_LAYOUT_WRITERS = {
    "idrid_grading": _idrid_grading,
    "aptos2019": _aptos2019,
    "messidor2": _messidor2,
    "ddr_grading": _ddr_grading,
}


def generate_graded_set(
    layout: str, out_dir: str | os.PathLike, settings: GradedSetSettings, workers: int = 1
) -> dict:
    """Draw the set ``layout`` into ``out_dir`` (replaced on success); returns a summary."""
    if layout not in _LAYOUT_WRITERS:
        raise ValueError(f"unknown graded layout {layout!r}; known: {list(GRADED_LAYOUTS)}")
    grades = _plan(layout, settings)
    with _Staging(Path(out_dir)) as tmp:
        jobs = _LAYOUT_WRITERS[layout](tmp, grades, settings)
        items = [
            (layout, number, grade, str(path), fmt, settings.__dict__)
            for number, grade, path, fmt in jobs
        ]
        for _ in _map(_image_job, items, workers, desc=f"synthetic {layout}"):
            pass
    summary = {
        "layout": layout,
        "images": len(jobs),
        "graded": len(grades),
        "grades": {g: grades.count(g) for g in range(5)},
        "settings": settings.__dict__,
    }
    log.info("%s: %d files (%d graded) in %s", layout, len(jobs), len(grades), out_dir)
    return summary
