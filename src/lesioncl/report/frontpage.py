"""The report's front page: what was run, on which data, with which software, and the
paper's headline numbers beside ours.

Rule ``report_front_page`` writes ``results/report/front_page.rst`` at the end of a run;
the Snakefile's ``report:`` directive uses it as the workflow description of
``snakemake --report`` (the page the report opens with). Before a run has finished, the
static ``workflow/report/workflow.rst`` is the description. The text is reStructuredText
without Jinja markup (Snakemake renders the description with Jinja2).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import pandas as pd

from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)

PAPER_CITATION = (
    'Huang, Lin, Cheng, Lyu, Tang: "Lesion-Based Contrastive Learning for Diabetic Retinopathy '
    'Grading from Fundus Images", MICCAI 2021, LNCS 12902, pp. 113-123, '
    "doi:10.1007/978-3-030-87196-3_11"
)
# The paper's headline figures, test split (Kaggle Usage=Private), quadratic weighted kappa,
# ResNet-50 at 512 px, one eye per image: {(evaluation, method, label fraction): kappa}.
# 0.8322: lesion-based CL fine-tuned on the full training set (the paper's transfer-capacity
# evaluation; the authors released this fine-tuned model with that test kappa).
PAPER_KAPPA: dict[tuple[str, str, float], float] = {
    ("finetune", "lesion_cl", 1.0): 0.8322,
}
PAPER_SOURCE = (
    "the paper's transfer-capacity evaluation (Huang et al., MICCAI 2021: fine-tuning "
    "on the full training set)"
)

PACKAGES = (
    "lesioncl",
    "torch",
    "torchvision",
    "mmcv",
    "mmdet",
    "mmengine",
    "numpy",
    "pandas",
    "scikit-learn",
    "pillow",
    "opencv-python-headless",
)


def paper_rows(evaluation: str, fractions: Sequence[float], digits: int = 3) -> list[str]:
    """Markdown rows of the paper's figures for one evaluation block of the kappa table.

    One row per method the paper reports at one of ``fractions``, labelled as the paper's;
    '–' in the columns the paper does not report. No row when it reports none of them.
    """
    rows = []
    for method in sorted({m for (e, m, _f) in PAPER_KAPPA if e == evaluation}):
        cells = []
        for fraction in fractions:
            match = [
                v
                for (e, m, f), v in PAPER_KAPPA.items()
                if e == evaluation and m == method and math.isclose(f, float(fraction))
            ]
            cells.append(f"{match[0]:.{digits}f}" if match else "–")
        if any(c != "–" for c in cells):
            rows.append(
                f"| {method}, **paper** (Huang et al. 2021: ResNet-50, real EyePACS) | "
                + " | ".join(cells)
                + " |"
            )
    return rows


def software_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python and the versions of ``packages`` in this environment ('not installed' if absent)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import torch

        versions["torch CUDA"] = torch.version.cuda or "none (CPU build)"
        if torch.cuda.is_available():
            versions["GPU"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return versions


def data_description(config: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(synthetic?, lines) for the EyePACS and IDRiD inputs of ``config``."""
    eyepacs, idrid = config["eyepacs"], config["idrid"]
    lines = []
    if eyepacs["source"] == "synthetic":
        lines.append("EyePACS: **synthetic** images generated in the Kaggle layout (the demo)")
    elif eyepacs["source"] == "kaggle":
        lines.append(
            f"EyePACS: the Kaggle competition ``{eyepacs['competition']}``, downloaded into "
            f"``{eyepacs['download_dir']}``"
        )
    else:
        lines.append(f"EyePACS: the folder ``{eyepacs['raw_dir']}``")
    if idrid["source"] == "synthetic":
        lines.append(
            "IDRiD: **synthetic** lesion-segmentation images in the official layout (the demo)"
        )
    else:
        lines.append(f"IDRiD: the official segmentation set at ``{idrid['path']}``")
    synthetic = eyepacs["source"] == "synthetic" or idrid["source"] == "synthetic"
    return synthetic, lines


def _cell(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.4f}"


def headline_rows(table: pd.DataFrame, methods: Sequence[str]) -> list[list[str]]:
    """[method, evaluation, fraction, paper, ours] at the largest fraction of each evaluation."""
    rows = []
    for evaluation in ("finetune", "linear"):
        sub = table[table["evaluation"] == evaluation]
        if sub.empty:
            continue
        fraction = float(sub["fraction"].max())
        for method in methods:
            cell = sub[(sub["method"] == method) & (sub["fraction"] == fraction)]
            if cell.empty:
                continue
            r = cell.iloc[0]
            if r["status"] == "ok":
                ours = _cell(float(r["test_kappa_mean"]))
                if int(r["n_seeds"]) > 1 and math.isfinite(float(r["test_kappa_std"])):
                    ours += f" ± {float(r['test_kappa_std']):.4f} ({int(r['n_seeds'])} seeds)"
            else:
                ours = str(r["status"])
            paper = PAPER_KAPPA.get((evaluation, method, fraction))
            rows.append(
                [
                    method,
                    {"finetune": "fine-tuned", "linear": "linear"}[evaluation],
                    f"{fraction * 100:g}%",
                    _cell(paper) if paper is not None else "–",
                    ours,
                ]
            )
    return rows


def _list_table(header: Sequence[str], rows: Sequence[Sequence[str]], widths: str) -> list[str]:
    out = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        out.append(f"   * - {row[0]}")
        out += [f"     - {cell}" for cell in row[1:]]
    return out


def render_front_page(
    description: str,
    config: Mapping[str, Any],
    table: pd.DataFrame,
    *,
    configfiles: Sequence[str],
    methods: Sequence[str],
    versions: Mapping[str, str],
    date: _dt.datetime,
) -> str:
    """The front page (reStructuredText): ``description`` then this run's facts and numbers."""
    synthetic, data_lines = data_description(config)
    pre, ev = config["pretrain"], config["evaluation"]
    lines = [description.rstrip(), "", "This run", "--------", ""]
    lines.append(
        f"- **Date**: {date.strftime('%Y-%m-%d %H:%M %Z')} (when the results were complete)"
    )
    files = (
        ", ".join(f"``{f}``" for f in configfiles)
        or "the workflow's default ``config/config.yaml``"
    )
    lines.append(f"- **Config**: {files}")
    lines += [f"- {line}" for line in data_lines]
    lines.append(
        f"- **Models**: {pre['arch']} from {pre['init']} weights, "
        f"{pre['epochs']} pretraining epochs (batch {pre['batch_size']}); evaluation on "
        f"{', '.join(f'{float(f) * 100:g}%' for f in ev['fractions'])} "
        f"of the training labels, seeds {', '.join(str(s) for s in ev['seeds'])}; device "
        f"``{config['device']}``"
    )
    lines.append("- **Software**: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += ["", "The paper's numbers beside ours", "-------------------------------", ""]
    if synthetic:
        lines += [
            "**Synthetic data: our numbers below measure the pipeline on generated images and say "
            "nothing about real fundus images; they are not comparable with the paper's.**",
            "",
        ]
    lines += [
        "Test-split quadratic weighted kappa at the largest label fraction. *Paper*: "
        f"{PAPER_SOURCE}, "
        "ResNet-50 at 512 px; '–' where the paper's figure is not listed here. "
        "Every method and fraction is in the kappa table (category *Evaluation*).",
        "",
    ]
    rows = headline_rows(table, methods)
    if rows:
        lines += _list_table(
            ["method", "evaluation", "labels", "paper", "this run"], rows, "25 15 10 15 35"
        )
    else:
        lines.append("No evaluation results yet.")
    lines += ["", f"Paper: {PAPER_CITATION}.", ""]
    text = "\n".join(lines)
    if "{{" in text or "{%" in text:  # Snakemake renders the description with Jinja2
        text = text.replace("{{", "{ {").replace("{%", "{ %")
    return text


def build_front_page(
    description_path: str | os.PathLike,
    kappa_csv: str | os.PathLike,
    out_rst: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    configfiles: Sequence[str],
    methods: Sequence[str],
) -> str:
    """Rule report_front_page: the static description + this run -> ``out_rst``."""
    with open(description_path) as fh:
        description = fh.read()
    table = pd.read_csv(kappa_csv)
    missing = {
        "method",
        "evaluation",
        "fraction",
        "status",
        "n_seeds",
        "test_kappa_mean",
        "test_kappa_std",
    } - set(table.columns)
    if missing:
        raise ValueError(f"{kappa_csv}: lacks columns {sorted(missing)}; rerun rule kappa_table")
    versions = software_versions()
    text = render_front_page(
        description,
        config,
        table,
        configfiles=configfiles,
        methods=methods,
        versions=versions,
        date=_dt.datetime.now(_dt.timezone.utc),
    )
    with atomic_path(out_rst) as tmp:
        tmp.write_text(text)
    log.info(
        "front page written to %s (%s)", out_rst, ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    return text
