"""Train / val / test splits made here, for sets that publish none (or no test labels).

Stratified by grade and seeded: within each grade the images (sorted by name, so the
result does not depend on the order of a folder listing) are shuffled by a generator of
``(seed, grade)`` and the first ``round(test_fraction * n)`` go to test, the next
``round(val_fraction * n)`` to val, the rest to train. The same config gives the same
split on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SplitSettings:
    """How a set without official splits is split (config ``external.split``)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"config: external.split.{name} must be in (0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "config: external.split.val_fraction + test_fraction must leave training "
                f"images (got {self.val_fraction} + {self.test_fraction})"
            )


def stratified_split(
    images: pd.Series, levels: pd.Series, settings: SplitSettings, splits=("test", "val")
) -> pd.Series:
    """The split of every image ('train', 'val' or 'test'), indexed like ``images``.

    ``splits`` names what is carved out of the images: ``("test", "val")`` for a set
    without any split, ``("val",)`` for a set whose official split is train / test (the
    validation images come out of its training set).
    """
    out = pd.Series("train", index=images.index, dtype=object)
    fractions = {"test": settings.test_fraction, "val": settings.val_fraction}
    order = images.astype(str).sort_values(kind="mergesort").index
    lv = levels.loc[order].astype(int)
    for level in sorted(lv.unique()):
        idx = lv.index[lv.to_numpy() == level]
        rng = np.random.default_rng(
            np.random.SeedSequence([int(settings.seed) & 0xFFFFFFFF, level])
        )
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for split in splits:
            k = int(round(fractions[split] * len(idx)))
            out.loc[idx[start : start + k]] = split
            start += k
    return out
