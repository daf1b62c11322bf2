"""End to end: the demo DAG from synthetic data to the report, run once per session.

Then: a rerun recomputes nothing; changing one crop parameter reruns exactly the
crop and what depends on it.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    run_snakemake(work, "--cores", "2")
    return work


def _planned_rules(proc) -> set[str]:
    """Rule names in a dry run's job-stats table."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:")[1].split("\n\n")[0]
    rows = [line.split() for line in table.strip().splitlines()[2:]]
    return {row[0] for row in rows if len(row) == 2 and row[0] != "total"}


def test_labels_and_crops(demo):
    labels = pd.read_csv(demo / "results/eyepacs/labels.csv")
    assert {"image", "patient_id", "eye", "level", "split", "path"} <= set(labels.columns)
    assert set(labels["split"]) == {"train", "val", "test"}
    manifest = pd.read_csv(demo / "results/eyepacs/crop_manifest.csv")
    rejects = pd.read_csv(demo / "results/eyepacs/crop_rejects.csv")
    # every image is either cropped or rejected with a reason
    assert len(manifest) + len(rejects) == len(labels)
    assert set(manifest["image"]).isdisjoint(rejects["image"])
    assert rejects["reason"].notna().all() and len(rejects) >= 3  # the planted bad files
    from PIL import Image

    for path in manifest["path"].head(5):
        with Image.open(demo / path) as im:
            assert im.size == (512, 512)


def test_rerun_does_nothing(demo):
    proc = run_snakemake(demo, "-n", "--cores", "2")
    assert _planned_rules(proc) == set(), proc.stdout[-3000:]


def test_crop_parameter_change_reruns_only_affected_rules(demo, tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["crop"]["bright_margin"] = 12
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    proc = run_snakemake(demo, "-n", "--cores", "2", configfile=changed)
    planned = _planned_rules(proc)
    assert "crop_shard" in planned and "crop_merge" in planned, planned
    untouched = {"synthetic_eyepacs", "synthetic_idrid", "eyepacs_labels", "idrid_coco", "detector_train"}
    assert not planned & untouched, planned
