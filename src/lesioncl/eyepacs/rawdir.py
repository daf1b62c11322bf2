"""The raw EyePACS folder: where it is for each source, its layout checked before
anything is read, its label files read and its image folders listed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from lesioncl.eyepacs.common import (
    IMAGE_DIRS,
    IMAGE_EXTS,
    LABEL_COLUMNS,
    LABEL_FILES,
    EyepacsError,
)

log = logging.getLogger(__name__)


_FIX_SOURCE = (
    "set eyepacs.raw_dir to the folder holding train/, test/, trainLabels.csv and "
    "retinopathy_solution.csv (or use eyepacs.source: kaggle / synthetic)"
)


def label_file_path(raw_dir: Path, key: str) -> Path | None:
    """The label CSV of ``key`` (train | test) in ``raw_dir``, plain or as Kaggle's ``.zip``."""
    name = LABEL_FILES[key]
    for candidate in (raw_dir / name, raw_dir / f"{name}.zip"):
        if candidate.is_file():
            return candidate
    return None


def raw_dir_of(eyepacs: Mapping[str, Any], results: str) -> str:
    """The raw EyePACS folder (train/, test/, label CSVs) for the configured source.

    ``eyepacs`` is the config section; ``results`` the workflow's results folder.
    """
    source = eyepacs["source"]
    if source == "synthetic":
        return f"{results}/synthetic/eyepacs"
    if source == "kaggle":
        return f"{eyepacs['download_dir']}/raw"
    raw = eyepacs["raw_dir"]
    if not raw:
        raise ValueError(
            "config: eyepacs.source is 'folder' but eyepacs.raw_dir is not set; "
            "set it to the folder holding train/, test/, trainLabels.csv and "
            "retinopathy_solution.csv"
        )
    return raw


def labels_rule_inputs(eyepacs: Mapping[str, Any], results: str) -> dict[str, str]:
    """Inputs of rule eyepacs_labels: the raw folder; an existing folder (source: folder)
    is checked right away, with its label files as inputs."""
    raw = raw_dir_of(eyepacs, results)
    if eyepacs["source"] != "folder":
        return {"raw": raw}  # produced by synthetic.smk or eyepacs_unpack
    labels = check_raw_layout(raw)  # clear error: missing folder / CSV and the fix
    return {"raw": raw, "train_csv": str(labels["train"]), "test_csv": str(labels["test"])}


def check_raw_layout(raw_dir: str | os.PathLike) -> dict[str, Path]:
    """Check that the folder, its image folders and its label files exist.

    Returns the label files by key (train | test). Raises :class:`EyepacsError`
    naming the first missing path and the fix.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise EyepacsError(f"EyePACS folder {raw_dir} does not exist; {_FIX_SOURCE}")
    for folder in IMAGE_DIRS:
        if not (raw_dir / folder).is_dir():
            raise EyepacsError(
                f"{raw_dir / folder} is missing: the EyePACS folder must hold the Kaggle "
                f"{folder}/ folder of images ({folder}.zip.001… unpacked); {_FIX_SOURCE}"
            )
        with os.scandir(raw_dir / folder) as entries:  # the first entry only: cheap
            if next(entries, None) is None:
                raise EyepacsError(
                    f"{raw_dir / folder} is empty: it must hold the competition's {folder} "
                    f"images ({folder}.zip.001… unpacked into it); {_FIX_SOURCE}"
                )
    found = {}
    for key, name in LABEL_FILES.items():
        path = label_file_path(raw_dir, key)
        if path is None:
            raise EyepacsError(
                f"{raw_dir / name} is missing (nor is there {name}.zip): the EyePACS folder "
                f"needs the competition's label files trainLabels.csv and "
                f"retinopathy_solution.csv; download {name} from the competition's data page "
                f"(https://www.kaggle.com/competitions/diabetic-retinopathy-detection/data) "
                f"into {raw_dir}"
            )
        found[key] = path
    return found


def _read_label_csv(path: Path, key: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        ValueError,
    ) as exc:
        raise EyepacsError(
            f"{path} is not a readable CSV ({exc}); replace it with the competition's file"
        ) from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in LABEL_COLUMNS[key] if c not in df.columns]
    if missing:
        raise EyepacsError(
            f"{path} lacks the column(s) {missing} (has {list(df.columns)}); it must have "
            f"the header {','.join(LABEL_COLUMNS[key])} as in the competition's file"
        )
    if df.empty:
        raise EyepacsError(f"{path} has no rows; replace it with the competition's file")
    return df[LABEL_COLUMNS[key]]


def _image_suffix(name: str) -> str | None:
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""
    return suffix if suffix in IMAGE_EXTS else None


def _list_folder(
    folder: Path,
) -> tuple[pd.Series, dict[str, str], list[str], list[tuple[str, str]]]:
    """``folder``'s images: their stems (``10_left``), stem -> file name, the other
    entries, and (file, file used instead) for images with several files."""
    names: dict[str, str] = {}
    other, doubles = [], []
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTS)}
    with os.scandir(folder) as entries:
        for entry in entries:
            suffix = _image_suffix(entry.name)
            if suffix is None or not entry.is_file():
                other.append(entry.name)
                continue
            stem = entry.name[: -len(suffix)]
            kept = names.get(stem)
            if kept is None:
                names[stem] = entry.name
                continue
            keep, drop = sorted([kept, entry.name], key=lambda n: (rank[_image_suffix(n)], n))
            names[stem] = keep
            doubles.append((drop, keep))
    return pd.Series(list(names), dtype="string"), names, sorted(other), sorted(doubles)
