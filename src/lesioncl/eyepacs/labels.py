"""Validation of a raw EyePACS folder and the labels table.

``build_labels`` reads the two label CSVs, lists ``train/`` and ``test/`` once each
(``os.scandir``) and joins them, all vectorised (88,702 rows in about a second).

Split (the authors' official split, docs/method.md): train = Kaggle train;
val = Kaggle test with Usage=Public; test = Kaggle test with Usage=Private.

What is checked, and what happens:

* fatal, before anything is read: the folder, ``train/``, ``test/`` or a label
  file missing (the message names the path and the fix);
* fatal, with every bad row listed: a label row whose image name is not
  ``{id}_{left|right}``, a level outside 0..4, a Usage other than Public/Private,
  an image labelled twice;
* tolerated up to ``max_missing`` (a warning; beyond it, fatal): label rows without
  an image file (``missing_file``) and image files without a label row
  (``unlabelled_file``). Both are left out of the table and listed;
* a warning only: other entries in ``train/``/``test/`` (``unexpected_entry``: not
  ``{id}_{left|right}`` with an image extension, or a second file of one image), and
  counts that differ from the full competition's.

Images may be ``.jpeg`` (Kaggle's) or any of :data:`~.common.IMAGE_EXTS` (``.jpg``,
``.png``, ``.tif``/``.tiff``, ``.bmp``, any case): the table's ``path`` is the file
found. When one image has several files, the first extension of that list wins and
the others are listed as ``unexpected_entry``.

Every problem is a row of the problems table (image, folder, file, reason, detail).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from lesioncl.eyepacs.common import (
    EXPECTED_COUNTS,
    IMAGE_DIRS,
    IMAGE_EXT,
    IMAGE_EXTS,
    LABEL_FILES,
    LEVELS,
    USAGE_TO_SPLIT,
    EyepacsError,
    parse_image_names,
)
from lesioncl.eyepacs.rawdir import (
    _image_suffix,
    _list_folder,
    _read_label_csv,
    check_raw_layout,
)
from lesioncl.utils import atomic_path, write_json

log = logging.getLogger(__name__)


LABEL_TABLE_COLUMNS = ["image", "patient_id", "eye", "level", "split", "path"]
PROBLEM_COLUMNS = ["image", "folder", "file", "reason", "detail"]
SPLITS = ("train", "val", "test")
FATAL_REASONS = ("bad_name", "bad_level", "bad_usage", "duplicate_label", "labelled_twice")
MISSING_REASONS = ("missing_file", "unlabelled_file")


def _problems(df: pd.DataFrame, folder, raw_dir: Path, reason: str, detail) -> pd.DataFrame:
    """Problem rows for ``df``'s images; ``folder`` is a name or a Series aligned with ``df``."""
    image = df["image"].astype("string")
    folder = (
        pd.Series(folder, index=df.index, dtype="string")
        if isinstance(folder, str)
        else folder.astype("string")
    )
    out = pd.DataFrame(
        {
            "image": image,
            "folder": folder,
            "file": str(raw_dir) + os.sep + folder + os.sep + image + IMAGE_EXT,
            "reason": reason,
            "detail": detail,
        },
        index=df.index,
    )
    return out[PROBLEM_COLUMNS]


def _validate_rows(
    df: pd.DataFrame, key: str, path: Path, raw_dir: Path
) -> tuple[pd.DataFrame, list[pd.DataFrame], set[str]]:
    """Parse and check a label CSV's rows.

    Returns the good rows, the problems, and every well-named image of the file
    (a file whose row is bad is not also reported as unlabelled).
    """
    folder = key  # trainLabels.csv -> train/, retinopathy_solution.csv -> test/
    problems = []
    df = df.copy()
    df["image"] = df["image"].astype("string").str.strip()
    parsed = parse_image_names(df["image"])
    df["image"] = parsed["image"]
    df["patient_id"] = parsed["patient_id"]
    df["eye"] = parsed["eye"]
    bad_name = df["patient_id"].isna()
    if bad_name.any():
        problems.append(
            _problems(
                df[bad_name],
                folder,
                raw_dir,
                "bad_name",
                f"{path.name}: image is not {{id}}_{{left|right}}",
            )
        )
    level = pd.to_numeric(df["level"].str.strip(), errors="coerce")
    bad_level = level.isna() | ~level.isin(LEVELS)
    if bad_level.any():
        problems.append(
            _problems(
                df[bad_level],
                folder,
                raw_dir,
                "bad_level",
                f"{path.name}: level "
                + df.loc[bad_level, "level"].astype("string")
                + " is not one of 0..4",
            )
        )
    df["level"] = level
    bad = bad_name | bad_level
    if key == "test":
        usage = df["Usage"].astype("string").str.strip()
        bad_usage = ~usage.isin(list(USAGE_TO_SPLIT))
        if bad_usage.any():
            problems.append(
                _problems(
                    df[bad_usage],
                    folder,
                    raw_dir,
                    "bad_usage",
                    f"{path.name}: Usage '" + usage[bad_usage] + "' is not Public or Private",
                )
            )
        df["split"] = usage.map(USAGE_TO_SPLIT)
        bad |= bad_usage
    else:
        df["split"] = "train"
    dup = df["image"].duplicated(keep=False) & ~bad_name
    if dup.any():
        problems.append(
            _problems(
                df[dup],
                folder,
                raw_dir,
                "duplicate_label",
                f"{path.name}: the image has several rows",
            )
        )
        bad |= dup
    df["folder"] = folder
    return df[~bad], problems, set(df.loc[~bad_name, "image"])


def build_labels(
    raw_dir: str | os.PathLike, max_missing: int = 50, expect_full: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Validate ``raw_dir`` and build the labels table.

    Returns ``(labels, problems, summary)``. Raises :class:`EyepacsError` on fatal
    problems; the problems table is attached to the exception as ``.problems``.
    """
    raw_dir = Path(raw_dir)
    label_paths = check_raw_layout(raw_dir)

    rows, problems, label_rows, named = [], [], {}, {}
    for key in ("train", "test"):
        df = _read_label_csv(label_paths[key], key)
        label_rows[label_paths[key].name] = len(df)
        good, found, named[key] = _validate_rows(df, key, label_paths[key], raw_dir)
        rows.append(good)
        problems.extend(found)
    labels = pd.concat(rows, ignore_index=True)
    twice = labels["image"].duplicated(keep=False)
    if twice.any():
        problems.append(
            _problems(
                labels[twice],
                labels.loc[twice, "folder"],
                raw_dir,
                "labelled_twice",
                "labelled in both trainLabels.csv and retinopathy_solution.csv",
            )
        )
        labels = labels[~twice]

    files, file_names, file_counts, unexpected = {}, {}, {}, []
    for folder in IMAGE_DIRS:
        stems, file_names[folder], other, doubles = _list_folder(raw_dir / folder)
        file_counts[folder] = len(stems)
        parsed = parse_image_names(stems)
        good = parsed["patient_id"].notna()
        files[folder] = set(stems[good])
        other += [file_names[folder][s] for s in stems[~good]]
        if other:
            unexpected.append(
                pd.DataFrame(
                    {
                        "image": pd.Series([pd.NA] * len(other), dtype="string"),
                        "folder": folder,
                        "file": [str(raw_dir / folder / name) for name in sorted(other)],
                        "reason": "unexpected_entry",
                        "detail": "not {id}_{left|right} with an image extension "
                        f"({', '.join(IMAGE_EXTS)}); ignored",
                    }
                )
            )
        if doubles:
            unexpected.append(
                pd.DataFrame(
                    {
                        "image": pd.Series(
                            [name[: -len(_image_suffix(name))] for name, _ in doubles],
                            dtype="string",
                        ),
                        "folder": folder,
                        "file": [str(raw_dir / folder / name) for name, _ in doubles],
                        "reason": "unexpected_entry",
                        "detail": [
                            f"a second file of this image; {kept} is used, this one ignored"
                            for _, kept in doubles
                        ],
                    }
                )
            )

    # Join the label rows with the files of their folder.
    file_keys = {f"{folder}/{image}" for folder in IMAGE_DIRS for image in files[folder]}
    has_file = (labels["folder"] + "/" + labels["image"]).isin(file_keys).to_numpy(dtype=bool)
    missing = labels[~has_file]
    if len(missing):
        other_folder = missing["folder"].map({"train": "test", "test": "train"})
        elsewhere = [img in files[f] for img, f in zip(missing["image"], other_folder)]
        detail = pd.Series("no image file for this label row", index=missing.index, dtype="string")
        detail[elsewhere] = "no image file here; the file is in " + other_folder[elsewhere] + "/"
        problems.append(_problems(missing, missing["folder"], raw_dir, "missing_file", detail))
    labels = labels[has_file]
    all_labelled = named["train"] | named["test"]
    for folder in IMAGE_DIRS:
        extra = sorted(files[folder] - named[folder])
        if extra:
            detail = [
                f"no label row in {LABEL_FILES[folder]}"
                + ("" if img not in all_labelled else " (labelled for the other folder)")
                for img in extra
            ]
            problems.append(
                _problems(
                    pd.DataFrame({"image": extra}),
                    folder,
                    raw_dir,
                    "unlabelled_file",
                    detail,
                )
            )
    problems.extend(unexpected)
    problems_df = (
        pd.concat(problems, ignore_index=True)[PROBLEM_COLUMNS]
        if problems
        else pd.DataFrame(columns=PROBLEM_COLUMNS)
    )

    # The table.
    labels = labels.assign(
        level=labels["level"].astype(int),
        patient_id=labels["patient_id"].astype("int64"),
        path=[
            str(raw_dir) + os.sep + folder + os.sep + file_names[folder][image]
            for folder, image in zip(labels["folder"], labels["image"])
        ],
    )
    labels["split"] = pd.Categorical(labels["split"], categories=SPLITS, ordered=True)
    labels = labels.sort_values(["split", "patient_id", "eye"], kind="stable").reset_index(
        drop=True
    )
    labels["split"] = labels["split"].astype(str)
    labels = labels[LABEL_TABLE_COLUMNS]

    reasons = problems_df["reason"].value_counts().to_dict() if len(problems_df) else {}
    counts = {split: int((labels["split"] == split).sum()) for split in SPLITS}
    level_counts = {
        split: {
            str(lv): int(((labels["split"] == split) & (labels["level"] == lv)).sum())
            for lv in LEVELS
        }
        for split in SPLITS
    }
    n_missing = sum(int(reasons.get(r, 0)) for r in MISSING_REASONS)
    summary = {
        "raw_dir": str(raw_dir),
        "label_rows": label_rows,
        "image_files": file_counts,
        "counts": counts,
        "total": int(len(labels)),
        "levels": level_counts,
        "expected_full_counts": EXPECTED_COUNTS,
        "matches_full_dataset": counts == EXPECTED_COUNTS,
        "problems": {k: int(v) for k, v in sorted(reasons.items())},
        "max_missing": max_missing,
        "warnings": [],
    }

    log.info(
        "%s: label rows %s; image files %s",
        raw_dir,
        ", ".join(f"{k}={v}" for k, v in label_rows.items()),
        ", ".join(f"{k}/={v}" for k, v in file_counts.items()),
    )
    log.info("labels: %s (total %d)", ", ".join(f"{k}={v}" for k, v in counts.items()), len(labels))

    fatal = problems_df[problems_df["reason"].isin(FATAL_REASONS)]
    if len(fatal):
        raise _fatal(
            f"{raw_dir}: {len(fatal)} bad label row(s) "
            f"({', '.join(f'{k}={v}' for k, v in fatal['reason'].value_counts().items())}); "
            "the label files must be the competition's trainLabels.csv and "
            "retinopathy_solution.csv (image,level[,Usage], level 0..4, Usage Public|Private)",
            fatal,
            problems_df,
        )
    if n_missing > max_missing:
        rows = problems_df[problems_df["reason"].isin(MISSING_REASONS)]
        hint = ""
        if reasons.get("unexpected_entry", 0) > n_missing / 2:
            hint = (
                f" Many entries are not named {{id}}_{{left|right}}{IMAGE_EXT}: "
                "are these Kaggle's files?"
            )
        raise _fatal(
            f"{raw_dir}: {reasons.get('missing_file', 0)} label row(s) without an image file and "
            f"{reasons.get('unlabelled_file', 0)} image file(s) without a label row, more than "
            f"eyepacs.max_missing={max_missing}: the folder is incomplete (an archive part "
            f"not unpacked?) or does not match its label files. Complete it, or raise "
            f"eyepacs.max_missing to go on without them.{hint}",
            rows,
            problems_df,
        )
    if n_missing:
        msg = (
            f"{reasons.get('missing_file', 0)} label row(s) without an image file and "
            f"{reasons.get('unlabelled_file', 0)} image file(s) without a label row are left "
            f"out: {_first(problems_df[problems_df['reason'].isin(MISSING_REASONS)])}"
        )
        log.warning(msg)
        summary["warnings"].append(msg)
    if reasons.get("unexpected_entry"):
        msg = (
            f"{reasons['unexpected_entry']} entries in train/ or test/ are not "
            f"{{id}}_{{left|right}}{IMAGE_EXT} and were ignored: "
            f"{_first(problems_df[problems_df['reason'] == 'unexpected_entry'])}"
        )
        log.warning(msg)
        summary["warnings"].append(msg)
    if counts != EXPECTED_COUNTS:
        msg = f"counts {counts} differ from the full competition's {EXPECTED_COUNTS}" + (
            "" if expect_full else " (expected for synthetic or subset data)"
        )
        (log.warning if expect_full else log.info)(msg)
        if expect_full:
            summary["warnings"].append(msg)
    return labels, problems_df, summary


def _first(rows: pd.DataFrame, n: int = 10) -> str:
    head = rows.head(n)
    names = [f"{f} ({r}: {d})" for f, r, d in zip(head["file"], head["reason"], head["detail"])]
    more = f" … and {len(rows) - n} more" if len(rows) > n else ""
    return ", ".join(names) + more


def _fatal(message: str, rows: pd.DataFrame, problems: pd.DataFrame) -> EyepacsError:
    exc = EyepacsError(f"{message}. First: {_first(rows)}")
    exc.problems = problems  # type: ignore[attr-defined]
    return exc


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_labels(
    raw_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    summary_json: str | os.PathLike,
    problems_csv: str | os.PathLike,
    max_missing: int = 50,
    expect_full: bool = True,
    error_problems_csv: str | os.PathLike | None = None,
) -> dict:
    """Build and write labels.csv, labels_summary.json and label_problems.csv.

    label_problems.csv is always written (only its header when the folder is
    clean). On a fatal problem the table goes to ``error_problems_csv`` (a path
    Snakemake keeps, e.g. under logs/) and the error message names it.
    """
    try:
        labels, problems, summary = build_labels(
            raw_dir, max_missing=max_missing, expect_full=expect_full
        )
    except EyepacsError as exc:
        table = getattr(exc, "problems", None)
        if table is not None and error_problems_csv is not None:
            write_csv(table, error_problems_csv)
            raise EyepacsError(f"{exc}. All problems: {error_problems_csv}") from exc
        raise
    summary["problems_file"] = str(problems_csv)
    write_csv(labels, labels_csv)
    write_csv(problems, problems_csv)
    write_json(summary_json, summary)
    if len(problems):
        log.warning("%d problem(s) listed in %s", len(problems), problems_csv)
    log.info("wrote %s (%d rows)", labels_csv, len(labels))
    return summary
