"""The kappa table: run JSONs aggregated over seeds (CSV), laid out as methods x fractions.

The Markdown layout has one block per evaluation. Rule kappa_table.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lesioncl.report.frontpage import paper_rows
from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.report")


EVALUATIONS = ("linear", "finetune")
EVALUATION_TITLES = {"linear": "Linear evaluation", "finetune": "Fine-tuning"}
TABLE_COLUMNS = [
    "method",
    "evaluation",
    "fraction",
    "n_seeds",
    "status",
    "val_kappa_mean",
    "val_kappa_std",
    "test_kappa_mean",
    "test_kappa_std",
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_kappa_tuned_mean",
    "test_kappa_tuned_std",
    "test_kappa_ci_low",
    "test_kappa_ci_high",
    "test_kappa_tuned_ci_low",
    "test_kappa_tuned_ci_high",
    "test_auroc_mean",
    "test_auroc_std",
    "test_auroc_ci_low",
    "test_auroc_ci_high",
    "n_train",
    "train_steps",
    "selected_epoch_mean",
    "skip_reason",
]


def _metric(res: dict, split: str, key: str):
    value = (res.get(split) or {}).get(key)
    return np.nan if value is None else float(value)


def _ci(res: dict, split: str, key: str = "kappa_ci95") -> tuple[float, float]:
    """The 95 % bootstrap interval of a split's kappa (or ``key``; nan, nan when absent)."""
    ci = (res.get(split) or {}).get(key)
    return (np.nan, np.nan) if not ci else (float(ci[0]), float(ci[1]))


def load_results(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per run JSON (method, evaluation, fraction, seed, kappas, ...) and the raw dicts."""
    rows, raw = [], []
    for path in paths:
        try:
            res = json.loads(open(path).read())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path}: not a readable result JSON ({err}); rerun its evaluation rule"
            ) from err
        missing = {"method", "evaluation", "fraction", "seed", "skipped"} - set(res)
        if missing:
            raise ValueError(
                f"{path}: result JSON lacks {sorted(missing)}; rerun its evaluation rule"
            )
        raw.append(res)
        rows.append(
            {
                "method": res["method"],
                "evaluation": res["evaluation"],
                "fraction": float(res["fraction"]),
                "seed": int(res["seed"]),
                "skipped": bool(res["skipped"]),
                "skip_reason": res.get("skip_reason") or "",
                "val_kappa": _metric(res, "val", "kappa"),
                "test_kappa": _metric(res, "test", "kappa"),
                "test_accuracy": _metric(res, "test", "accuracy"),
                "test_kappa_tuned": _metric(res, "test_tuned", "kappa"),
                # referable DR (grade >= 2); absent from results of earlier versions
                "test_auroc": _metric(res, "test", "referable_auroc"),
                **{
                    f"{key}_ci_{end}": value
                    for key, split, ci_key in (
                        ("test_kappa", "test", "kappa_ci95"),
                        ("test_kappa_tuned", "test_tuned", "kappa_ci95"),
                        ("test_auroc", "test", "referable_auroc_ci95"),
                    )
                    for end, value in zip(("low", "high"), _ci(res, split, ci_key))
                },
                "n_train": res.get("n_train", np.nan),
                "train_steps": res.get("train_steps", np.nan),
                "selected_epoch": (res.get("selected") or {}).get("epoch", np.nan),
                "path": str(path),
            }
        )
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
    fractions_of: Mapping[str, Sequence[float]] | None = None,
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
                    sel = results[
                        (results["method"] == method)
                        & (results["evaluation"] == evaluation)
                        & np.isclose(results["fraction"], float(fraction))
                    ]
                ok = sel[~sel["skipped"]] if len(sel) else sel
                row = {
                    "method": method,
                    "evaluation": evaluation,
                    "fraction": float(fraction),
                    "n_seeds": int(len(ok)),
                    "skip_reason": "",
                }
                if len(sel) == 0:
                    row["status"] = "missing"
                elif len(ok) == 0:
                    row["status"] = "skipped"
                    row["skip_reason"] = str(sel["skip_reason"].iloc[0])
                else:
                    row["status"] = "ok"
                for key in (
                    "val_kappa",
                    "test_kappa",
                    "test_accuracy",
                    "test_kappa_tuned",
                    "test_auroc",
                ):
                    mean, std = _mean_std(ok[key]) if len(ok) else (np.nan, np.nan)
                    row[f"{key}_mean"], row[f"{key}_std"] = mean, std
                # With several seeds: the average of the per-seed bootstrap bounds.
                for key in (
                    "test_kappa_ci_low",
                    "test_kappa_ci_high",
                    "test_kappa_tuned_ci_low",
                    "test_kappa_tuned_ci_high",
                    "test_auroc_ci_low",
                    "test_auroc_ci_high",
                ):
                    row[key] = (
                        float(ok[key].mean()) if len(ok) and ok[key].notna().any() else np.nan
                    )
                row["n_train"] = float(ok["n_train"].mean()) if len(ok) else np.nan
                row["train_steps"] = (
                    float(ok["train_steps"].mean())
                    if len(ok) and ok["train_steps"].notna().any()
                    else np.nan
                )
                row["selected_epoch_mean"] = (
                    float(ok["selected_epoch"].mean()) if len(ok) else np.nan
                )
                out.append(row)
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def format_cell(
    mean: float,
    std: float,
    n_seeds: int,
    status: str = "ok",
    digits: int = 3,
    ci: tuple[float, float] | None = None,
) -> str:
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


#: What each kind of method is, for the table's legend (simclr_<size> and other names below).
METHOD_NOTES = {
    "lesion_cl": "lesion-based CL on windows around the detector's boxes (the published method)",
    "lesion_cl_random": "control: the same boxes, counts and sizes, at random places in the "
    "field of view",
    "lesion_cl_truth": "oracle: windows around the synthetic generator's true lesions",
    "lesion_cl_salient": "control: the same boxes centred on each image's most contrasted small "
    "structures (no lesion detector)",
    "random": "random initialisation, no pretraining",
    "imagenet": "torchvision's ImageNet weights",
}


def method_note(method: str) -> str:
    """One line on what ``method`` is (the kappa table's legend)."""
    if method in METHOD_NOTES:
        return METHOD_NOTES[method]
    if method.startswith("simclr_") and method[len("simclr_") :].isdigit():
        return f"whole-image SimCLR, the crop resized to {method[len('simclr_') :]} px"
    return "weights from evaluation.extra_weights"


def row_cells(sub: pd.DataFrame, method: str, fractions: Sequence[float], key: str) -> list[str]:
    """The formatted cells of ``method``'s row at each of ``fractions`` (``key``: the
    metric's column prefix, e.g. test_kappa), from one evaluation's rows ``sub``; '–'
    where there is no row."""
    cells = []
    for fraction in fractions:
        row = sub[(sub["method"] == method) & np.isclose(sub["fraction"], float(fraction))]
        if len(row) == 0:
            cells.append("–")
            continue
        r = row.iloc[0]
        ci = (r[f"{key}_ci_low"], r[f"{key}_ci_high"])
        cells.append(
            format_cell(r[f"{key}_mean"], r[f"{key}_std"], int(r["n_seeds"]), r["status"], ci=ci)
        )
    return cells


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
        "evaluation.finetune.fractions). The AUROC blocks rank each test image by its "
        "referable-DR score (linear: the head's probability of grade 2 or more; fine-tuning: "
        "the regression output) against grade >= 2 (1,000 bootstrap resamples)."
    )
    lines += ["", *(f"- `{m}`: {method_note(m)}" for m in methods)]
    blocks = [(e, "test_kappa", EVALUATION_TITLES.get(e, e)) for e in table["evaluation"].unique()]
    if table["test_kappa_tuned_mean"].notna().any():
        blocks.append(
            ("finetune", "test_kappa_tuned", "Fine-tuning, thresholds tuned on validation")
        )
    for evaluation in table["evaluation"].unique():
        sub = table[table["evaluation"] == evaluation]
        if sub["test_auroc_mean"].notna().any():
            title = EVALUATION_TITLES.get(evaluation, evaluation)
            blocks.append(
                (evaluation, "test_auroc", f"{title}: AUROC of referable DR (grade 2 or more)")
            )
    for evaluation, key, title in blocks:
        sub = table[table["evaluation"] == evaluation]
        lines += ["", f"## {title}", ""]
        lines.append("| method | " + " | ".join(fraction_label(f) for f in fractions) + " |")
        lines.append("|---|" + "---:|" * len(fractions))
        for method in methods:
            cells = row_cells(sub, method, fractions, key)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if key == "test_kappa":  # the paper's figures, marked as the paper's
            lines += paper_rows(evaluation, fractions)
        if evaluation == "finetune" and key == "test_kappa" and sub["train_steps"].notna().any():
            steps = []
            for fraction in fractions:
                rows = sub[
                    np.isclose(sub["fraction"], float(fraction)) & sub["train_steps"].notna()
                ]
                steps.append(
                    f"{fraction_label(fraction)}: {int(rows['train_steps'].max())}"
                    if len(rows)
                    else f"{fraction_label(fraction)}: –"
                )
            lines += ["", "SGD steps per fine-tuning run: " + ", ".join(steps) + "."]
    lines += ["", f"Seeds per cell: up to {max_seeds}.", ""]
    return "\n".join(lines)


def write_tables(table: pd.DataFrame, csv_path, md_path, methods, fractions) -> None:
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(kappa_markdown(table, methods, fractions))


def build_kappa_table(
    result_paths, methods, fractions, evaluations, csv_path, md_path, fractions_of=None
) -> pd.DataFrame:
    """Rule kappa_table: every run JSON -> kappa.csv and kappa.md."""
    results, _ = load_results(result_paths)
    table = kappa_table(results, methods, fractions, evaluations, fractions_of)
    write_tables(table, csv_path, md_path, methods, fractions)
    for _, row in table.iterrows():
        log.info(
            "%-9s %-12s %6s: %s (%s)",
            row["evaluation"],
            row["method"],
            fraction_label(row["fraction"]),
            format_cell(
                row["test_kappa_mean"], row["test_kappa_std"], row["n_seeds"], row["status"]
            ),
            row["status"],
        )
    return table
