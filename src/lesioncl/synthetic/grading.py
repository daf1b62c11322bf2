"""The lesion kinds of the synthetic fundus images and the grade rule that ties them.

The DR grade of a synthetic image is a function of its drawn lesions only
(:func:`icdr_grade`); :func:`sample_lesion_counts` draws lesion counts for a target
grade such that the rule gives that grade back. See the package docstring for the
rule in words.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

MICROANEURYSM = "microaneurysm"
HAEMORRHAGE = "haemorrhage"
HARD_EXUDATE = "hard_exudate"
SOFT_EXUDATE = "soft_exudate"
NEOVASCULARISATION = "neovascularisation"
PRERETINAL_HAEMORRHAGE = "preretinal_haemorrhage"

#: Every lesion kind the generator draws, in drawing order of the counts table.
LESION_KINDS = (
    MICROANEURYSM,
    HAEMORRHAGE,
    HARD_EXUDATE,
    SOFT_EXUDATE,
    NEOVASCULARISATION,
    PRERETINAL_HAEMORRHAGE,
)

#: Grade 3 (severe NPDR) needs at least this many intraretinal haemorrhages ...
SEVERE_MIN_HAEMORRHAGES = 15
#: ... with at least one in each of this many quadrants of the field of view.
SEVERE_MIN_QUADRANTS = 4

#: Lesion extents in pixels of a 512 px wide field of view (diameter of the disk).
#: (low, high) of the drawn size: the diameter for round lesions, the longest
#: extent otherwise; for hard exudates the size of one spot and of the cluster.
SIZES_AT_512 = {
    MICROANEURYSM: (2.0, 5.0),
    HAEMORRHAGE: (8.0, 30.0),
    HARD_EXUDATE: (2.0, 7.0),  # one exudate spot
    "hard_exudate_cluster": (10.0, 40.0),
    SOFT_EXUDATE: (15.0, 35.0),
    NEOVASCULARISATION: (25.0, 60.0),
    PRERETINAL_HAEMORRHAGE: (45.0, 90.0),
}

#: Default grade distribution of the EyePACS-like set (grades 0..4); more balanced
#: than Kaggle's (73/7/15/2.5/2 %) so that a small demo's kappa means something.
DEFAULT_EYEPACS_GRADES = (0.35, 0.15, 0.2, 0.15, 0.15)
#: IDRiD's segmentation images are mostly moderate to proliferative.
DEFAULT_IDRID_GRADES = (0.0, 0.0, 0.3, 0.35, 0.35)


def icdr_grade(counts: Mapping[str, int], haemorrhage_quadrants: int) -> int:
    """The DR grade (0-4) of an image with these lesion counts (the documented rule).

    ``counts`` maps lesion kinds (:data:`LESION_KINDS`, missing = 0) to the number of
    drawn lesions; ``haemorrhage_quadrants`` is the number of quadrants of the field
    of view (split at its centre) holding the centre of at least one intraretinal
    haemorrhage.
    """
    unknown = set(counts) - set(LESION_KINDS)
    if unknown:
        raise ValueError(f"unknown lesion kinds {sorted(unknown)}; expected some of {LESION_KINDS}")
    n = {kind: int(counts.get(kind, 0)) for kind in LESION_KINDS}
    if any(v < 0 for v in n.values()):
        raise ValueError(f"negative lesion count in {n}")
    if n[NEOVASCULARISATION] > 0 or n[PRERETINAL_HAEMORRHAGE] > 0:
        return 4
    if n[HAEMORRHAGE] >= SEVERE_MIN_HAEMORRHAGES and haemorrhage_quadrants >= SEVERE_MIN_QUADRANTS:
        return 3
    if n[HAEMORRHAGE] + n[HARD_EXUDATE] + n[SOFT_EXUDATE] > 0:
        return 2
    if n[MICROANEURYSM] > 0:
        return 1
    return 0


def check_grade_distribution(p: Sequence[float], name: str = "grade_distribution") -> np.ndarray:
    """Validate five non-negative weights for grades 0..4; return them normalised."""
    arr = np.asarray(list(p), dtype=np.float64)
    if arr.shape != (5,) or not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() <= 0:
        raise ValueError(
            f"config: synthetic {name} must be five non-negative weights for grades 0..4 "
            f"with a positive sum, got {list(p)}"
        )
    return arr / arr.sum()


def sample_lesion_counts(
    grade: int, rng: np.random.Generator, rich: bool = False
) -> dict[str, int]:
    """Lesion counts for an image of ``grade`` (0-4) that the rule maps back to ``grade``.

    ``rich`` draws more lesions (IDRiD-like images, chosen for having many).
    Grade 3 needs its haemorrhages spread over all four quadrants; the renderer
    places them so (``spread_haemorrhages`` in :func:`haemorrhage_spread_needed`).
    """
    if grade not in range(5):
        raise ValueError(f"grade must be 0..4, got {grade}")
    n = dict.fromkeys(LESION_KINDS, 0)

    def between(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi + 1))

    if grade == 1:
        n[MICROANEURYSM] = between(4, 12) if rich else between(1, 8)
    elif grade == 2:
        n[MICROANEURYSM] = between(6, 20) if rich else between(2, 15)
        n[HAEMORRHAGE] = between(3, 12) if rich else between(0, 10)
        n[HARD_EXUDATE] = between(2, 6) if rich else between(0, 4)
        n[SOFT_EXUDATE] = _rich_soft(rng) if rich else between(0, 2)
        if n[HAEMORRHAGE] + n[HARD_EXUDATE] + n[SOFT_EXUDATE] == 0:
            n[(HAEMORRHAGE, HARD_EXUDATE, SOFT_EXUDATE)[between(0, 2)]] = 1
    elif grade == 3:
        n[MICROANEURYSM] = between(12, 30) if rich else between(8, 25)
        n[HAEMORRHAGE] = between(18, 32) if rich else between(SEVERE_MIN_HAEMORRHAGES, 30)
        n[HARD_EXUDATE] = between(3, 10) if rich else between(1, 8)
        n[SOFT_EXUDATE] = _rich_soft(rng) if rich else between(0, 4)
    elif grade == 4:
        n[MICROANEURYSM] = between(12, 30) if rich else between(6, 25)
        n[HAEMORRHAGE] = between(12, 30) if rich else between(8, 30)
        n[HARD_EXUDATE] = between(2, 10) if rich else between(0, 8)
        n[SOFT_EXUDATE] = _rich_soft(rng) if rich else between(0, 4)
        kind = rng.random()
        if kind < 0.6:  # new vessels only
            n[NEOVASCULARISATION] = between(1, 3)
        elif kind < 0.8:  # preretinal haemorrhage only
            n[PRERETINAL_HAEMORRHAGE] = 1
        else:  # both
            n[NEOVASCULARISATION] = between(1, 2)
            n[PRERETINAL_HAEMORRHAGE] = 1
    return n


def _rich_soft(rng: np.random.Generator) -> int:
    """Soft exudates of a lesion-rich image: about half have none (IDRiD: 40 of 81 have any)."""
    return 0 if rng.random() < 0.5 else int(rng.integers(1, 5))


def haemorrhage_spread_needed(grade: int) -> bool:
    """Whether the haemorrhages must cover all four quadrants (grade 3 only).

    Grade 2 draws fewer than :data:`SEVERE_MIN_HAEMORRHAGES` haemorrhages, so their
    placement never makes an image severe; grade 4 is proliferative whatever the
    spread.
    """
    return grade == 3
