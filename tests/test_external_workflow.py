"""External evaluation through the workflow in every real layout (the demo covers APTOS
2019 with the pretrained methods; this runs the other three layouts, and APTOS again,
with random weights so that nothing upstream is needed): synthetic sets written in each
layout with its quirks, read, split, cropped, featurised, graded, tabled."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake

# beside the SLURM tests (the demo's worker is busy for ~25 minutes)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

LAYOUTS = ("idrid_grading", "aptos2019", "messidor2", "ddr_grading")


def test_every_layout_end_to_end(tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["synthetic"].update(workers=1, external={"n_images": 40, "height": 200})
    config["evaluation"].update(methods=["random"], workers=0, input_size=128)
    # fine-tuning within each set too: one short epoch a set
    config["evaluation"]["finetune"].update(enabled=True, epochs=1, min_steps_per_epoch=0,
                                            fractions=[1.0])
    config["external"].update(sets={name: "synthetic" for name in LAYOUTS}, fractions=[1.0],
                              transfer=False)  # the demo covers it (it needs EyePACS)
    path = tmp_path / "external.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    work = tmp_path / "work"
    run_snakemake(work, "--cores", "2", "results/tables/external.md", configfile=path)
    table = pd.read_csv(work / "results/tables/external.csv")
    assert sorted(table["set"].unique()) == sorted(LAYOUTS)
    assert (table["method"] == "random").all() and (table["status"] == "ok").all()
    assert sorted(table["evaluation"].unique()) == ["finetune", "linear"]  # transfer: off here
    for _, row in table.iterrows():
        assert -1 <= row["test_kappa_mean"] <= 1
        assert 0 <= row["test_auroc_ci_low"] <= row["test_auroc_mean"] <= row["test_auroc_ci_high"] <= 1
    md = (work / "results/tables/external.md").read_text()
    for title in ("IDRiD (disease grading)", "APTOS 2019", "Messidor-2", "DDR (grading)"):
        assert f"## {title}" in md, md
    assert md.count("Fine-tuning, test kappa:") == len(LAYOUTS)
    # each layout's quirks counted, nothing silently dropped
    summary = {n: json.loads((work / f"results/external/{n}/summary.json").read_text()) for n in LAYOUTS}
    assert summary["ddr_grading"]["reasons"] == {"ungradable": 3}
    assert summary["messidor2"]["reasons"] == {"ungradable": 2}
    assert summary["aptos2019"]["rejected"]["total"] == 0
    for name in LAYOUTS:
        rejects = pd.read_csv(work / f"results/external/{name}/rejects.csv")
        assert len(rejects) == summary[name]["rejected"]["total"]
        assert summary[name]["cropped"]["total"] == 40
        assert (work / f"results/external/{name}/qc_crops.png").stat().st_size > 0
    # the results folder's stamp names every set
    stamp = json.loads((work / "results/provenance.json").read_text())
    assert sorted(stamp["data"]["external"]) == sorted(LAYOUTS)
    assert Path(work / "logs/external_table/external_table.log").is_file()
