"""The report's front page and the paper's figures in the kappa table."""

from __future__ import annotations

import copy
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts

from conftest import REPO
from lesioncl.report.frontpage import (
    PAPER_KAPPA,
    build_front_page,
    data_description,
    headline_rows,
    paper_rows,
    render_front_page,
    software_versions,
)
from lesioncl.report import kappa_markdown, kappa_table, load_results

METHODS = ["lesion_cl", "random"]
FRACTIONS = [0.1, 1.0]
DEMO = yaml.safe_load((REPO / "config/config.yaml").read_text())
REAL = yaml.safe_load((REPO / "config/eyepacs.yaml").read_text())


def _table(tmp_path, seeds=(0,)) -> pd.DataFrame:
    paths = []
    cm = (np.eye(5, dtype=int) * 3).tolist()
    for evaluation in ("linear", "finetune"):
        for method, base in (("lesion_cl", 0.7), ("random", 0.1)):
            for fraction in FRACTIONS:
                for seed in seeds:
                    res = {"method": method, "evaluation": evaluation, "fraction": fraction, "seed": seed,
                           "skipped": False, "n_train": 10, "selected": {"epoch": 1},
                           "val": {"kappa": base, "accuracy": 0.5, "confusion_matrix": cm},
                           "test": {"kappa": base + fraction / 10 + seed / 100, "accuracy": 0.5,
                                    "confusion_matrix": cm}}
                    path = tmp_path / f"{evaluation}_{method}_{fraction}_{seed}.json"
                    path.write_text(json.dumps(res))
                    paths.append(path)
    results, _ = load_results(paths)
    return kappa_table(results, METHODS, FRACTIONS, ["linear", "finetune"])


def _render(table, config=DEMO, **kw):
    args = dict(configfiles=["config/config.yaml"], methods=METHODS,
                versions={"python": "3.11.9", "torch": "2.14.1"},
                date=dt.datetime(2026, 12, 1, 23, 5, tzinfo=dt.timezone.utc))
    args.update(kw)
    return render_front_page("Title\n=====\n\nIntro.\n", config, table, **args)


def _html(rst: str) -> str:
    parts = publish_parts(rst, writer="html", settings_overrides={"report_level": 2, "halt_level": 5})
    return parts["body"]


def test_front_page_states_run_data_software_and_both_numbers(tmp_path):
    text = _render(_table(tmp_path))
    assert "2026-12-01 23:05 UTC" in text and "``config/config.yaml``" in text
    assert "python 3.11.9, torch 2.14.1" in text
    assert "**synthetic**" in text and "not comparable with the paper's" in text
    html = _html(text)
    assert "System Message" not in html, html  # valid reStructuredText
    # the fine-tuned lesion_cl row: the paper's 0.8322 beside ours (0.7 + 1.0 / 10)
    row = html.split("<tr><td>lesion_cl</td>")[1].split("</tr>")[0]
    assert "fine-tuned" in row and "0.8322" in row and "0.8000" in row
    assert "{{" not in text


def test_front_page_for_real_data_has_no_synthetic_warning(tmp_path):
    config = copy.deepcopy(REAL)
    config["eyepacs"].update(source="folder", raw_dir="/data/eyepacs")
    config["idrid"].update(source="path", path="/data/idrid.zip")
    text = _render(_table(tmp_path), config=config)
    assert "synthetic" not in text.lower()
    assert "``/data/eyepacs``" in text and "``/data/idrid.zip``" in text
    synthetic, _ = data_description(config)
    assert not synthetic


def test_headline_rows_show_seed_spread_and_status(tmp_path):
    table = _table(tmp_path, seeds=(0, 1))
    rows = {(r[0], r[1]): r for r in headline_rows(table, METHODS)}
    assert rows[("lesion_cl", "fine-tuned")][2:4] == ["100%", "0.8322"]
    assert rows[("lesion_cl", "fine-tuned")][4].startswith("0.8050 ± 0.0071 (2 seeds)")
    assert rows[("random", "linear")][3] == "–"  # the paper's figure is not listed for it
    table.loc[table["method"] == "random", "status"] = "skipped"
    rows = {(r[0], r[1]): r for r in headline_rows(table, METHODS)}
    assert rows[("random", "linear")][4] == "skipped"


def test_kappa_markdown_marks_the_papers_figure(tmp_path):
    md = kappa_markdown(_table(tmp_path), METHODS, FRACTIONS)
    linear, finetune = md.split("## Fine-tuning")[0], md.split("## Fine-tuning")[1]
    assert "paper" not in linear.lower().replace("model selection", "")
    paper = [line for line in finetune.splitlines() if "**paper**" in line]
    assert len(paper) == 1 and paper[0].endswith("| – | 0.832 |"), paper


def test_paper_rows_only_for_reported_fractions():
    assert paper_rows("finetune", [0.1, 0.5]) == []
    assert paper_rows("linear", [1.0]) == []
    assert all(0 < v < 1 for v in PAPER_KAPPA.values())


def test_software_versions_and_build(tmp_path):
    versions = software_versions(["numpy", "no-such-package-here"])
    assert versions["numpy"] == np.__version__ and versions["no-such-package-here"] == "not installed"
    table = _table(tmp_path)
    csv = tmp_path / "kappa.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "report/front_page.rst"
    build_front_page(REPO / "workflow/report/workflow.rst", csv, out, DEMO,
                     configfiles=["config/config.yaml"], methods=METHODS)
    text = out.read_text()
    assert text.startswith((REPO / "workflow/report/workflow.rst").read_text().rstrip())
    assert "This run" in text and "0.8322" in text
    (tmp_path / "bad.csv").write_text("method,fraction\nx,1\n")
    with pytest.raises(ValueError, match="rerun rule kappa_table"):
        build_front_page(REPO / "workflow/report/workflow.rst", tmp_path / "bad.csv", out, DEMO,
                         configfiles=[], methods=METHODS)
