"""Grading metrics: quadratic weighted kappa, accuracy, confusion matrix, thresholds, and
the AUROC of referable DR (grade 2 or more, the figure retinal foundation-model papers
report beside kappa)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

N_LEVELS = 5
LEVELS = list(range(N_LEVELS))
# The authors' decoding of a regression output: grade = number of thresholds <= score.
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
#: Disagreement weight of (truth i, prediction j): ((i - j) / 4)^2.
QUADRATIC_WEIGHTS = (np.arange(N_LEVELS)[:, None] - np.arange(N_LEVELS)[None, :]) ** 2 / (
    N_LEVELS - 1
) ** 2


def quadratic_kappa(y_true, y_pred) -> float:
    """Quadratic weighted Cohen's kappa over the five DR levels.

    Returns ``nan`` only in the degenerate case where kappa is undefined (truth and
    prediction both a single identical level, so there is no expected disagreement).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {y_true.shape}, {y_pred.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("kappa of an empty set")
    if len(np.unique(np.concatenate([y_true, y_pred]))) == 1:
        return float("nan")
    return float(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=LEVELS))


#: Bootstrap resamples behind every kappa's confidence interval (fixed seed: reproducible).
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def kappa_bootstrap_ci(
    y_true,
    y_pred,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the quadratic kappa over the images.

    The images are resampled with replacement ``samples`` times (a fixed seed, so the
    interval is reproducible); resamples where kappa is undefined are left out.
    Returns ``(low, high)``, or ``None`` when no resample has a defined kappa.
    """
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    # one confusion matrix per resample: bincount of (resample, truth, prediction)
    codes = (
        np.arange(samples)[:, None] * N_LEVELS**2 + y_true[idx] * N_LEVELS + y_pred[idx]
    ).ravel()
    observed = np.bincount(codes, minlength=samples * N_LEVELS**2).reshape(
        samples, N_LEVELS, N_LEVELS
    )
    observed = observed.astype(np.float64)
    expected = observed.sum(2)[:, :, None] * observed.sum(1)[:, None, :] / n
    denom = (QUADRATIC_WEIGHTS * expected).sum((1, 2))
    ok = denom > 0
    if not ok.any():
        return None
    kappas = 1.0 - (QUADRATIC_WEIGHTS * observed[ok]).sum((1, 2)) / denom[ok]
    alpha = (1.0 - level) / 2
    low, high = np.quantile(kappas, [alpha, 1 - alpha])
    return float(low), float(high)


#: Referable DR: grade 2 (moderate) or more, the usual binary end point of DR screening.
REFERABLE_GRADE = 2
#: Bootstrap resamples behind an AUROC's interval (each one sorts the scores).
AUROC_BOOTSTRAP_SAMPLES = 1000


def _auroc_from_ranks(positive: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """AUROC along the last axis from 1-based average ranks (the Mann-Whitney U statistic)."""
    n_pos = positive.sum(-1)
    n_neg = positive.shape[-1] - n_pos
    u = (ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (n_pos * n_neg)


def referable_auroc(y_true, scores, grade: int = REFERABLE_GRADE) -> float | None:
    """AUROC of ``scores`` (higher: more severe) for grade >= ``grade``; None when the
    images hold only one side (no referable or no non-referable image)."""
    from scipy.stats import rankdata

    positive = np.asarray(y_true, dtype=np.int64) >= grade
    scores = np.asarray(scores, dtype=np.float64)
    if positive.shape != scores.shape or positive.ndim != 1:
        raise ValueError(
            f"y_true and scores must be 1-D of equal length, got {positive.shape}, {scores.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("non-finite scores (the model diverged?)")
    if positive.all() or not positive.any():
        return None
    return float(_auroc_from_ranks(positive, rankdata(scores)))


def auroc_bootstrap_ci(
    y_true,
    scores,
    grade: int = REFERABLE_GRADE,
    level: float = 0.95,
    samples: int = AUROC_BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    chunk: int = 100,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of :func:`referable_auroc` over the images (fixed
    seed; resamples with one side only are left out; ``chunk`` resamples at a time)."""
    from scipy.stats import rankdata

    positive = np.asarray(y_true, dtype=np.int64) >= grade
    scores = np.asarray(scores, dtype=np.float64)
    n = len(positive)
    if n == 0 or positive.all() or not positive.any():
        return None
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - start), n))
        auc = _auroc_from_ranks(positive[idx], rankdata(scores[idx], axis=1))
        values.append(auc[np.isfinite(auc)])
    aucs = np.concatenate(values)
    if len(aucs) == 0:
        return None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(aucs, [alpha, 1 - alpha])
    return float(low), float(high)


def classification_metrics(y_true, y_pred, referable_scores=None) -> dict:
    """Kappa with its 95 % bootstrap interval, accuracy and the 5x5 confusion matrix; with
    ``referable_scores`` (one per image, higher: more severe) also the AUROC of referable
    DR (grade >= 2) with its 95 % bootstrap interval.

    (confusion matrix: rows truth, columns prediction)
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    kappa = quadratic_kappa(y_true, y_pred)
    ci = kappa_bootstrap_ci(y_true, y_pred)
    out = {
        "kappa": None if math.isnan(kappa) else kappa,
        "kappa_ci95": None if ci is None else list(ci),
        "accuracy": float(np.mean(y_true == y_pred)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=LEVELS).tolist(),
        "n": int(len(y_true)),
    }
    if referable_scores is not None:
        auc_ci = auroc_bootstrap_ci(y_true, referable_scores)
        out["referable_auroc"] = referable_auroc(y_true, referable_scores)
        out["referable_auroc_ci95"] = None if auc_ci is None else list(auc_ci)
    return out


def predict_thresholds(scores, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Grades 0-4 from regression scores: the number of thresholds at or below the score.

    With the default thresholds: score < 0.5 -> 0, 0.5 <= score < 1.5 -> 1, ...,
    score >= 3.5 -> 4 (scores outside [0, 4] are clipped to the end grades).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (N_LEVELS - 1,) or np.any(np.diff(thresholds) <= 0):
        raise ValueError(
            f"need {N_LEVELS - 1} strictly increasing thresholds, got {thresholds.tolist()}"
        )
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("non-finite regression scores (the model diverged?)")
    return np.searchsorted(thresholds, scores, side="right").astype(np.int64)


def fast_quadratic_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Quadratic kappa from a bincount confusion matrix (same value as sklearn's, faster)."""
    observed = np.bincount(y_true * N_LEVELS + y_pred, minlength=N_LEVELS**2).reshape(
        N_LEVELS, N_LEVELS
    )
    observed = observed.astype(np.float64)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    denom = float((QUADRATIC_WEIGHTS * expected).sum())
    if denom == 0:
        return float("nan")
    return 1.0 - float((QUADRATIC_WEIGHTS * observed).sum()) / denom


def tune_thresholds(
    scores,
    y_true,
    init: Sequence[float] = DEFAULT_THRESHOLDS,
    rounds: int = 3,
    max_candidates: int = 256,
) -> tuple[np.ndarray, float]:
    """Thresholds that maximise the quadratic kappa of ``scores`` against ``y_true``.

    Coordinate ascent from ``init``: each threshold in turn is moved to the best of
    the candidate cut points (midpoints between consecutive distinct scores, thinned
    to at most ``max_candidates`` evenly spaced in rank) that keep the thresholds
    strictly increasing; a move is kept only when it raises
    kappa. The result is therefore monotonic and its kappa is at least that of
    ``init``. Returns (thresholds, kappa). Tune on validation data only.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    best = np.asarray(init, dtype=np.float64).copy()
    best_kappa = _kappa_or_minus_inf(y_true, predict_thresholds(scores, best))
    uniq = np.unique(scores)
    cuts = (uniq[:-1] + uniq[1:]) / 2 if len(uniq) > 1 else uniq
    if len(cuts) > max_candidates:
        cuts = cuts[np.unique(np.linspace(0, len(cuts) - 1, max_candidates).round().astype(int))]
    for _ in range(rounds):
        improved = False
        for i in range(len(best)):
            lo = best[i - 1] if i > 0 else -np.inf
            hi = best[i + 1] if i + 1 < len(best) else np.inf
            for c in cuts[(cuts > lo) & (cuts < hi)]:
                trial = best.copy()
                trial[i] = c
                k = _kappa_or_minus_inf(y_true, predict_thresholds(scores, trial))
                if k > best_kappa + 1e-12:
                    best, best_kappa, improved = trial, k, True
        if not improved:
            break
    return best, best_kappa


def _kappa_or_minus_inf(y_true, y_pred) -> float:
    k = fast_quadratic_kappa(y_true, y_pred)
    return -math.inf if math.isnan(k) else k
