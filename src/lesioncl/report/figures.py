"""The report's figures: kappa vs label fraction, confusion matrices, training curves.

Rules kappa_plot, confusion_plot, pretrain_curves_plot and finetune_curves_plot.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lesioncl.plotting import pyplot, save_png
from lesioncl.report.tables import EVALUATION_TITLES, fraction_label, load_results

log = logging.getLogger("lesioncl.report")


# --- figures -------------------------------------------------------------------------


def plot_kappa_vs_fraction(table: pd.DataFrame, evaluation: str, path) -> None:
    """Test kappa (mean ± std over seeds) against the label fraction, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sub = table[(table["evaluation"] == evaluation) & (table["status"] == "ok")]
    for method, rows in sub.groupby("method", sort=False):
        rows = rows.sort_values("fraction")
        x = rows["fraction"].to_numpy() * 100
        y = rows["test_kappa_mean"].to_numpy()
        err = rows["test_kappa_std"].fillna(0).to_numpy()
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    skipped = sorted(
        set(table[(table["evaluation"] == evaluation) & (table["status"] != "ok")]["method"])
    )
    ax.set_xscale("log")
    ticks = sorted(set(table["fraction"].astype(float)))
    ax.set_xticks([t * 100 for t in ticks])
    ax.set_xticklabels([fraction_label(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (%)")
    ax.set_ylabel("test quadratic weighted kappa")
    title = f"{EVALUATION_TITLES.get(evaluation, evaluation)}: kappa vs label fraction"
    ax.set_title(title)
    if len(sub):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    if skipped:
        ax.annotate(
            "not run / skipped: " + ", ".join(skipped),
            (0.01, 0.01),
            xycoords="figure fraction",
            fontsize=7,
        )
    ax.grid(alpha=0.3)
    save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_confusion_matrices(
    raw: Sequence[dict], methods: Sequence[str], evaluations: Sequence[str], path
) -> None:
    """Test confusion matrices at the largest label fraction, pooled over seeds (row-normalised)."""
    plt = pyplot()
    evaluations = list(evaluations)
    fig, axes = plt.subplots(
        len(evaluations),
        len(methods),
        squeeze=False,
        figsize=(2.6 * len(methods) + 0.5, 2.6 * len(evaluations) + 0.4),
    )
    for i, evaluation in enumerate(evaluations):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            runs = [
                r
                for r in raw
                if r["method"] == method
                and r["evaluation"] == evaluation
                and not r["skipped"]
                and "test" in r
            ]
            ax.set_xticks(range(5))
            ax.set_yticks(range(5))
            ax.set_title(f"{method}\n{EVALUATION_TITLES.get(evaluation, evaluation)}", fontsize=8)
            if not runs:
                ax.text(2, 2, "no result", ha="center", va="center", fontsize=8)
                ax.set_xlim(-0.5, 4.5)
                ax.set_ylim(4.5, -0.5)
                continue
            frac = max(r["fraction"] for r in runs)
            cm = sum(
                np.array(r["test"]["confusion_matrix"], dtype=float)
                for r in runs
                if r["fraction"] == frac
            )
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for (a, b), v in np.ndenumerate(cm):
                ax.text(
                    b,
                    a,
                    f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[a, b] > 0.6 else "black",
                )
            ax.set_xlabel(f"predicted ({fraction_label(frac)} labels)", fontsize=7)
            ax.set_ylabel("true grade", fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120, bbox_inches="tight")


def _read_history(path, required: Sequence[str]) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = set(required) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: history lacks columns {sorted(missing)}")
    return df


def plot_pretrain_curves(histories: Mapping[str, str | os.PathLike], path) -> None:
    """Contrastive loss (train, val) per pretraining method and, beside it, the kNN probe's
    validation kappa at the validated epochs (``knn_kappa`` of history.csv, when recorded)."""
    plt = pyplot()
    fig, (ax, ax_knn) = plt.subplots(1, 2, figsize=(11, 4))
    probed = 0
    for i, (method, hist_path) in enumerate(histories.items()):
        df = _read_history(hist_path, ["epoch", "train_loss", "val_loss"])
        color = f"C{i}"
        ax.plot(df["epoch"], df["train_loss"], color=color, label=f"{method} train")
        val = df.dropna(subset=["val_loss"])
        if len(val):
            ax.plot(
                val["epoch"],
                val["val_loss"],
                color=color,
                ls="--",
                marker="o",
                ms=3,
                label=f"{method} val",
            )
        knn = df.dropna(subset=["knn_kappa"]) if "knn_kappa" in df else df.iloc[:0]
        if len(knn):
            probed += 1
            ax_knn.plot(knn["epoch"], knn["knn_kappa"], color=color, marker="s", ms=4, label=method)
    from matplotlib.ticker import MaxNLocator

    ax_knn.set_xlabel("epoch")
    ax_knn.set_ylabel("kNN probe: validation kappa")
    ax_knn.set_title("Grading signal while pretraining")
    ax_knn.grid(alpha=0.3)
    if probed:
        ax_knn.legend(fontsize=8)
    else:
        ax_knn.text(
            0.5, 0.5, "no kNN probe recorded", ha="center", va="center", transform=ax_knn.transAxes
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("Contrastive pretraining")
    if histories:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no pretrained method configured",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.grid(alpha=0.3)
    save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_finetune_curves(histories: Mapping[str, str | os.PathLike], path, title: str = "") -> None:
    """Training loss and validation kappa per epoch of fine-tuning runs (one line per run)."""
    plt = pyplot()
    fig, (ax_loss, ax_kappa) = plt.subplots(1, 2, figsize=(10, 4))
    shown = 0
    for i, (label, hist_path) in enumerate(histories.items()):
        df = _read_history(hist_path, ["epoch", "train_loss", "val_kappa"])
        if df.empty:  # a skipped method
            continue
        shown += 1
        ax_loss.plot(df["epoch"], df["train_loss"], marker="o", ms=3, color=f"C{i}", label=label)
        ax_kappa.plot(df["epoch"], df["val_kappa"], marker="o", ms=3, color=f"C{i}", label=label)
        best = df["val_kappa"].idxmax() if df["val_kappa"].notna().any() else None
        if best is not None:
            ax_kappa.plot(
                df.loc[best, "epoch"], df.loc[best, "val_kappa"], "*", ms=12, color=f"C{i}"
            )
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_kappa):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training MSE")
    ax_kappa.set_xlabel("epoch")
    ax_kappa.set_ylabel("validation kappa (star: selected epoch)")
    for ax in (ax_loss, ax_kappa):
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=8)
    fig.suptitle(title or "Fine-tuning")
    fig.tight_layout()
    save_png(fig, path, dpi=120, bbox_inches="tight")


def kappa_plot_from_table(csv_path, evaluation: str, path) -> None:
    """Rule kappa_plot: kappa.csv -> kappa vs label fraction of one evaluation."""
    table = pd.read_csv(csv_path, keep_default_na=True)
    if "evaluation" not in table.columns or "test_kappa_mean" not in table.columns:
        raise ValueError(f"{csv_path}: not a kappa table (rerun rule kappa_table)")
    plot_kappa_vs_fraction(table, evaluation, path)


def confusion_plot_from_results(result_paths, methods, evaluations, path) -> None:
    """Rule confusion_plot: run JSONs -> test confusion matrices at the largest fraction."""
    _, raw = load_results(result_paths)
    plot_confusion_matrices(raw, methods, evaluations, path)
