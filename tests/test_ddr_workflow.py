"""The detector trained on DDR, alone or with IDRiD, through the workflow: the synthetic
sets in their real layouts (DDR's masks, or its VOC files with their duplicated
objects), joined, a tiny detector trained and measured on each source's own splits."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, run_snakemake

# beside the SLURM tests (the demo's worker is busy for ~25 minutes)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


@pytest.mark.parametrize("datasets,annotations", [(["ddr", "idrid"], "voc"), (["ddr"], "masks")])
def test_detector_on_ddr(tmp_path, datasets, annotations):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["synthetic"].update(
        workers=1,
        idrid={"n_train": 6, "n_test": 3, "height": 200},
        ddr={"n_train": 6, "n_val": 3, "n_test": 3, "height": 200},
    )
    config["ddr"].update(annotations=annotations, max_size=256)
    config["idrid"].update(max_size=256)
    config["detector"].update(datasets=datasets, epochs=1, img_scale=[256, 192],
                              train_crop=128, lr_steps=[], warmup_iters=1, val_interval=1)
    path = tmp_path / "ddr.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    work = tmp_path / "work"
    run_snakemake(work, "--cores", "2", "results/detector/metrics_by_source.md",
                  "results/detector/qc_test.png", "results/ddr/qc_boxes.png", configfile=path)
    res = work / "results"
    merged = {s: json.loads((res / f"detector/data/coco_{s}.json").read_text())
              for s in ("train", "test")}
    ddr = json.loads((res / "ddr/summary.json").read_text())
    assert ddr["annotations"] == annotations
    if annotations == "voc":  # the duplicated objects removed; the blank-mask image kept
        assert ddr["splits"]["train"]["duplicate_objects_removed"] > 0
        assert ddr["splits"]["train"]["rejected"] == {}
    else:  # the image with all-black masks left out, and listed
        assert ddr["splits"]["train"]["rejected"] == {"no_lesion": 1}
        assert (res / "ddr/rejects.csv").read_text().count("no_lesion") == 1
    idrid = ["idrid"] * 6 if "idrid" in datasets else []
    sources = [im["source"] for im in merged["train"]["images"]]
    assert sources == idrid + ["ddr"] * ddr["splits"]["train"]["images"]
    assert [im["source"] for im in merged["test"]["images"]] == idrid[:3] + ["ddr"] * 3
    metrics = json.loads((res / "detector/metrics.json").read_text())
    assert metrics["train_images"] == len(merged["train"]["images"])
    assert metrics["test_images"] == len(merged["test"]["images"])
    by_source = json.loads((res / "detector/metrics_by_source.json").read_text())
    ordered = [s for s in ("idrid", "ddr") if s in datasets]
    assert by_source["datasets"] == ordered
    expected = {"idrid": ["test"], "ddr": ["test", "val"]}
    assert {s: sorted(v) for s, v in by_source["sources"].items()} == {
        s: expected[s] for s in ordered
    }
    assert by_source["sources"]["ddr"]["val"]["test_images"] == 3
    md = (res / "detector/metrics_by_source.md").read_text()
    label = "IDRiD, DDR" if "idrid" in datasets else "DDR"
    assert md.startswith(f"Detector trained on: {label}") and md.count("| DDR |") == 2
    assert (res / "idrid/qc_boxes.png").exists() == ("idrid" in datasets)
    stamp = json.loads((res / "provenance.json").read_text())
    assert stamp["data"]["ddr"] == {"source": "synthetic"}
    for rule in ("synthetic_ddr", "ddr_coco", "detector_data", "detector_eval"):
        assert (work / f"logs/{rule}/{rule}.log").is_file(), rule
