"""Grading metrics, threshold decoding/tuning and the label-fraction sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from lesioncl.evaluation.fractions import (
    fraction_column,
    fraction_tag,
    read_fractions,
    sample_fractions,
    subset_size,
)
from lesioncl.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    auroc_bootstrap_ci,
    classification_metrics,
    fast_quadratic_kappa,
    kappa_bootstrap_ci,
    predict_thresholds,
    quadratic_kappa,
    referable_auroc,
    tune_thresholds,
)


# --- kappa -------------------------------------------------------------------------


def test_kappa_perfect_and_reversed():
    y = [0, 1, 2, 3, 4]
    assert quadratic_kappa(y, y) == pytest.approx(1.0)
    # Anti-diagonal: sum W*O = (16+4+0+4+16)/16 = 2.5, sum W*E = 0.2*100/16 = 1.25.
    assert quadratic_kappa(y, y[::-1]) == pytest.approx(-1.0)


def test_kappa_hand_computed_partial_agreement():
    # O = [[1,1],[0,2]] (levels 0/1); sum W*O = 1/16; E = [[.5,1.5],[.5,1.5]], sum W*E = 2/16.
    assert quadratic_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    # Off by two costs four times off by one: truth [0,2], pred [0,0] vs [0,1].
    k_far = quadratic_kappa([0, 2, 0, 2], [0, 0, 0, 2])
    k_near = quadratic_kappa([0, 2, 0, 2], [0, 1, 0, 2])
    assert k_near > k_far


def test_kappa_constant_prediction_is_zero_and_degenerate_is_nan():
    assert quadratic_kappa([0, 1, 2, 3], [0, 0, 0, 0]) == pytest.approx(0.0)
    assert np.isnan(quadratic_kappa([2, 2, 2], [2, 2, 2]))
    with pytest.raises(ValueError):
        quadratic_kappa([0, 1], [0])


def test_fast_kappa_matches_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 5, 300)
        p = np.clip(y + rng.integers(-2, 3, 300), 0, 4)
        ref = cohen_kappa_score(y, p, weights="quadratic", labels=[0, 1, 2, 3, 4])
        assert fast_quadratic_kappa(y, p) == pytest.approx(ref, abs=1e-12)


def test_classification_metrics_confusion_matrix():
    m = classification_metrics([0, 0, 1, 4], [0, 1, 1, 3])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["n"] == 4
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() == 4
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[4, 3] == 1
    assert classification_metrics([3, 3], [3, 3])["kappa"] is None  # JSON-safe


# --- thresholds --------------------------------------------------------------------


def test_predict_thresholds_boundaries_and_clipping():
    scores = [-3.0, 0.0, 0.49, 0.5, 1.49, 1.5, 2.4999, 2.5, 3.49, 3.5, 4.0, 17.0]
    expect = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert predict_thresholds(scores).tolist() == expect
    assert predict_thresholds([0.9, 1.1], (1.0, 2.0, 3.0, 3.5)).tolist() == [0, 1]


def test_predict_thresholds_rejects_bad_thresholds_and_scores():
    with pytest.raises(ValueError):
        predict_thresholds([1.0], (0.5, 0.4, 2.5, 3.5))
    with pytest.raises(ValueError):
        predict_thresholds([1.0], (0.5, 1.5))
    with pytest.raises(ValueError, match="non-finite"):
        predict_thresholds([np.nan])


def test_tuned_thresholds_monotonic_and_not_worse():
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=400, p=[0.5, 0.15, 0.15, 0.1, 0.1])
    # A biased, compressed regressor: the default thresholds decode it badly.
    scores = 0.6 + 0.45 * y + rng.normal(0, 0.12, len(y))
    default_kappa = quadratic_kappa(y, predict_thresholds(scores, DEFAULT_THRESHOLDS))
    tuned, kappa = tune_thresholds(scores, y)
    assert np.all(np.diff(tuned) > 0)
    assert kappa >= default_kappa
    assert kappa == pytest.approx(quadratic_kappa(y, predict_thresholds(scores, tuned)))
    assert kappa > default_kappa + 0.05  # it really moves the cut points
    assert kappa > 0.9


def test_tuned_thresholds_keep_an_optimal_start():
    y = np.array([0, 1, 2, 3, 4] * 10)
    scores = y.astype(float)  # already perfect with the defaults
    tuned, kappa = tune_thresholds(scores, y)
    assert kappa == pytest.approx(1.0)
    assert np.allclose(tuned, DEFAULT_THRESHOLDS)


# --- label fractions ---------------------------------------------------------------


def _labels(n_per_level=(500, 60, 120, 20, 3)):
    rows = []
    for level, n in enumerate(n_per_level):
        rows += [{"image": f"{level}_{i}_left", "level": level} for i in range(n)]
    return pd.DataFrame(rows)


def test_fraction_names():
    assert fraction_tag(0.1) == "0.1" and fraction_tag(1.0) == "1" and fraction_tag(0.01) == "0.01"
    assert fraction_column(0.25) == "frac0.25"
    with pytest.raises(ValueError):
        fraction_tag(0)
    with pytest.raises(ValueError):
        fraction_tag(1.5)


def test_fractions_stratified_with_every_level():
    labels = _labels()
    fr = sample_fractions(labels, [0.01, 0.1, 0.5, 1.0], seed=3)
    counts = labels["level"].value_counts().sort_index()
    for f in (0.01, 0.1, 0.5, 1.0):
        sel = fr.loc[fr[fraction_column(f)], "level"].value_counts().sort_index()
        assert list(sel.index) == [0, 1, 2, 3, 4]  # every level present
        for level, n in counts.items():
            assert sel[level] == subset_size(f, n) == min(n, max(1, round(f * n + 1e-9)))
    assert fr[fraction_column(1.0)].all()
    assert fr[fraction_column(0.01)].sum() == 5 + 1 + 1 + 1 + 1


def test_fractions_nested_deterministic_and_order_free():
    labels = _labels()
    fr = sample_fractions(labels, [0.05, 0.25, 0.1, 1.0], seed=7)
    cols = [fraction_column(f) for f in (0.05, 0.1, 0.25, 1.0)]
    for small, large in zip(cols, cols[1:]):
        assert not (fr[small] & ~fr[large]).any()  # smaller subset of larger
    again = sample_fractions(labels.sample(frac=1, random_state=1), [0.05, 0.25, 0.1, 1.0], seed=7)
    pd.testing.assert_frame_equal(fr, again)
    # The subset of one fraction does not depend on the others configured.
    alone = sample_fractions(labels, [0.1], seed=7)
    assert (alone[fraction_column(0.1)] == fr[fraction_column(0.1)]).all()
    other = sample_fractions(labels, [0.1], seed=8)
    assert (other[fraction_column(0.1)] != fr[fraction_column(0.1)]).any()


def test_fractions_bad_input():
    with pytest.raises(ValueError, match="levels"):
        sample_fractions(pd.DataFrame({"image": ["a"], "level": [7]}), [0.5], 0)
    with pytest.raises(ValueError, match="duplicate"):
        sample_fractions(pd.DataFrame({"image": ["a", "a"], "level": [0, 1]}), [0.5], 0)
    with pytest.raises(ValueError, match="level"):
        sample_fractions(pd.DataFrame({"image": ["a"]}), [0.5], 0)


def test_read_fractions_roundtrip_and_stale(tmp_path):
    fr = sample_fractions(_labels(), [0.1, 1.0], seed=0)
    path = tmp_path / "seed0.csv"
    fr.to_csv(path, index=False)
    rows = read_fractions(path, 0.1)
    assert len(rows) == fr[fraction_column(0.1)].sum()
    assert list(rows.columns) == ["image", "level"]
    with pytest.raises(ValueError, match="stale"):
        read_fractions(path, 0.25)


def test_write_fractions(tmp_path):
    from lesioncl.evaluation.fractions import write_fractions

    csv = tmp_path / "crops_train.csv"
    _labels().assign(split="train").to_csv(csv, index=False)
    out = tmp_path / "f" / "seed0.csv"
    table = write_fractions(csv, [0.1, 1.0], 0, out)
    back = pd.read_csv(out)
    assert list(back.columns) == ["image", "level", "frac0.1", "frac1"]
    assert back["frac0.1"].sum() == table["frac0.1"].sum()
    _labels().assign(split="val").to_csv(csv, index=False)
    with pytest.raises(ValueError, match="split=train"):
        write_fractions(csv, [0.1], 0, out)


def _naive_bootstrap(y, p, samples, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(samples, len(y)))
    values = []
    for row in idx:
        if len(np.unique(np.concatenate([y[row], p[row]]))) > 1:
            k = cohen_kappa_score(y[row], p[row], weights="quadratic", labels=range(5))
            if np.isfinite(k):
                values.append(k)
    return np.quantile(values, [0.025, 0.975])


def test_kappa_bootstrap_ci_matches_a_plain_loop_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 120)
    p = np.clip(y + rng.integers(-1, 2, 120), 0, 4)
    low, high = kappa_bootstrap_ci(y, p, samples=300, seed=5)
    ref = _naive_bootstrap(y, p, 300, 5)
    assert low == pytest.approx(ref[0], abs=1e-9) and high == pytest.approx(ref[1], abs=1e-9)
    kappa = quadratic_kappa(y, p)
    assert low < kappa < high
    assert kappa_bootstrap_ci(y, p) == kappa_bootstrap_ci(y, p)  # fixed seed: reproducible


def test_kappa_bootstrap_ci_narrows_with_more_images():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 5, n)
        p = np.where(rng.random(n) < 0.7, y, rng.integers(0, 5, n))
        low, high = kappa_bootstrap_ci(y, p)
        return high - low

    assert width(1200) < 0.6 * width(100)


def test_referable_auroc_is_sklearns_with_ties_and_an_interval():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 400)
    scores = np.round(y + rng.normal(0, 1.5, 400), 1)  # rounded: many ties
    auc = referable_auroc(y, scores)
    assert auc == pytest.approx(roc_auc_score(y >= 2, scores), abs=1e-12)
    assert referable_auroc(y, -scores) == pytest.approx(1 - auc, abs=1e-12)
    low, high = auroc_bootstrap_ci(y, scores)
    assert low < auc < high and 0.05 < high - low < 0.2
    assert auroc_bootstrap_ci(y, scores) == (low, high)  # a fixed seed: reproducible
    # a perfect ranking, and undefined cases (one side only) as None
    assert referable_auroc(y, y.astype(float)) == 1.0
    assert referable_auroc([0, 1, 1], [0.1, 0.2, 0.3]) is None
    assert auroc_bootstrap_ci([3, 4], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="non-finite"):
        referable_auroc([0, 3], [0.1, np.nan])


def test_classification_metrics_carry_the_auroc_when_given_scores():
    y = np.array([0, 1, 2, 3, 4] * 6)
    scores = y + 0.1 * np.arange(30) % 0.7
    m = classification_metrics(y, y, scores)
    assert m["referable_auroc"] == pytest.approx(referable_auroc(y, scores))
    assert len(m["referable_auroc_ci95"]) == 2
    assert "referable_auroc" not in classification_metrics(y, y)


def test_classification_metrics_carry_the_interval():
    y = np.array([0, 1, 2, 3, 4] * 6)
    m = classification_metrics(y, y)
    assert m["kappa_ci95"] == [1.0, 1.0]
    assert classification_metrics(np.zeros(4, int), np.zeros(4, int))["kappa_ci95"] is None  # undefined
