"""The external-evaluation table: per graded set, test kappa and referable-DR AUROC of
every method at every label fraction (rule external_table).

The runs are the linear evaluations and fine-tuning of each set (the EyePACS recipes on
the set's own splits, evaluations ``linear`` and ``finetune``), the EyePACS linear head
and the EyePACS fine-tuned grader each graded on the set's test split as they are
(evaluations ``transfer_linear`` and ``transfer_finetune``: external validation, no
training on the set); :func:`lesioncl.report.tables.kappa_table` aggregates them over
seeds as it does for EyePACS, one block of rows per set (column ``set``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import pandas as pd

from lesioncl.report.tables import (
    format_cell,
    fraction_label,
    kappa_table,
    load_results,
    method_note,
    row_cells,
)
from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.external")

SET_TITLES = {
    "idrid_grading": "IDRiD (disease grading)",
    "aptos2019": "APTOS 2019",
    "messidor2": "Messidor-2",
    "ddr_grading": "DDR (grading)",
}


EVALUATIONS = ("linear", "finetune", "transfer_linear", "transfer_finetune")
#: evaluation -> its external-validation counterpart and that column's title
TRANSFERS = {
    "linear": ("transfer_linear", "EyePACS head, as is"),
    "finetune": ("transfer_finetune", "EyePACS fine-tuned, as is"),
}


def external_table(
    results_of: Mapping[str, Sequence[str | os.PathLike]],
    methods: Sequence[str],
    fractions: Sequence[float],
    transfer_fraction: float = 1.0,
    finetune_transfer_fraction: float = 1.0,
) -> pd.DataFrame:
    """One row per set x evaluation x method x fraction, aggregated over seeds (the
    transfer rows at the EyePACS fraction its head or grader was trained on)."""
    parts = []
    fractions_of = {
        "linear": list(fractions),
        "finetune": list(fractions),
        "transfer_linear": [transfer_fraction],
        "transfer_finetune": [finetune_transfer_fraction],
    }
    for name, paths in results_of.items():
        results, _ = load_results(paths)
        present = set(results["evaluation"]) if len(results) else set()
        evaluations = [e for e in EVALUATIONS if e == "linear" or e in present]
        every = sorted(
            {float(f) for f in fractions}
            | {float(transfer_fraction), float(finetune_transfer_fraction)}
        )
        table = kappa_table(results, methods, every, evaluations, fractions_of)
        parts.append(table.assign(set=name))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table[["set", *[c for c in table.columns if c != "set"]]]


def _set_line(summary: Mapping) -> str:
    cropped = summary.get("cropped", {})
    splits = ", ".join(f"{s} {cropped.get(s, 0)}" for s in ("train", "val", "test"))
    reasons = ", ".join(f"{k} {v}" for k, v in (summary.get("reasons") or {}).items())
    return (
        f"{cropped.get('total', 0)} images ({splits}); rejected "
        f"{summary.get('rejected', {}).get('total', 0)}" + (f" ({reasons})" if reasons else "")
    )


def external_markdown(
    table: pd.DataFrame,
    methods: Sequence[str],
    fractions: Sequence[float],
    summaries: Mapping[str, Mapping] | None = None,
) -> str:
    lines = [
        "# External evaluation",
        "",
        "Each backbone graded on other graded sets by linear evaluation (the EyePACS "
        "recipe: a softmax head on frozen features, weight decay and epoch chosen on the "
        "set's own val split) and, where configured, by fine-tuning (the EyePACS recipe; "
        "the AUROC ranks its regression output), at label fractions of the set's training "
        "split. Test kappa (quadratic weighted) and the AUROC of referable DR (grade 2 or "
        "more; the head's probability of grade >= 2), mean ± std over seeds where more "
        "than one ran, in brackets the 95 % bootstrap interval over the test images. "
        "'EyePACS head, as is': the head of the EyePACS linear evaluation (trained on "
        "EyePACS labels only) grades the set's test split without any training on the set "
        "(external validation); 'EyePACS fine-tuned, as is': likewise the grader "
        "fine-tuned on EyePACS at its largest label fraction, with its own thresholds. "
        "The images and their rejects: "
        "results/external/<set>/summary.json and rejects.csv.",
        "",
        *(f"- `{m}`: {method_note(m)}" for m in methods),
    ]
    for name in table["set"].unique() if len(table) else []:
        sub = table[table["set"] == name]
        lines += ["", f"## {SET_TITLES.get(name, name)} (`{name}`)", ""]
        if summaries and name in summaries:
            lines += [_set_line(summaries[name]) + ".", ""]
        for evaluation, label in (("linear", "linear evaluation"), ("finetune", "fine-tuning")):
            block = sub[sub["evaluation"] == evaluation]
            transfer = sub[sub["evaluation"] == TRANSFERS[evaluation][0]]
            if evaluation != "linear" and not len(block) and not len(transfer):
                continue
            extra = len(transfer) > 0  # the external-validation column
            columns = [fraction_label(f) for f in fractions]
            columns += [TRANSFERS[evaluation][1]] if extra else []
            header = "| method | " + " | ".join(columns) + " |"
            rule = "|---|" + "---:|" * len(columns)
            for key, title in (
                ("test_kappa", "test kappa"),
                ("test_auroc", "AUROC of referable DR (grade 2 or more)"),
            ):
                lines += [f"{label.capitalize()}, {title}:", "", header, rule]
                for m in methods:
                    cells = row_cells(block, m, fractions, key)
                    if extra:
                        cells += row_cells(transfer, m, [transfer["fraction"].iloc[0]], key)
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def build_external_table(
    results_of: Mapping[str, Sequence[str | os.PathLike]],
    summaries: Mapping[str, str | os.PathLike],
    methods: Sequence[str],
    fractions: Sequence[float],
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    transfer_fraction: float = 1.0,
    finetune_transfer_fraction: float = 1.0,
) -> pd.DataFrame:
    """Rule external_table: every external run JSON -> external.csv and external.md."""
    table = external_table(
        results_of, methods, fractions, transfer_fraction, finetune_transfer_fraction
    )
    loaded = {name: json.loads(open(path).read()) for name, path in summaries.items()}
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(external_markdown(table, methods, fractions, loaded))
    for _, row in table.iterrows():
        log.info(
            "%-14s %-15s %-12s %6s: kappa %s, AUROC %s",
            row["set"],
            row["evaluation"],
            row["method"],
            fraction_label(row["fraction"]),
            format_cell(
                row["test_kappa_mean"], row["test_kappa_std"], row["n_seeds"], row["status"]
            ),
            format_cell(
                row["test_auroc_mean"], row["test_auroc_std"], row["n_seeds"], row["status"]
            ),
        )
    return table
