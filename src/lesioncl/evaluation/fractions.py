"""Label fractions: stratified, nested, deterministic subsets of the training set.

For one seed, the images of each DR level are put in a random order once
(a permutation drawn from ``SeedSequence([seed, level])``, after sorting the
images by name so that the input row order does not matter). The subset of
fraction ``f`` takes, from every level with ``n`` images, the first
``k(f, n) = min(n, max(1, round(f * n)))`` images of that order. Hence:

* stratified – each level is represented in proportion to its size;
* every level with at least one image appears in every fraction (the ``max(1, .)``;
  at 1 % of the real training set this adds at most a handful of images);
* nested – ``k`` grows with ``f`` and the order is the same for all fractions, so a
  smaller fraction is a subset of every larger one; the subset of one fraction does
  not depend on which other fractions are configured;
* deterministic – the same labels and seed always give the same subsets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

N_LEVELS = 5


def fraction_tag(fraction: float) -> str:
    """The short text of a fraction used in file names and columns (0.1 -> '0.1', 1.0 -> '1')."""
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must lie in (0, 1], got {fraction}")
    return f"{fraction:g}"


def fraction_column(fraction: float) -> str:
    """Name of the boolean column of ``fraction`` in the fractions CSV (``frac0.1``)."""
    return f"frac{fraction_tag(fraction)}"


def subset_size(fraction: float, n: int) -> int:
    """Images taken from a level of ``n`` images: round(f*n), at least 1, at most n."""
    if n <= 0:
        return 0
    return int(min(n, max(1, math.floor(fraction * n + 0.5))))


def sample_fractions(labels: pd.DataFrame, fractions: Sequence[float], seed: int) -> pd.DataFrame:
    """One row per training image: ``image``, ``level`` and a boolean column per fraction.

    ``labels`` needs the columns ``image`` and ``level`` (0-4); images must be unique.
    """
    missing = {"image", "level"} - set(labels.columns)
    if missing:
        raise ValueError(f"labels need the columns image and level; missing {sorted(missing)}")
    if labels["image"].duplicated().any():
        dup = labels.loc[labels["image"].duplicated(), "image"].iloc[:5].tolist()
        raise ValueError(f"duplicate images in the training labels, e.g. {dup}")
    levels = pd.to_numeric(labels["level"], errors="coerce")
    bad = levels.isna() | ~levels.isin(range(N_LEVELS))
    if bad.any():
        raise ValueError(
            f"levels must be integers 0-{N_LEVELS - 1}; bad rows, e.g. "
            f"{labels.loc[bad, ['image', 'level']].head(3).to_dict('records')}"
        )
    if not fractions:
        raise ValueError("no label fractions given")
    tags = [fraction_tag(f) for f in fractions]
    if len(set(tags)) != len(tags):
        raise ValueError(f"duplicate label fractions: {list(fractions)}")

    out = pd.DataFrame({"image": labels["image"].astype(str), "level": levels.astype(int)})
    out = out.sort_values("image", kind="mergesort").reset_index(drop=True)
    # rank[i] = position of image i in the random order of its level.
    rank = np.zeros(len(out), dtype=np.int64)
    counts = {}
    for level in range(N_LEVELS):
        idx = np.flatnonzero(out["level"].to_numpy() == level)
        counts[level] = len(idx)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, level]))
        rank[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    level_arr = out["level"].to_numpy()
    for fraction in sorted(float(f) for f in fractions):
        k = np.array([subset_size(fraction, counts[lv]) for lv in range(N_LEVELS)])
        out[fraction_column(fraction)] = rank < k[level_arr]
        log.info(
            "fraction %s (seed %d): %d of %d images, per level %s",
            fraction_tag(fraction),
            seed,
            int(out[fraction_column(fraction)].sum()),
            len(out),
            {lv: int(k[lv]) for lv in range(N_LEVELS)},
        )
    empty = [lv for lv in range(N_LEVELS) if counts[lv] == 0]
    if empty:
        log.warning("levels without any training image (absent from every fraction): %s", empty)
    return out


def read_fractions(path, fraction: float) -> pd.DataFrame:
    """The ``image`` and ``level`` rows of the training images in ``fraction``."""
    df = pd.read_csv(path)
    col = fraction_column(fraction)
    if col not in df.columns:
        raise ValueError(
            f"{path}: has no column {col!r} (columns: {list(df.columns)}); add "
            f"{fraction_tag(fraction)} "
            "to evaluation.fractions (the file is stale otherwise: delete it to draw it again)"
        )
    mask = df[col].astype(str).str.lower().isin(["true", "1"])
    return df.loc[mask, ["image", "level"]].reset_index(drop=True)


def write_fractions(train_csv, fractions: Sequence[float], seed: int, output) -> pd.DataFrame:
    """Draw the fractions of the training rows of ``train_csv`` (the cache CSV) and save them."""
    from lesioncl.utils import atomic_path

    rows = pd.read_csv(train_csv)
    if "split" in rows.columns and len(rows) and set(rows["split"].unique()) != {"train"}:
        raise ValueError(
            f"{train_csv}: expected only split=train rows, found {sorted(rows['split'].unique())}; "
            "pass the training cache CSV (results/cache/crops_train.csv)"
        )
    if len(rows) == 0:
        raise ValueError(f"{train_csv}: no training images; check the crop stage")
    try:
        table = sample_fractions(rows, fractions, seed)
    except ValueError as err:
        raise ValueError(f"{train_csv}: {err}") from err
    with atomic_path(output) as tmp:
        table.to_csv(tmp, index=False)
    return table
