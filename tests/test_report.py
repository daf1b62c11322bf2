"""The kappa table (CSV/Markdown) and the report figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

from lesioncl.report import (
    format_cell,
    kappa_markdown,
    kappa_table,
    load_results,
    plot_confusion_matrices,
    plot_finetune_curves,
    plot_kappa_vs_fraction,
    plot_pretrain_curves,
    write_tables,
)

METHODS = ["lesion_cl", "random", "imagenet"]
FRACTIONS = [0.1, 1.0]


def _result(method, evaluation, fraction, seed, kappa, skipped=False):
    if skipped:
        return {"method": method, "evaluation": evaluation, "fraction": fraction, "seed": seed,
                "skipped": True, "skip_reason": "ImageNet weights not available offline"}
    cm = np.eye(5, dtype=int) * 3
    return {"method": method, "evaluation": evaluation, "fraction": fraction, "seed": seed,
            "skipped": False, "n_train": 10, "selected": {"epoch": 2},
            "val": {"kappa": kappa - 0.01, "accuracy": 0.5, "confusion_matrix": cm.tolist(), "n": 15},
            "test": {"kappa": kappa, "accuracy": 0.6, "confusion_matrix": cm.tolist(), "n": 15}}


@pytest.fixture
def result_files(tmp_path):
    runs = []
    for evaluation in ("linear", "finetune"):
        for fraction in FRACTIONS:
            for seed, delta in ((0, 0.0), (1, 0.02)):
                runs.append(_result("lesion_cl", evaluation, fraction, seed, 0.5 + fraction * 0.2 + delta))
            runs.append(_result("random", evaluation, fraction, 0, 0.1 + fraction * 0.1))
            runs.append(_result("imagenet", evaluation, fraction, 0, 0.0, skipped=True))
    runs = [r for r in runs if not (r["method"] == "random" and r["evaluation"] == "finetune"
                                    and r["fraction"] == 0.1)]  # one cell left missing
    paths = []
    for i, r in enumerate(runs):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    return paths


def test_format_cell():
    assert format_cell(0.81234, 0.0101, 3) == "0.812 ± 0.010"
    assert format_cell(0.81234, np.nan, 1) == "0.812"
    assert format_cell(0.81234, 0.3, 1) == "0.812"  # one seed: no std shown
    assert format_cell(np.nan, np.nan, 0, "skipped") == "skipped"
    assert format_cell(np.nan, np.nan, 0, "missing") == "–"


def test_table_fills_every_cell(result_files):
    results, _ = load_results(result_files)
    table = kappa_table(results, METHODS, FRACTIONS)
    assert len(table) == 2 * len(METHODS) * len(FRACTIONS)
    assert not table.duplicated(["method", "evaluation", "fraction"]).any()
    row = table[(table.method == "lesion_cl") & (table.evaluation == "linear") & (table.fraction == 1.0)].iloc[0]
    assert row.n_seeds == 2 and row.status == "ok"
    assert row.test_kappa_mean == pytest.approx(0.71)
    assert row.test_kappa_std == pytest.approx(np.std([0.7, 0.72], ddof=1))
    single = table[(table.method == "random") & (table.evaluation == "linear") & (table.fraction == 0.1)].iloc[0]
    assert single.n_seeds == 1 and np.isnan(single.test_kappa_std)
    assert set(table[table.method == "imagenet"].status) == {"skipped"}
    assert "offline" in table[table.method == "imagenet"].skip_reason.iloc[0]
    missing = table[(table.method == "random") & (table.evaluation == "finetune") & (table.fraction == 0.1)]
    assert missing.status.iloc[0] == "missing"


def test_markdown_layout(result_files, tmp_path):
    results, _ = load_results(result_files)
    table = kappa_table(results, METHODS, FRACTIONS)
    md = kappa_markdown(table, METHODS, FRACTIONS)
    assert "## Linear evaluation" in md and "## Fine-tuning" in md
    assert "| method | 10% | 100% |" in md
    assert "| lesion_cl | 0.530 ± 0.014 | 0.710 ± 0.014 |" in md
    assert "| random | 0.110 | 0.200 |" in md
    assert "| imagenet | skipped | skipped |" in md
    assert "| random | – | 0.200 |" in md  # the missing fine-tune cell
    write_tables(table, tmp_path / "t" / "kappa.csv", tmp_path / "t" / "kappa.md", METHODS, FRACTIONS)
    back = pd.read_csv(tmp_path / "t" / "kappa.csv")
    assert {"method", "evaluation", "fraction", "n_seeds", "val_kappa_mean", "test_kappa_mean",
            "test_kappa_std"} <= set(back.columns)
    assert len(back) == len(table)


def test_auroc_blocks_when_results_carry_it(result_files, tmp_path):
    results, _ = load_results(result_files)
    md = kappa_markdown(kappa_table(results, METHODS, FRACTIONS), METHODS, FRACTIONS)
    assert "AUROC of referable DR" not in md.split("## Linear evaluation")[1]  # earlier results
    with_auc = []
    for i, path in enumerate(result_files):
        r = json.loads(path.read_text())
        if not r["skipped"] and r["evaluation"] == "linear":
            r["test"].update(referable_auroc=0.8 + 0.05 * r["seed"], referable_auroc_ci95=[0.7, 0.9])
        p = tmp_path / f"auc{i}.json"
        p.write_text(json.dumps(r))
        with_auc.append(p)
    results, _ = load_results(with_auc)
    table = kappa_table(results, METHODS, FRACTIONS)
    row = table[(table.method == "lesion_cl") & (table.evaluation == "linear") & (table.fraction == 1.0)].iloc[0]
    assert row.test_auroc_mean == pytest.approx(0.825) and row.test_auroc_ci_low == pytest.approx(0.7)
    md = kappa_markdown(table, METHODS, FRACTIONS)
    block = md.split("## Linear evaluation: AUROC of referable DR (grade 2 or more)")[1]
    assert "| lesion_cl | 0.825 ± 0.035 [0.70, 0.90] | 0.825 ± 0.035 [0.70, 0.90] |" in block
    assert "| random | 0.800 [0.70, 0.90] |" in block and "| imagenet | skipped | skipped |" in block
    assert "Fine-tuning: AUROC" not in md  # no fine-tuning result carries it here


def test_fractions_not_configured_for_an_evaluation_have_no_row(result_files):
    results, _ = load_results(result_files)
    table = kappa_table(results, METHODS, FRACTIONS, fractions_of={"finetune": [1.0]})
    finetune = table[table.evaluation == "finetune"]
    assert set(finetune.fraction) == {1.0} and len(finetune) == len(METHODS)
    assert set(table[table.evaluation == "linear"].fraction) == set(FRACTIONS)  # default: all
    md = kappa_markdown(table, METHODS, FRACTIONS)
    fine = md.split("## Fine-tuning")[1]
    assert "| lesion_cl | – | 0.710 ± 0.014 |" in fine and "not run in this configuration" in md


def test_bad_result_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"method\": \"x\"}")
    with pytest.raises(ValueError, match="bad.json"):
        load_results([bad])


def test_figures(result_files, tmp_path):
    results, raw = load_results(result_files)
    table = kappa_table(results, METHODS, FRACTIONS)
    plot_kappa_vs_fraction(table, "linear", tmp_path / "k.png")
    plot_confusion_matrices(raw, METHODS, ["linear", "finetune"], tmp_path / "cm.png")
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [5.0, 4.0, 3.5], "val_loss": [np.nan, 4.2, np.nan],
                  "lr": [0.1] * 3, "pairs_per_s": [1.0] * 3}).to_csv(tmp_path / "h.csv", index=False)
    plot_pretrain_curves({"lesion_cl": tmp_path / "h.csv"}, tmp_path / "pre.png")  # an older history
    pd.DataFrame({"epoch": [1, 2], "train_loss": [5.0, 4.0], "val_loss": [np.nan, 4.2],
                  "knn_kappa": [np.nan, 0.3]}).to_csv(tmp_path / "h2.csv", index=False)
    plot_pretrain_curves({"lesion_cl": tmp_path / "h2.csv"}, tmp_path / "pre2.png")
    assert (tmp_path / "pre2.png").stat().st_size > 1000
    pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.0, 0.8], "val_kappa": [0.2, 0.4],
                  "val_accuracy": [0.5, 0.6], "lr": [1e-3, 0.0], "seconds": [1, 1]}).to_csv(
        tmp_path / "ft.csv", index=False)
    pd.DataFrame(columns=["epoch", "train_loss", "val_kappa"]).to_csv(tmp_path / "empty.csv", index=False)
    plot_finetune_curves({"lesion_cl": tmp_path / "ft.csv", "imagenet": tmp_path / "empty.csv"},
                         tmp_path / "ftc.png")
    for name in ("k.png", "cm.png", "pre.png", "ftc.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_interval_and_steps_reach_the_table(tmp_path):
    res = _result("lesion_cl", "finetune", 0.1, 0, 0.6)
    res["test"]["kappa_ci95"] = [0.51, 0.68]
    res["train_steps"] = 24
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    results, _ = load_results([path])
    table = kappa_table(results, ["lesion_cl"], [0.1], ["finetune"])
    row = table.iloc[0]
    assert row["test_kappa_ci_low"] == 0.51 and row["test_kappa_ci_high"] == 0.68 and row["train_steps"] == 24
    md = kappa_markdown(table, ["lesion_cl"], [0.1])
    assert "| lesion_cl | 0.600 [0.51, 0.68] |" in md
    assert "SGD steps per fine-tuning run: 10%: 24." in md
    assert format_cell(0.6, np.nan, 1, ci=(np.nan, np.nan)) == "0.600"


# Parses the workflow (in a child process, as tests/test_config.py does) and prints, for
# every report() output, its rule, caption file and the rule's plain params.
_CAPTIONS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                      config_settings=ConfigSettings(configfiles=[Path(sys.argv[1])]),
                      snakefile=Path(sys.argv[2]), workdir=Path(sys.argv[3]))._workflow
    out = []
    for r in wf.rules:
        for f in r.output:
            flag = getattr(f, "flags", {}).get("report")
            if flag is not None:
                params = {k: v for k, v in r.params.items() if not callable(v)}
                out.append({"rule": r.name, "caption": str(flag.caption), "params": params})
print("CAPTIONS=" + json.dumps(out, default=str))
"""


def test_every_report_caption_renders_with_its_rules_params(tmp_path):
    """A caption that names a param its rule does not have renders as a blank (Jinja's
    default) and breaks the reST around it: every caption is rendered here strictly,
    with its rule's own params, and must give clean reStructuredText."""
    import io
    import subprocess
    import sys
    from types import SimpleNamespace

    import docutils.core
    import jinja2
    import yaml

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    proc = subprocess.run([sys.executable, "-c", _CAPTIONS, str(REPO / "config/config.yaml"),
                           str(REPO / "Snakefile"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("CAPTIONS=")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    captions = json.loads(lines[-1].removeprefix("CAPTIONS="))
    assert len({c["caption"] for c in captions}) >= 20
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    problems = []
    for c in captions:
        wildcards = SimpleNamespace(set="aptos2019", split="train", method="lesion_cl",
                                    evaluation="linear", shard="0")
        snakemake = SimpleNamespace(params=SimpleNamespace(**c["params"]), config=config,
                                    wildcards=wildcards)
        try:
            text = env.from_string(Path(c["caption"]).read_text()).render(snakemake=snakemake)
        except jinja2.UndefinedError as exc:
            problems.append(f"{c['rule']}: {Path(c['caption']).name}: {exc}")
            continue
        warnings = io.StringIO()
        docutils.core.publish_string(text, writer_name="html", settings_overrides={
            "warning_stream": warnings, "report_level": 2})
        if warnings.getvalue():
            problems.append(f"{c['rule']}: {Path(c['caption']).name}: {warnings.getvalue()}")
    assert not problems, "\n".join(problems)
