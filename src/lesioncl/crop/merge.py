"""The shard tables merged into the manifest, the rejects and the summary (rule crop_merge)."""

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lesioncl.crop.box import (
    BOX_METHODS,
    DCT_SCALES,
    DETECT_SPLITS,
    INT_COLUMNS,
    MANIFEST_COLUMNS,
    REJECT_COLUMNS,
    REJECT_REASONS,
    SHARD_COLUMNS,
)
from lesioncl.crop.qc import qc_figure
from lesioncl.crop.shards import read_labels, shard_rows
from lesioncl.utils import atomic_path, write_json

log = logging.getLogger("lesioncl.crop")


# --------------------------------------------------------------------------- merge


def _shard_of(path: str | os.PathLike) -> int:
    stem = Path(path).name.removesuffix(".csv")
    if not stem.startswith("shard_") or not stem[6:].isdigit():
        raise ValueError(f"{path}: a shard table must be named shard_<n>.csv")
    return int(stem[6:])


def merge_shards(
    labels_csv: str | os.PathLike,
    tables: Iterable[str | os.PathLike],
    n_shards: int,
    manifest_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    qc_path: str | os.PathLike | None = None,
    qc_images: int = 6,
) -> dict:
    """Concatenate the shard tables into the manifest, the reject table and the summary.

    Fails (ValueError) unless every labels row is in exactly one shard table, as
    cropped (its crop file present) or rejected with a known reason.
    """
    labels = read_labels(labels_csv)
    tables = list(tables)
    shards = sorted(_shard_of(t) for t in tables)
    if shards != list(range(n_shards)):
        raise ValueError(f"expected the shard tables 0..{n_shards - 1}, got shards {shards}")
    parts = []
    for t in tables:
        part = pd.read_csv(
            t,
            dtype={
                "image": str,
                "patient_id": str,
                "eye": str,
                "split": str,
                "raw_path": str,
                "path": str,
                "det_path": str,
                "reason": str,
                "detail": str,
            },
        )
        missing = [c for c in SHARD_COLUMNS if c not in part.columns]
        if missing:
            raise ValueError(f"{t}: missing column(s) {missing}; rerun rule crop_shard")
        expected = shard_rows(len(labels), _shard_of(t), n_shards)
        if not np.array_equal(np.sort(part["row"].to_numpy()), expected):
            raise ValueError(
                f"{t}: rows do not match shard {_shard_of(t)} of {n_shards} of {labels_csv} "
                f"({len(part)} rows, {len(expected)} expected); labels changed? rerun rule "
                "crop_shard"
            )
        names = labels["image"].to_numpy()[part["row"].to_numpy()]
        if not np.array_equal(names, part["image"].to_numpy()):
            raise ValueError(f"{t}: image names differ from {labels_csv}; rerun rule crop_shard")
        parts.append(part)
    table = pd.concat(parts, ignore_index=True).sort_values("row").reset_index(drop=True)
    if len(table) != len(labels) or not np.array_equal(
        table["row"].to_numpy(), np.arange(len(labels))
    ):
        raise ValueError(
            f"the shard tables do not cover the {len(labels)} rows of {labels_csv} exactly once"
        )

    bad_status = set(table["status"]) - {"ok", "rejected"}
    if bad_status:
        raise ValueError(f"unknown status value(s) {sorted(bad_status)} in the shard tables")
    ok = table[table["status"] == "ok"]
    rej = table[table["status"] == "rejected"]
    bad_reason = set(rej["reason"]) - set(REJECT_REASONS)
    if bad_reason:
        raise ValueError(f"unknown reject reason(s) {sorted(bad_reason)} in the shard tables")
    detect = ok["split"].isin(DETECT_SPLITS).to_numpy()
    if (ok["det_path"].isna().to_numpy() == detect).any():
        raise ValueError(
            f"the cropped images of {list(DETECT_SPLITS)} need a detection crop (det_path) and "
            "the others none; the shard tables do not agree; rerun rule crop_shard"
        )
    absent = [p for p in ok["path"] if not Path(p).is_file()]
    absent += [p for p in ok.loc[detect, "det_path"] if not Path(p).is_file()]
    if absent:
        raise ValueError(
            f"{len(absent)} crop file(s) listed as cropped do not exist, e.g. {absent[:3]}; "
            "rerun rule crop_shard"
        )

    det_columns = ["det_path", "det_width", "det_height", "det_scale"]
    int_columns = [c for c in INT_COLUMNS if c not in det_columns]
    if ok[int_columns + ["path", "box_method"]].isna().any().any() or (
        ok.loc[detect, det_columns].isna().any().any()
    ):
        raise ValueError(
            "a cropped row of the shard tables lacks its paths, sizes or box; rerun rule crop_shard"
        )
    ok = ok.astype({c: "int64" for c in int_columns} | {c: "Int64" for c in det_columns[1:]})
    manifest = ok[list(MANIFEST_COLUMNS)]
    rejects = rej.drop(columns="path").rename(columns={"raw_path": "path"})[list(REJECT_COLUMNS)]
    with atomic_path(manifest_path) as tmp:
        manifest.to_csv(tmp, index=False)
    with atomic_path(rejects_path) as tmp:
        rejects.to_csv(tmp, index=False)

    splits = sorted(labels["split"].unique())
    count = lambda df: {s: int((df["split"] == s).sum()) for s in splits} | {"total": len(df)}  # noqa: E731
    summary = {
        "n_shards": n_shards,
        "input": count(labels),
        "cropped": count(ok),
        "rejected": count(rej),
        "reasons": {r: int((rej["reason"] == r).sum()) for r in REJECT_REASONS},
        "reasons_by_split": {
            s: {r: int(((rej["reason"] == r) & (rej["split"] == s)).sum()) for r in REJECT_REASONS}
            for s in splits
        },
        "box_method": {m: int((ok["box_method"] == m).sum()) for m in BOX_METHODS},
        "decode_scale": {str(k): int((ok["decode_scale"] == k).sum()) for k in DCT_SCALES},
        "det_scale": {str(k): int((ok["det_scale"] == k).sum()) for k in DCT_SCALES},
    }
    for key in [*splits, "total"]:
        if summary["input"][key] != summary["cropped"][key] + summary["rejected"][key]:
            raise ValueError(f"crop counts do not add up for {key}: {summary}")
    if sum(summary["reasons"].values()) != summary["rejected"]["total"]:
        raise ValueError(f"reject reasons do not add up: {summary}")
    write_json(summary_path, summary)

    log.info(
        "crop summary: %d input = %d cropped + %d rejected",
        summary["input"]["total"],
        summary["cropped"]["total"],
        summary["rejected"]["total"],
    )
    for s in splits:
        log.info(
            "  %s: %d input = %d cropped + %d rejected",
            s,
            summary["input"][s],
            summary["cropped"][s],
            summary["rejected"][s],
        )
    for reason, n in summary["reasons"].items():
        if n:
            log.warning("  rejected as %s: %d", reason, n)
    if qc_path is not None:
        qc_figure(ok, summary, qc_path, qc_images)
    return summary
