"""The results report: the kappa table (CSV + Markdown) and its figures.

Every run of ``evaluate.smk`` writes one JSON (method x evaluation x fraction x seed).
:func:`kappa_table` aggregates them over seeds into one row per method x evaluation
x fraction – every configured cell is present, marked ``skipped`` (e.g. ImageNet
weights unavailable offline) or ``missing`` when it has no result – and
:func:`kappa_markdown` lays the test kappa out as methods x fractions, one block
per evaluation, as mean ± std (sample std, ddof=1) when there is more than one seed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lesioncl.frontpage import paper_rows
from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)

EVALUATIONS = ("linear", "finetune")
EVALUATION_TITLES = {"linear": "Linear evaluation", "finetune": "Fine-tuning"}
TABLE_COLUMNS = [
    "method", "evaluation", "fraction", "n_seeds", "status",
    "val_kappa_mean", "val_kappa_std", "test_kappa_mean", "test_kappa_std",
    "test_accuracy_mean", "test_accuracy_std", "test_kappa_tuned_mean", "test_kappa_tuned_std",
    "test_kappa_ci_low", "test_kappa_ci_high", "test_kappa_tuned_ci_low", "test_kappa_tuned_ci_high",
    "n_train", "train_steps", "selected_epoch_mean", "skip_reason",
]


def _metric(res: dict, split: str, key: str):
    value = (res.get(split) or {}).get(key)
    return np.nan if value is None else float(value)


def _ci(res: dict, split: str) -> tuple[float, float]:
    """The 95 % bootstrap interval of a split's kappa (nan, nan when absent)."""
    ci = (res.get(split) or {}).get("kappa_ci95")
    return (np.nan, np.nan) if not ci else (float(ci[0]), float(ci[1]))


def load_results(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per run JSON (method, evaluation, fraction, seed, kappas, ...) and the raw dicts."""
    rows, raw = [], []
    for path in paths:
        try:
            res = json.loads(open(path).read())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable result JSON ({err}); rerun its evaluation rule") from err
        missing = {"method", "evaluation", "fraction", "seed", "skipped"} - set(res)
        if missing:
            raise ValueError(f"{path}: result JSON lacks {sorted(missing)}; rerun its evaluation rule")
        raw.append(res)
        rows.append({
            "method": res["method"], "evaluation": res["evaluation"],
            "fraction": float(res["fraction"]), "seed": int(res["seed"]),
            "skipped": bool(res["skipped"]), "skip_reason": res.get("skip_reason") or "",
            "val_kappa": _metric(res, "val", "kappa"), "test_kappa": _metric(res, "test", "kappa"),
            "test_accuracy": _metric(res, "test", "accuracy"),
            "test_kappa_tuned": _metric(res, "test_tuned", "kappa"),
            **{f"{key}_ci_{end}": value
               for key, split in (("test_kappa", "test"), ("test_kappa_tuned", "test_tuned"))
               for end, value in zip(("low", "high"), _ci(res, split))},
            "n_train": res.get("n_train", np.nan),
            "train_steps": res.get("train_steps", np.nan),
            "selected_epoch": (res.get("selected") or {}).get("epoch", np.nan),
            "path": str(path),
        })
    return pd.DataFrame(rows), raw


def _mean_std(values: pd.Series) -> tuple[float, float]:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return np.nan, np.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan


def kappa_table(
    results: pd.DataFrame,
    methods: Sequence[str],
    fractions: Sequence[float],
    evaluations: Sequence[str] = EVALUATIONS,
    fractions_of: dict[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """Aggregate over seeds: one row for every evaluation x method x fraction.

    ``fractions_of`` names the fractions configured per evaluation (default: all of
    ``fractions`` for each); a fraction not configured for an evaluation has no row.
    """
    out = []
    for evaluation in evaluations:
        configured = (fractions_of or {}).get(evaluation, fractions)
        for method in methods:
            for fraction in configured:
                sel = results
                if len(results):
                    sel = results[(results["method"] == method) & (results["evaluation"] == evaluation)
                                  & np.isclose(results["fraction"], float(fraction))]
                ok = sel[~sel["skipped"]] if len(sel) else sel
                row = {"method": method, "evaluation": evaluation, "fraction": float(fraction),
                       "n_seeds": int(len(ok)), "skip_reason": ""}
                if len(sel) == 0:
                    row["status"] = "missing"
                elif len(ok) == 0:
                    row["status"] = "skipped"
                    row["skip_reason"] = str(sel["skip_reason"].iloc[0])
                else:
                    row["status"] = "ok"
                for key in ("val_kappa", "test_kappa", "test_accuracy", "test_kappa_tuned"):
                    mean, std = _mean_std(ok[key]) if len(ok) else (np.nan, np.nan)
                    row[f"{key}_mean"], row[f"{key}_std"] = mean, std
                # With several seeds: the average of the per-seed bootstrap bounds.
                for key in ("test_kappa_ci_low", "test_kappa_ci_high",
                            "test_kappa_tuned_ci_low", "test_kappa_tuned_ci_high"):
                    row[key] = float(ok[key].mean()) if len(ok) and ok[key].notna().any() else np.nan
                row["n_train"] = float(ok["n_train"].mean()) if len(ok) else np.nan
                row["train_steps"] = (float(ok["train_steps"].mean())
                                      if len(ok) and ok["train_steps"].notna().any() else np.nan)
                row["selected_epoch_mean"] = float(ok["selected_epoch"].mean()) if len(ok) else np.nan
                out.append(row)
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def format_cell(mean: float, std: float, n_seeds: int, status: str = "ok", digits: int = 3,
                ci: tuple[float, float] | None = None) -> str:
    """'0.812 ± 0.010' (several seeds), '0.812' (one seed), 'skipped', or '–' (no result).

    With ``ci`` (a 95 % bootstrap interval) it follows in brackets: '0.812 [0.77, 0.85]'.
    """
    if status == "skipped":
        return "skipped"
    if status == "missing" or n_seeds == 0 or mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if n_seeds > 1 and std is not None and math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    if ci is not None and all(v is not None and math.isfinite(v) for v in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def fraction_label(fraction: float) -> str:
    return f"{float(fraction) * 100:g}%"


def kappa_markdown(table: pd.DataFrame, methods: Sequence[str], fractions: Sequence[float]) -> str:
    """Markdown: test kappa, rows = methods, columns = label fractions, a block per evaluation."""
    lines = ["# Quadratic weighted kappa on the test split", ""]
    max_seeds = int(table["n_seeds"].max()) if len(table) else 0
    lines.append(
        "Mean ± std over seeds where more than one seed ran; in brackets the 95 % bootstrap "
        "interval over the test images (2,000 resamples; with several seeds, the average of "
        "their intervals). Model selection (epoch, weight decay) on the validation split only. "
        "'skipped': the method could not run here (see kappa.csv, column skip_reason); "
        "'–': not run in this configuration (e.g. a label fraction that is not in "
        "evaluation.finetune.fractions)."
    )
    blocks = [(e, "test_kappa", EVALUATION_TITLES.get(e, e)) for e in table["evaluation"].unique()]
    if table["test_kappa_tuned_mean"].notna().any():
        blocks.append(("finetune", "test_kappa_tuned", "Fine-tuning, thresholds tuned on validation"))
    for evaluation, key, title in blocks:
        sub = table[table["evaluation"] == evaluation]
        lines += ["", f"## {title}", ""]
        lines.append("| method | " + " | ".join(fraction_label(f) for f in fractions) + " |")
        lines.append("|---|" + "---:|" * len(fractions))
        for method in methods:
            cells = []
            for fraction in fractions:
                row = sub[(sub["method"] == method) & np.isclose(sub["fraction"], float(fraction))]
                if len(row) == 0:
                    cells.append("–")
                    continue
                r = row.iloc[0]
                ci = (r[f"{key}_ci_low"], r[f"{key}_ci_high"])
                cells.append(format_cell(r[f"{key}_mean"], r[f"{key}_std"], int(r["n_seeds"]), r["status"],
                                         ci=ci))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if key == "test_kappa":  # the paper's figures, marked as the paper's
            lines += paper_rows(evaluation, fractions)
        if evaluation == "finetune" and key == "test_kappa" and sub["train_steps"].notna().any():
            steps = []
            for fraction in fractions:
                rows = sub[np.isclose(sub["fraction"], float(fraction)) & sub["train_steps"].notna()]
                steps.append(f"{fraction_label(fraction)}: {int(rows['train_steps'].max())}" if len(rows) else
                             f"{fraction_label(fraction)}: –")
            lines += ["", "SGD steps per fine-tuning run: " + ", ".join(steps) + "."]
    lines += ["", f"Seeds per cell: up to {max_seeds}.", ""]
    return "\n".join(lines)


def write_tables(table: pd.DataFrame, csv_path, md_path, methods, fractions) -> None:
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(kappa_markdown(table, methods, fractions))


# --- figures -------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")


def plot_kappa_vs_fraction(table: pd.DataFrame, evaluation: str, path) -> None:
    """Test kappa (mean ± std over seeds) against the label fraction, one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    sub = table[(table["evaluation"] == evaluation) & (table["status"] == "ok")]
    for method, rows in sub.groupby("method", sort=False):
        rows = rows.sort_values("fraction")
        x = rows["fraction"].to_numpy() * 100
        y = rows["test_kappa_mean"].to_numpy()
        err = rows["test_kappa_std"].fillna(0).to_numpy()
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    skipped = sorted(set(table[(table["evaluation"] == evaluation) & (table["status"] != "ok")]["method"]))
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
        ax.annotate("not run / skipped: " + ", ".join(skipped), (0.01, 0.01), xycoords="figure fraction",
                    fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_confusion_matrices(raw: Sequence[dict], methods: Sequence[str], evaluations: Sequence[str], path) -> None:
    """Test confusion matrices at the largest label fraction, pooled over seeds (row-normalised)."""
    plt = _plt()
    evaluations = list(evaluations)
    fig, axes = plt.subplots(len(evaluations), len(methods), squeeze=False,
                             figsize=(2.6 * len(methods) + 0.5, 2.6 * len(evaluations) + 0.4))
    for i, evaluation in enumerate(evaluations):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            runs = [r for r in raw if r["method"] == method and r["evaluation"] == evaluation
                    and not r["skipped"] and "test" in r]
            ax.set_xticks(range(5))
            ax.set_yticks(range(5))
            ax.set_title(f"{method}\n{EVALUATION_TITLES.get(evaluation, evaluation)}", fontsize=8)
            if not runs:
                ax.text(2, 2, "no result", ha="center", va="center", fontsize=8)
                ax.set_xlim(-0.5, 4.5)
                ax.set_ylim(4.5, -0.5)
                continue
            frac = max(r["fraction"] for r in runs)
            cm = sum(np.array(r["test"]["confusion_matrix"], dtype=float) for r in runs if r["fraction"] == frac)
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for (a, b), v in np.ndenumerate(cm):
                ax.text(b, a, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if norm[a, b] > 0.6 else "black")
            ax.set_xlabel(f"predicted ({fraction_label(frac)} labels)", fontsize=7)
            ax.set_ylabel("true grade", fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _read_history(path, required: Sequence[str]) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = set(required) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: history lacks columns {sorted(missing)}")
    return df


def plot_pretrain_curves(histories: Mapping[str, str | os.PathLike], path) -> None:
    """Contrastive loss (train, val) per pretraining method and, beside it, the kNN probe's
    validation kappa at the validated epochs (``knn_kappa`` of history.csv, when recorded)."""
    plt = _plt()
    fig, (ax, ax_knn) = plt.subplots(1, 2, figsize=(11, 4))
    probed = 0
    for i, (method, hist_path) in enumerate(histories.items()):
        df = _read_history(hist_path, ["epoch", "train_loss", "val_loss"])
        color = f"C{i}"
        ax.plot(df["epoch"], df["train_loss"], color=color, label=f"{method} train")
        val = df.dropna(subset=["val_loss"])
        if len(val):
            ax.plot(val["epoch"], val["val_loss"], color=color, ls="--", marker="o", ms=3,
                    label=f"{method} val")
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
        ax_knn.text(0.5, 0.5, "no kNN probe recorded", ha="center", va="center", transform=ax_knn.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("Contrastive pretraining")
    if histories:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no pretrained method configured", ha="center", va="center",
                transform=ax.transAxes)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_finetune_curves(histories: Mapping[str, str | os.PathLike], path, title: str = "") -> None:
    """Training loss and validation kappa per epoch of fine-tuning runs (one line per run)."""
    plt = _plt()
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
            ax_kappa.plot(df.loc[best, "epoch"], df.loc[best, "val_kappa"], "*", ms=12, color=f"C{i}")
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
    _save(fig, path)
    plt.close(fig)


# --- entry points of the report rules ---------------------------------------------


def build_kappa_table(result_paths, methods, fractions, evaluations, csv_path, md_path,
                      fractions_of=None) -> pd.DataFrame:
    """Rule kappa_table: every run JSON -> kappa.csv and kappa.md."""
    results, _ = load_results(result_paths)
    table = kappa_table(results, methods, fractions, evaluations, fractions_of)
    write_tables(table, csv_path, md_path, methods, fractions)
    for _, row in table.iterrows():
        log.info("%-9s %-12s %6s: %s (%s)", row["evaluation"], row["method"], fraction_label(row["fraction"]),
                 format_cell(row["test_kappa_mean"], row["test_kappa_std"], row["n_seeds"], row["status"]),
                 row["status"])
    return table


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
