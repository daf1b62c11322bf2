"""Linear evaluation: a linear classifier on the frozen backbone's cached features.

Choices (documented here and in the README):

* Head – a 5-way softmax (multinomial logistic regression) trained with
  cross-entropy (plain by default, class-balanced weights optional); the grade is
  the arg-max. The regression head of the fine-tuning recipe is kept for
  fine-tuning, where it is the authors' choice.
* Features are standardised with the mean and std of the labelled training subset
  (the fraction), never with validation or test statistics.
* Optimiser – Adam with an L2 penalty (``weight_decay``), mini-batches drawn by a
  seeded generator, a fixed number of epochs.
* Model selection on the validation split only: every ``weight_decay`` of the grid
  is trained, validation kappa is measured after every epoch, and the (weight
  decay, epoch) with the best validation kappa is kept. The test split is scored
  once, with that classifier.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesioncl.evaluation.features import load_features
from lesioncl.evaluation.fractions import read_fractions
from lesioncl.evaluation.metrics import (
    N_LEVELS,
    REFERABLE_GRADE,
    classification_metrics,
    quadratic_kappa,
)
from lesioncl.progress import progress
from lesioncl.utils import write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearSettings:
    """What decides a linear evaluation (config ``evaluation.linear``; defaults: the
    schema's). Rule ``eval_linear`` fills it from ``params.settings``."""

    epochs: int = 100  # epochs of every weight decay's run; the best epoch is kept
    lr: float = 0.01  # Adam's learning rate
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)  # the grid, selected on val
    batch_size: int = 256  # mini-batch of the labelled training features
    class_balanced: bool = False  # class-balanced cross-entropy weights

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_decays", tuple(self.weight_decays))  # a list from YAML


def standard_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-dimension mean and std of ``train`` (std 1 where a dimension is constant)."""
    mean = train.mean(0, keepdims=True)
    std = train.std(0, keepdims=True)
    return mean, np.where(std < 1e-6, 1.0, std)


def _standardized(a: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((a - mean) / std).astype(np.float32)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Standardise every array with the per-dimension mean/std of ``train``."""
    mean, std = standard_stats(train)
    return [_standardized(a, mean, std) for a in (train, *others)]


def head_record(state: dict, mean: np.ndarray, std: np.ndarray) -> dict:
    """The chosen head with the standardisation it was trained behind (``mean``, ``std``
    of :func:`standard_stats`; plain lists in the result JSON): what :func:`apply_head`
    needs to grade other images' features as they are."""
    return {
        "weight": state["weight"].tolist(),
        "bias": state["bias"].tolist(),
        "mean": mean[0].tolist(),
        "std": std[0].tolist(),
    }


def apply_head(head: dict, features: np.ndarray) -> np.ndarray:
    """The five grades' probabilities of a saved head (:func:`head_record`) on ``features``."""
    mean, std = np.asarray(head["mean"]), np.asarray(head["std"])
    if features.shape[1] != len(mean):
        raise ValueError(
            f"features of dimension {features.shape[1]} for a head trained on {len(mean)}"
        )
    x = _standardized(features, mean, std)
    state = {
        "weight": torch.tensor(head["weight"], dtype=torch.float32),
        "bias": torch.tensor(head["bias"], dtype=torch.float32),
    }
    return linear_probabilities(state, x)


def class_weights(y: np.ndarray, n_classes: int = N_LEVELS) -> np.ndarray:
    """Inverse-frequency weights n / (K * n_k) for the classes present (0 for absent ones)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w


def _kappa(y, pred) -> float:
    k = quadratic_kappa(y, pred)
    return -math.inf if math.isnan(k) else k


def train_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    class_balanced: bool = False,
    writer=None,
    tag: str = "",
) -> dict:
    """Train one linear head; returns the best-on-validation state, epoch, kappa and curves.

    Inputs must already be standardised. Deterministic for a given ``seed``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    xv = torch.from_numpy(x_val)
    head = nn.Linear(xt.shape[1], N_LEVELS)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    weight = torch.tensor(class_weights(y_train), dtype=torch.float32) if class_balanced else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    best = {"kappa": -math.inf, "epoch": 0, "state": copy.deepcopy(head.state_dict())}
    curve = []
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(xt), batch_size):
            idx = perm[start : start + batch_size]
            loss = loss_fn(head(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        head.eval()
        with torch.no_grad():
            pred = head(xv).argmax(1).numpy()
        kappa = _kappa(y_val, pred)
        curve.append(
            {
                "epoch": epoch,
                "train_loss": total / seen,
                "val_kappa": kappa if math.isfinite(kappa) else None,
            }
        )
        if writer is not None:
            writer.add_scalar(f"{tag}train_loss", total / seen, epoch)
            writer.add_scalar(f"{tag}val_kappa", kappa if math.isfinite(kappa) else 0.0, epoch)
        if kappa > best["kappa"]:
            best = {"kappa": kappa, "epoch": epoch, "state": copy.deepcopy(head.state_dict())}
    best["curve"] = curve
    return best


def linear_probabilities(state: dict, x: np.ndarray) -> np.ndarray:
    """The head's softmax over the five grades, (N, 5)."""
    head = nn.Linear(state["weight"].shape[1], N_LEVELS)
    head.load_state_dict(state)
    with torch.no_grad():
        return torch.softmax(head(torch.from_numpy(x)), dim=1).numpy()


def referable_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(grade >= 2) from the five grades' probabilities: the referable-DR score."""
    return probabilities[:, REFERABLE_GRADE:].sum(1)


def linear_evaluation(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 0.01,
    weight_decays: Sequence[float] = (0.0, 1e-3, 1e-2, 1e-1),
    batch_size: int = 256,
    seed: int = 0,
    class_balanced: bool = False,
    writer=None,
) -> dict:
    """Grid over weight decay, selection on validation, a single test evaluation."""
    if len(x_train) == 0:
        raise ValueError("no labelled training images in this fraction")
    mean, std = standard_stats(x_train)  # also saved with the head (external validation)
    xs_train, xs_val, xs_test = (_standardized(a, mean, std) for a in (x_train, x_val, x_test))
    runs = []
    for wd in progress(list(weight_decays), desc="linear (weight decay grid)", unit="wd"):
        run = train_linear(
            xs_train,
            y_train,
            xs_val,
            y_val,
            epochs=epochs,
            lr=lr,
            weight_decay=wd,
            batch_size=batch_size,
            seed=seed,
            class_balanced=class_balanced,
            writer=writer,
            tag=f"wd{wd:g}/",
        )
        run["weight_decay"] = float(wd)
        log.info("weight decay %g: best val kappa %.4f at epoch %d", wd, run["kappa"], run["epoch"])
        runs.append(run)
    chosen = max(runs, key=lambda r: r["kappa"])  # first best wins ties (grid order)
    val_prob = linear_probabilities(chosen["state"], xs_val)
    test_prob = linear_probabilities(chosen["state"], xs_test)
    return {
        "selected": {"weight_decay": chosen["weight_decay"], "epoch": chosen["epoch"]},
        "head": head_record(chosen["state"], mean, std),
        "grid": [
            {
                "weight_decay": r["weight_decay"],
                "best_epoch": r["epoch"],
                "best_val_kappa": r["kappa"] if math.isfinite(r["kappa"]) else None,
            }
            for r in runs
        ],
        "val_curve": chosen["curve"],
        "val": classification_metrics(y_val, val_prob.argmax(1), referable_probability(val_prob)),
        "test": classification_metrics(
            y_test, test_prob.argmax(1), referable_probability(test_prob)
        ),
    }


def _subset_features(train: dict, fraction_rows, features_path) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(train["images"].tolist())}
    missing = [im for im in fraction_rows["image"] if im not in index]
    if missing:
        raise ValueError(
            f"{features_path}: {len(missing)} images of the label fraction have no features "
            f"(e.g. {missing[:3]}); the fractions file and the image cache are out of sync, rerun "
            "both"
        )
    idx = np.array([index[im] for im in fraction_rows["image"]], dtype=np.int64)
    levels = train["levels"][idx]
    if not np.array_equal(levels, fraction_rows["level"].to_numpy()):
        raise ValueError(
            f"{features_path}: levels differ from the fractions file; rerun the fractions rule"
        )
    return train["features"][idx], levels


def clear_event_files(directory) -> None:
    """Delete old TensorBoard event files in ``directory`` (so a rerun does not overlay them)."""
    directory = Path(directory)
    if directory.is_dir():
        for f in directory.rglob("events.out.tfevents.*"):
            f.unlink()


def skipped_result(method: str, evaluation: str, fraction: float, seed: int, reason: str) -> dict:
    """The result record of a method that could not run (shown as 'skipped' in the table)."""
    return {
        "method": method,
        "evaluation": evaluation,
        "fraction": float(fraction),
        "seed": int(seed),
        "skipped": True,
        "skip_reason": reason,
    }


def run_linear(
    *,
    method: str,
    fraction: float,
    seed: int,
    train_features: str | os.PathLike,
    val_features: str | os.PathLike,
    test_features: str | os.PathLike,
    fractions_csv: str | os.PathLike,
    output: str | os.PathLike,
    settings: LinearSettings = LinearSettings(),
    tensorboard_dir: str | os.PathLike | None = None,
    threads: int = 1,
) -> dict:
    """One linear-evaluation run (method x fraction x seed) -> metrics JSON."""
    torch.set_num_threads(max(1, int(threads)))
    train, val, test = (load_features(p) for p in (train_features, val_features, test_features))
    reason = train["skipped"] or val["skipped"] or test["skipped"]
    if reason:
        log.warning("method %s was skipped at feature extraction: %s", method, reason)
        result = skipped_result(method, "linear", fraction, seed, reason)
        write_json(output, result)
        return result
    rows = read_fractions(fractions_csv, fraction)
    x_train, y_train = _subset_features(train, rows, train_features)
    log.info(
        "linear %s, fraction %g, seed %d: %d labelled images (per level %s), %d val, %d test, "
        "dim %d",
        method,
        fraction,
        seed,
        len(y_train),
        np.bincount(y_train, minlength=N_LEVELS).tolist(),
        len(val["levels"]),
        len(test["levels"]),
        x_train.shape[1],
    )
    writer = None
    if tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        clear_event_files(tensorboard_dir)  # a rerun starts a fresh curve
        writer = SummaryWriter(str(tensorboard_dir))
    try:
        res = linear_evaluation(
            x_train,
            y_train,
            val["features"],
            val["levels"],
            test["features"],
            test["levels"],
            epochs=settings.epochs,
            lr=settings.lr,
            weight_decays=settings.weight_decays,
            batch_size=settings.batch_size,
            seed=seed,
            class_balanced=settings.class_balanced,
            writer=writer,
        )
    finally:
        if writer is not None:
            writer.close()
    result = {
        "method": method,
        "evaluation": "linear",
        "fraction": float(fraction),
        "seed": int(seed),
        "skipped": False,
        "n_train": int(len(y_train)),
        "n_train_per_level": np.bincount(y_train, minlength=N_LEVELS).tolist(),
        "head": "softmax-ce" + ("-balanced" if settings.class_balanced else ""),
        "settings": {**asdict(settings), "weight_decays": list(settings.weight_decays)},
        **res,
    }
    write_json(output, result)
    log.info(
        "linear %s frac %g seed %d: val kappa %s, test kappa %s (wd %g, epoch %d)",
        method,
        fraction,
        seed,
        _fmt(result["val"]["kappa"]),
        _fmt(result["test"]["kappa"]),
        res["selected"]["weight_decay"],
        res["selected"]["epoch"],
    )
    return result


def _fmt(k) -> str:
    return "n/a" if k is None else f"{k:.4f}"


def run_transfer(
    *,
    method: str,
    seed: int,
    source_result: str | os.PathLike,
    test_features: str | os.PathLike,
    output: str | os.PathLike,
) -> dict:
    """External validation: the head a linear evaluation chose (``source_result``, e.g.
    EyePACS at 100 % of its labels) grades another set's test features as it is, with
    no training on that set -> metrics JSON (evaluation ``transfer_linear``)."""
    source = json.loads(Path(source_result).read_text())
    fraction = float(source.get("fraction", 1.0))
    test = load_features(test_features)
    reason = source.get("skip_reason") if source.get("skipped") else test["skipped"]
    if reason:
        result = skipped_result(method, "transfer_linear", fraction, seed, reason)
        write_json(output, result)
        return result
    if "head" not in source:
        raise ValueError(
            f"{source_result} holds no head (written by an earlier version); rerun its "
            f"linear evaluation: --forcerun eval_linear"
        )
    probs = apply_head(source["head"], test["features"])
    result = {
        "method": method,
        "evaluation": "transfer_linear",
        "fraction": fraction,
        "seed": int(seed),
        "skipped": False,
        "source": str(source_result),
        "test": classification_metrics(
            test["levels"], probs.argmax(1), referable_probability(probs)
        ),
    }
    write_json(output, result)
    log.info(
        "transfer %s seed %d (head from %s): test kappa %s, AUROC %s",
        method,
        seed,
        source_result,
        _fmt(result["test"]["kappa"]),
        _fmt(result["test"].get("referable_auroc")),
    )
    return result
