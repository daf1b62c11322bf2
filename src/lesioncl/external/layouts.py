"""The published layouts of the graded sets, read into ``image, level, split, path``.

Every reader returns ``(labels, rejects)``: one row per usable image, and one row per
listed or present image it could not use, with the reason (``missing_file``: listed,
not on disk; ``not_listed``: on disk, in no label file; ``ungradable``: graded as such
by the set itself). What makes a set unusable (a missing label file, a grade outside
0-4, a name listed twice in one split) is an :class:`ExternalLayoutError` naming the
file and the fix. The layouts (folders extracted from the downloads):

``idrid_grading`` (IDRiD "B. Disease Grading", the folder or its parent)
    ``1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NNN.jpg``;
    ``2. Groundtruths/{a. IDRiD_Disease Grading_Training Labels.csv,
    b. IDRiD_Disease Grading_Testing Labels.csv}``: ``Image name`` (no extension),
    ``Retinopathy grade``, ``Risk of macular edema `` (trailing space) and empty unnamed
    columns. Names restart in each split: images are named ``<split>_IDRiD_NNN``. The
    official test split is kept; val comes out of the training set.
``aptos2019`` (the Kaggle competition's files)
    ``train.csv`` (``id_code,diagnosis``) and ``train_images/<id_code>.png``. The test
    labels were never released: the 3,662 labelled images are split here.
``messidor2`` (the release's images and the adjudicated grades)
    the images (PNG and JPG) anywhere under the folder, and ``messidor_data.csv``
    (``image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable``); file
    names match regardless of the case of their extension. Split here.
``ddr_grading`` (DDR's ``DR_grading``, the folder or the set's root above it)
    ``{train,valid,test}/*.jpg`` with ``train.txt``, ``valid.txt``, ``test.txt``: lines
    ``<file> <grade>``; grade 5 is DDR's "ungradable" (counted among the rejects). The
    official splits are kept (``valid`` is val).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from lesioncl.external.split import SplitSettings, stratified_split

log = logging.getLogger("lesioncl.external")

LABEL_COLUMNS = ["image", "level", "split", "path"]
REJECT_COLUMNS = ["image", "split", "file", "reason", "detail"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class ExternalLayoutError(ValueError):
    """A graded set that cannot be read: the message names the file and the fix."""


# --------------------------------------------------------------------------- helpers
def _root(path: str | os.PathLike, name: str) -> Path:
    root = Path(path).expanduser()
    if root.suffix.lower() == ".zip" and root.is_file():
        raise ExternalLayoutError(
            f"external.sets.{name} is the archive {root}; extract it first "
            f"(unzip '{root}' -d <folder>) and give the folder"
        )
    if not root.is_dir():
        raise ExternalLayoutError(
            f"external.sets.{name}: {root} is not a folder; point it at the extracted set "
            f"(README 'External evaluation')"
        )
    return root


def check_external_folder(name: str, path) -> Path:
    """The set's folder exists (cheap, before any job): an unknown name or a missing
    folder is an :class:`ExternalLayoutError` naming the config key."""
    if name not in EXTERNAL_SETS:
        raise ExternalLayoutError(
            f"external.sets: unknown set {name!r}; known: {sorted(EXTERNAL_SETS)}"
        )
    return _root(path, name)


def _images_in(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` (not recursive), by lower-case name."""
    if not folder.is_dir():
        return {}
    return {
        p.name.lower(): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def _read_table(source: Path, required: set[str], tidy: bool = False) -> pd.DataFrame:
    """A label CSV as strings (a byte-order mark ignored) holding the ``required``
    columns, or an error naming the file. ``tidy`` (IDRiD's spreadsheet export): header
    names stripped, empty and unnamed columns and empty rows dropped."""
    table = pd.read_csv(source, dtype=str, encoding="utf-8-sig")
    if tidy:
        table.columns = [str(c).strip() for c in table.columns]
        table = table.loc[:, [c for c in table.columns if c and not c.startswith("Unnamed")]]
    missing = required - set(table.columns)
    if missing:
        raise ExternalLayoutError(
            f"{source}: no column(s) {sorted(missing)} (has {list(table.columns)})"
        )
    return table.dropna(how="all") if tidy else table


def _grades(values: pd.Series, source: Path, names: pd.Series, allowed=range(5)) -> pd.Series:
    """Integer grades, or an error naming the file and the first bad rows."""
    grades = pd.to_numeric(values, errors="coerce")
    bad = grades.isna() | ~grades.isin(list(allowed)) | (grades % 1 != 0)
    if bad.any():
        rows = [f"{n}: {v!r}" for n, v in zip(names[bad].head(5), values[bad].head(5))]
        raise ExternalLayoutError(
            f"{source}: grades must be integers {min(allowed)}-{max(allowed)}; bad rows "
            f"({int(bad.sum())}), e.g. {rows}. Fix or remove those rows."
        )
    return grades.astype(int)


def _no_duplicates(names: pd.Series, source: Path, what: str = "image") -> None:
    dup = names[names.duplicated()].unique().tolist()
    if dup:
        raise ExternalLayoutError(
            f"{source}: {what} name(s) listed more than once: {dup[:10]}; "
            f"each image may have one grade"
        )


def _match_files(
    listed: pd.DataFrame, files: dict[str, Path], split: str, source: Path, suffixes=()
) -> tuple[list[dict], list[dict]]:
    """Listed rows (``image``, ``file``, ``level``) matched to ``files`` (by lower-case
    name; a name without an extension tries ``suffixes``); the files nobody lists are
    rejects too."""
    rows, rejects, used = [], [], set()
    for r in listed.itertuples(index=False):
        candidates = [r.file.lower()] + [f"{r.file.lower()}{s}" for s in suffixes]
        key = next((c for c in candidates if c in files), None)
        if key is None:
            rejects.append(
                {
                    "image": r.image,
                    "split": split,
                    "file": r.file,
                    "reason": "missing_file",
                    "detail": f"listed in {source.name}, not found in {source.parent}",
                }
            )
            continue
        used.add(key)
        rows.append(
            {"image": r.image, "level": int(r.level), "split": split, "path": str(files[key])}
        )
    for key, path in files.items():
        if key not in used:
            rejects.append(
                {
                    "image": Path(key).stem,
                    "split": split,
                    "file": str(path),
                    "reason": "not_listed",
                    "detail": f"no grade in {source.name}",
                }
            )
    return rows, rejects


def _frames(rows: list[dict], rejects: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.DataFrame(rows, columns=LABEL_COLUMNS),
        pd.DataFrame(rejects, columns=REJECT_COLUMNS),
    )


def _split_here(labels: pd.DataFrame, settings: SplitSettings, splits) -> pd.DataFrame:
    labels = labels.copy()
    carve = labels["split"] == "train"
    labels.loc[carve, "split"] = stratified_split(
        labels.loc[carve, "image"], labels.loc[carve, "level"], settings, splits
    )
    return labels


# --------------------------------------------------------------------------- the sets
IDRID_GRADING = "B. Disease Grading"
IDRID_GRADING_IMAGES = "1. Original Images"
IDRID_GRADING_LABELS = "2. Groundtruths"
IDRID_GRADING_SPLITS = {
    "train": ("a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv"),
    "test": ("b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv"),
}


def read_idrid_grading(path, settings: SplitSettings = SplitSettings()):
    root = _root(path, "idrid_grading")
    if (root / IDRID_GRADING).is_dir():
        root = root / IDRID_GRADING
    rows, rejects = [], []
    for split, (folder, csv_name) in IDRID_GRADING_SPLITS.items():
        source = root / IDRID_GRADING_LABELS / csv_name
        if not source.is_file():
            raise ExternalLayoutError(
                f"IDRiD grading: {source} is missing; external.sets.idrid_grading must be the "
                f"extracted '{IDRID_GRADING}' folder (or its parent), holding "
                f"'{IDRID_GRADING_IMAGES}/' and '{IDRID_GRADING_LABELS}/'"
            )
        table = _read_table(source, {"Image name", "Retinopathy grade"}, tidy=True)
        names = table["Image name"].astype(str).str.strip()
        _no_duplicates(names, source)
        listed = pd.DataFrame(
            {
                "image": f"{split}_" + names,
                "file": names,
                "level": _grades(table["Retinopathy grade"], source, names),
            }
        )
        found, lost = _match_files(
            listed,
            _images_in(root / IDRID_GRADING_IMAGES / folder),
            split,
            source,
            IMAGE_SUFFIXES,
        )
        rows += found
        rejects += lost
    labels, rejects_df = _frames(rows, rejects)
    return _split_here(labels, settings, ("val",)), rejects_df


def read_aptos2019(path, settings: SplitSettings = SplitSettings()):
    root = _root(path, "aptos2019")
    source = root / "train.csv"
    if not source.is_file():
        raise ExternalLayoutError(
            f"APTOS 2019: {source} is missing; external.sets.aptos2019 must be the folder of "
            f"the competition's files (train.csv, train_images/); the test labels were never "
            f"released, so only train.csv is used"
        )
    table = _read_table(source, {"id_code", "diagnosis"})
    names = table["id_code"].astype(str).str.strip()
    _no_duplicates(names, source, "id_code")
    listed = pd.DataFrame(
        {"image": names, "file": names, "level": _grades(table["diagnosis"], source, names)}
    )
    rows, rejects = _match_files(
        listed, _images_in(root / "train_images"), "train", source, IMAGE_SUFFIXES
    )
    labels, rejects_df = _frames(rows, rejects)
    return _split_here(labels, settings, ("test", "val")), rejects_df


MESSIDOR2_CSV = "messidor_data.csv"


def read_messidor2(path, settings: SplitSettings = SplitSettings()):
    root = _root(path, "messidor2")
    found = sorted(root.rglob(MESSIDOR2_CSV))
    if not found:
        raise ExternalLayoutError(
            f"Messidor-2: no {MESSIDOR2_CSV} under {root}; the release has no grades: put "
            f"the adjudicated grades ({MESSIDOR2_CSV}: image_id, adjudicated_dr_grade, "
            f"adjudicated_gradable) in the folder beside the images"
        )
    source = found[0]
    table = _read_table(source, {"image_id", "adjudicated_dr_grade"})
    names = table["image_id"].astype(str).str.strip()
    _no_duplicates(names.str.lower(), source, "image_id")
    gradable = pd.to_numeric(table.get("adjudicated_gradable", 1), errors="coerce")
    ungradable = (gradable == 0) | table["adjudicated_dr_grade"].isna()
    files: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.name.lower() in files:
                raise ExternalLayoutError(
                    f"Messidor-2: {p} and {files[p.name.lower()]} have the same name; keep one"
                )
            files[p.name.lower()] = p
    rejects = [
        {
            "image": Path(n).stem,
            "split": "",
            "file": n,
            "reason": "ungradable",
            "detail": f"adjudicated_gradable 0 (or no grade) in {source.name}",
        }
        for n in names[ungradable]
    ]
    for n in names[ungradable]:
        files.pop(n.lower(), None)
    graded = names[~ungradable]
    listed = pd.DataFrame(
        {
            "image": graded.map(lambda n: Path(n).stem),
            "file": graded,
            "level": _grades(table.loc[~ungradable, "adjudicated_dr_grade"], source, graded),
        }
    )
    rows, lost = _match_files(listed, files, "train", source)
    for r in lost:
        r["split"] = ""
    labels, rejects_df = _frames(rows, rejects + lost)
    return _split_here(labels, settings, ("test", "val")), rejects_df


DDR_GRADING = "DR_grading"
DDR_SPLITS = {"train": "train", "valid": "val", "test": "test"}
DDR_UNGRADABLE = 5


def read_ddr_grading(path, settings: SplitSettings = SplitSettings()):
    root = _root(path, "ddr_grading")
    if (root / DDR_GRADING).is_dir():
        root = root / DDR_GRADING
    rows, rejects = [], []
    for folder, split in DDR_SPLITS.items():
        source = root / f"{folder}.txt"
        if not source.is_file():
            raise ExternalLayoutError(
                f"DDR grading: {source} is missing; external.sets.ddr_grading must be DDR's "
                f"'{DDR_GRADING}' folder (or the set's root above it), holding train/, valid/, "
                f"test/ and train.txt, valid.txt, test.txt"
            )
        entries = []
        for number, line in enumerate(source.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ExternalLayoutError(
                    f"{source}, line {number}: expected '<file> <grade>', got {line!r}"
                )
            entries.append(parts)
        table = pd.DataFrame(entries, columns=["file", "grade"])
        _no_duplicates(table["file"], source)
        grades = _grades(table["grade"], source, table["file"], range(DDR_UNGRADABLE + 1))
        files = _images_in(root / folder)
        for name in table.loc[grades == DDR_UNGRADABLE, "file"]:
            files.pop(name.lower(), None)
            rejects.append(
                {
                    "image": f"{split}_{Path(name).stem}",
                    "split": split,
                    "file": name,
                    "reason": "ungradable",
                    "detail": f"grade 5 (DDR's ungradable) in {source.name}",
                }
            )
        keep = grades != DDR_UNGRADABLE
        listed = pd.DataFrame(
            {
                "image": split + "_" + table.loc[keep, "file"].map(lambda n: Path(n).stem),
                "file": table.loc[keep, "file"],
                "level": grades[keep],
            }
        )
        found, lost = _match_files(listed, files, split, source)
        rows += found
        rejects += lost
    return _frames(rows, rejects)


#: name -> reader(path, SplitSettings) -> (labels, rejects)
EXTERNAL_SETS: dict[str, Callable] = {
    "idrid_grading": read_idrid_grading,
    "aptos2019": read_aptos2019,
    "messidor2": read_messidor2,
    "ddr_grading": read_ddr_grading,
}


def read_external(
    name: str, path, settings: SplitSettings = SplitSettings()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(labels, rejects)`` of the graded set ``name`` in the folder ``path``."""
    if name not in EXTERNAL_SETS:
        raise ExternalLayoutError(f"unknown external set {name!r}; known: {sorted(EXTERNAL_SETS)}")
    labels, rejects = EXTERNAL_SETS[name](path, settings)
    if labels.empty:
        raise ExternalLayoutError(
            f"{name}: no usable image in {path} ({len(rejects)} rejected, e.g. "
            f"{rejects.head(3).to_dict('records')})"
        )
    dup = labels["image"][labels["image"].duplicated()].tolist()
    if dup:  # a bug of a reader, not of the data
        raise AssertionError(f"{name}: duplicate image names {dup[:5]}")
    counts = labels.groupby("split")["level"].value_counts().unstack(fill_value=0)
    log.info(
        "%s: %d images (%s), %d rejected (%s)",
        name,
        len(labels),
        {s: int(n) for s, n in labels["split"].value_counts().items()},
        len(rejects),
        {r: int(n) for r, n in rejects["reason"].value_counts().items()},
    )
    log.info("%s: grades per split\n%s", name, counts.to_string())
    return labels.sort_values(["split", "image"]).reset_index(drop=True), rejects
