"""End to end: the demo DAG from synthetic data to the report, run once per session,
then its window-source controls (`make demo`, then `make controls`).

Then: a rerun recomputes nothing; changing one crop parameter reruns exactly the
crop and what depends on it; the paper's comparison holds in the orderings that hold at
every seed of docs/window-sources.md, at the demo's seed and at another.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake

# one pytest-xdist worker runs every test of the demo (its session fixture runs once there)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """`make demo` then `make controls`: the default target, the controls, and the default
    target again (the kappa table and the report now with the controls)."""
    work = tmp_path_factory.mktemp("demo")
    run_snakemake(work, "--cores", "2")
    run_snakemake(work, "--cores", "2", "controls")
    run_snakemake(work, "--cores", "2")
    return work


def _linear(table: pd.DataFrame) -> pd.Series:
    """Linear test kappa by (method, fraction) from a kappa.csv table."""
    table = table[table["evaluation"] == "linear"].assign(fraction=table["fraction"].round(6))
    return table.set_index(["method", "fraction"])["test_kappa_mean"].astype(float)


# The orderings the demo must show (linear test kappa, every label fraction), each with a
# bar below the smallest margin seen at any of 3 pretraining seeds at equal SGD steps
# (docs/window-sources.md, "The orderings the tests check"); their means over seeds are
# larger still.
ORDERINGS = [
    # (higher, lower, by more than), each bar below the smallest margin measured over 3
    # pretraining seeds on the demo's images (small vessels everywhere;
    # docs/window-sources.md, "The demo with vessels everywhere"): lesion-based CL against
    # whole-image SimCLR at the paper's scale (0.52 / 0.22 / 0.23 on average, 0.18 at
    # least), against its random-window control (0.54 / 0.47 / 0.42, 0.35 at least),
    # against random init (0.47 at least)
    ("lesion_cl", "simclr_64", 0.05),
    ("lesion_cl", "lesion_cl_random", 0.05),
    ("lesion_cl", "random", 0.2),
    # the oracle (the generator's haemorrhages and exudates) level with the detector's
    # windows within the seeds' spread: −0.03 / −0.05 / −0.05 on average, 0.13 below at
    # most (the demo's own seed); on the images of earlier releases it trailed by up to 0.21
    ("lesion_cl_truth", "lesion_cl", -0.25),
]


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
            assert im.size == (CONFIG["crop"]["size"], CONFIG["crop"]["size"])
    test = labels[labels["split"] == "test"]
    assert len(test[test["image"].isin(manifest["image"])]) >= 300  # kappa on >= 300 test images


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


def test_detector_learns(demo):
    metrics = json.loads((demo / "results/detector/metrics.json").read_text())
    # the demo's detector is worth its name: 0.41 measured (docs/detector.md), 0.3 the target
    assert metrics["mAP_50"] > 0.3, metrics


def test_lesion_index(demo):
    from lesioncl.lesions import load_lesion_index

    path = demo / "results/lesions/lesion_index.pkl"
    with open(path, "rb") as fh:
        plain = pickle.load(fh)
    safe = load_lesion_index(path)
    assert set(plain) == {"train", "val"} and plain == safe
    for split, images in plain.items():
        assert images, split
        for name, boxes in images.items():
            assert re.fullmatch(r"\d+_(left|right)\.jpeg", name)
            assert boxes and all(isinstance(b, tuple) and len(b) == 4 for b in boxes)
            size, margin = CONFIG["crop"]["size"], CONFIG["lesion_index"]["border_margin"]
            for x1, y1, x2, y2 in boxes:
                assert margin < x1 < x2 < size - margin and margin < y1 < y2 < size - margin
                largest = CONFIG["lesion_index"]["max_box_size"]
                assert x2 - x1 <= largest and y2 - y1 <= largest


def test_pretrained_backbones_load_into_torchvision(demo):
    import torch
    import torchvision

    methods = ["lesion_cl", *CONFIG["evaluation"]["controls"],
               *(f"simclr_{s}" for s in CONFIG["pretrain"]["simclr_sizes"])]
    for method in methods:
        state = torch.load(demo / f"results/pretrain/{method}/backbone.pth", weights_only=True)
        assert not any(k.startswith("fc.") for k in state)
        torchvision.models.resnet18().load_state_dict(state, strict=False)
        history = pd.read_csv(demo / f"results/pretrain/{method}/history.csv")
        assert history["train_loss"].notna().all()


def test_kappa_table_is_complete(demo):
    table = pd.read_csv(demo / "results/tables/kappa.csv")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    methods = [m for m in config["evaluation"]["methods"] if m != "imagenet"]  # no weights offline
    methods += config["evaluation"]["controls"]  # their results exist: the table shows them
    fractions_of = {"linear": config["evaluation"]["fractions"],
                    "finetune": config["evaluation"]["finetune"]["fractions"] or config["evaluation"]["fractions"]}
    evaluations = ["linear"] + (["finetune"] if config["evaluation"]["finetune"]["enabled"] else [])
    assert sorted(table["evaluation"].unique()) == sorted(evaluations)
    for evaluation in evaluations:
        rows = table[table["evaluation"] == evaluation]
        assert sorted(rows["fraction"].round(6).unique()) == sorted(round(f, 6) for f in fractions_of[evaluation])
        for method in methods:
            for fraction in fractions_of[evaluation]:
                cell = rows[(rows["method"] == method) & (rows["fraction"].round(6) == round(fraction, 6))]
                assert len(cell) == 1, (evaluation, method, fraction, rows)
                kappa = float(cell["test_kappa_mean"].iloc[0])
                assert -1.0 <= kappa <= 1.0
                # the referable-DR AUROC with its interval (the synthetic test split holds
                # both sides)
                auc, low, high = (float(cell[k].iloc[0]) for k in
                                  ("test_auroc_mean", "test_auroc_ci_low", "test_auroc_ci_high"))
                assert 0.0 <= low <= auc <= high <= 1.0, (evaluation, method, fraction, auc, low, high)
    markdown = (demo / "results/tables/kappa.md").read_text()
    for evaluation in evaluations:
        title = {"linear": "Linear evaluation", "finetune": "Fine-tuning"}[evaluation]
        assert f"## {title}: AUROC of referable DR (grade 2 or more)" in markdown
    for method in methods:  # a row and a line of the legend each
        assert markdown.count(f"`{method}`") >= 1 and f"| {method} |" in markdown, method


def test_external_evaluation_of_the_demo(demo):
    """The demo grades every method on a synthetic APTOS 2019 (PNG files, frame size tied
    to grade): the external table holds kappa and AUROC with intervals for each."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    sets = list(config["external"]["sets"])
    assert sets == ["aptos2019"]
    table = pd.read_csv(demo / "results/tables/external.csv")
    methods = [m for m in config["evaluation"]["methods"] if m != "imagenet"]
    ok = table[table["status"] == "ok"]
    assert sorted(ok["method"].unique()) == sorted(methods)
    assert set(table.loc[table["method"] == "imagenet", "status"]) == {"skipped"}
    for _, row in ok.iterrows():
        assert row["test_kappa_ci_low"] <= row["test_kappa_mean"] <= row["test_kappa_ci_high"]
        assert 0 <= row["test_auroc_ci_low"] <= row["test_auroc_mean"] <= row["test_auroc_ci_high"] <= 1
    md = (demo / "results/tables/external.md").read_text()
    assert "## APTOS 2019 (`aptos2019`)" in md and "Linear evaluation, AUROC of referable DR" in md
    summary = json.loads((demo / "results/external/aptos2019/summary.json").read_text())
    n = config["synthetic"]["external"]["n_images"]
    assert summary["cropped"]["total"] == n and summary["rejected"]["total"] == 0
    stamp = json.loads((demo / "results/provenance.json").read_text())
    assert stamp["data"]["external"] == {"aptos2019": "synthetic"}


def test_the_eyepacs_finetuned_grader_grades_the_external_set(demo, tmp_path):
    """With fine-tuning on (the demo leaves it off), eval_finetune keeps the grader of its
    largest fraction, and external validation grades the external set with it as it is."""
    work = tmp_path / "ft"
    shutil.copytree(demo, work, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in ("pretrain", "locks")])
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["evaluation"]["finetune"].update(enabled=True, epochs=1, fractions=[1.0])
    configfile = tmp_path / "ft.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = "results/external/aptos2019/transfer_finetune/random/seed0.json"
    run_snakemake(work, "--cores", "2", target, configfile=configfile)
    source = json.loads((work / "results/eval/finetune/random/frac1_seed0.json").read_text())
    assert source["model"] == "frac1_seed0_model.pt"
    assert (work / "results/eval/finetune/random/frac1_seed0_model.pt").is_file()
    result = json.loads((work / target).read_text())
    assert result["evaluation"] == "transfer_finetune" and result["fraction"] == 1.0
    n_test = pd.read_csv(work / "results/external/aptos2019/cache/crops_test.csv").shape[0]
    assert result["test"]["n"] == n_test and -1 <= result["test"]["kappa"] <= 1
    assert result["thresholds"] == source.get("thresholds_tuned", source["thresholds"])


def test_lesion_index_quality_against_the_generator(demo):
    """On synthetic data the index is scored against the generator's true boxes: its
    windows hold a true lesion more often than random windows in the same images, and
    the random control's boxes hit lesions no more often than chance."""
    quality = json.loads((demo / "results/lesions/quality.json").read_text())
    assert set(quality) == {"detector", "random"}
    train = quality["detector"]["splits"]["train"]
    assert set(train["recall"]) >= {"microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate"}
    assert 0.0 < train["precision"] <= 1.0
    assert train["window_hit_rate"] > train["random_window_hit_rate"] + 0.1, train
    control = quality["random"]["splits"]["train"]
    assert control["precision"] < train["precision"], (control, train)
    assert (demo / "results/lesions/quality.png").stat().st_size > 0


def test_the_salient_window_control_builds_from_the_demo(demo, tmp_path):
    """Rule lesions_salient_index (evaluation.controls: lesion_cl_salient) on the demo's
    index: the detector's images and box sizes, centred on contrasted structures, which
    include the lesions: its boxes hit a true lesion far more often than random ones."""
    work = tmp_path / "salient"
    shutil.copytree(demo, work, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in ("pretrain", "locks")])
    target = "results/lesions/salient/lesion_index.pkl"
    run_snakemake(work, "--cores", "1", target, configfile=REPO / "config/config.yaml")
    salient = pickle.loads((work / target).read_bytes())
    detector = pickle.loads((demo / "results/lesions/lesion_index.pkl").read_bytes())
    for split in ("train", "val"):
        assert set(salient[split]) <= set(detector[split])
        assert len(salient[split]) >= 0.9 * len(detector[split])
        for name, boxes in salient[split].items():
            own = np.array([(x2 - x1, y2 - y1) for x1, y1, x2, y2 in detector[split][name]])
            assert len(boxes) <= len(own), name
            for x1, y1, x2, y2 in boxes:  # the detector's sizes (corners rounded to 0.1 px)
                assert (np.abs(own - (x2 - x1, y2 - y1)).max(axis=1) <= 0.11).any(), name
    from lesioncl.lesions.controls import read_truth_lesions, truth_boxes, truth_by_image
    from lesioncl.lesions.quality import TOLERANCE, _centres, _inside
    from lesioncl.pretrain.data import image_key

    truth = truth_boxes(read_truth_lesions(demo / "results/synthetic/eyepacs_lesions.csv"),
                        pd.read_csv(demo / "results/eyepacs/crop_manifest.csv", dtype={"image": str}),
                        CONFIG["crop"]["size"])
    by_image = truth_by_image(truth).get("train", {})
    hits = total = 0  # box precision as quality.json counts it (centre in a true box)
    for name, boxes in salient["train"].items():
        b = np.asarray(boxes, dtype=float)
        t = by_image.get(image_key(name), np.zeros((0, 4)))
        hits += int(_inside(_centres(b), t, TOLERANCE).any(axis=1).sum())
        total += len(b)
    quality = json.loads((demo / "results/lesions/quality.json").read_text())
    random_precision = quality["random"]["splits"]["train"]["precision"]
    assert hits / total > random_precision + 0.1, (hits / total, random_precision)


def test_the_papers_comparison_holds_at_the_demo_seed(demo):
    """The paper's claim in miniature, where the grade is carried by the lesions: frozen
    lesion-based CL features grade better than whole-image SimCLR at the paper's scale,
    than the same boxes at random places, and than random weights; windows around the
    generator's true lesions trail the detector's by no more than the seeds' spread
    (ORDERINGS)."""
    linear = _linear(pd.read_csv(demo / "results/tables/kappa.csv"))
    for fraction in CONFIG["evaluation"]["fractions"]:
        for higher, lower, margin in ORDERINGS:
            a, b = linear[(higher, round(fraction, 6))], linear[(lower, round(fraction, 6))]
            assert a - b > margin, (fraction, higher, a, lower, b, linear.to_dict())


def test_the_claim_holds_at_a_second_pretraining_seed(demo, tmp_path):
    """The demo pretrains at one seed; its orderings must hold at another (pretrain.seed 1:
    other initial weights, windows and views on the same data), or they would rest on one
    lucky trajectory. The copy keeps everything up to the lesion indexes; lesion-based CL
    trains and is evaluated again, against the demo's own SimCLR-64, random init and
    random-window control. The control is not retrained: at the demo's seed it grades
    best of the 3 seeds measured at 10 and 100 % and within 0.05 of the best at 50 %
    (docs/window-sources.md), so it is the harder comparison; retraining it (and SimCLR)
    here would cost minutes of a test run already near its budget."""
    work = tmp_path / "seed1"
    shutil.copytree(demo, work, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in ("pretrain", "eval", "locks")])
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["pretrain"]["seed"] = 1
    configfile = tmp_path / "seed1.yaml"
    configfile.write_text(yaml.safe_dump(config))
    fractions = [f"{float(f):g}" for f in config["evaluation"]["fractions"]]
    seed = config["evaluation"]["seeds"][0]
    targets = [f"results/eval/linear/lesion_cl/frac{f}_seed{seed}.json" for f in fractions]
    run_snakemake(work, "--cores", "2", *targets, configfile=configfile)
    # another trajectory, not a copy of the demo's
    losses = pd.read_csv(work / "results/pretrain/lesion_cl/history.csv")["train_loss"]
    demo_losses = pd.read_csv(demo / "results/pretrain/lesion_cl/history.csv")["train_loss"]
    assert len(losses) == len(demo_losses) and (losses != demo_losses).any()

    def kappa(folder: Path, method: str, fraction: str) -> float:
        path = folder / f"results/eval/linear/{method}/frac{fraction}_seed{seed}.json"
        return json.loads(path.read_text())["test"]["kappa"]

    checked = 0
    for fraction in fractions:
        for higher, lower, margin in ORDERINGS:
            if higher != "lesion_cl":
                continue
            a, b = kappa(work, higher, fraction), kappa(demo, lower, fraction)
            assert a - b > margin, (fraction, higher, a, lower, b)
            checked += 1
    assert checked == sum(h == "lesion_cl" for h, _, _ in ORDERINGS) * len(fractions) == 9


def test_report_builds(demo):
    run_snakemake(demo, "--report", "results/report.html")
    html = (demo / "results/report.html").read_text(errors="replace")
    assert len(html) > 10_000
    assert "quality.png" in html  # the index against the generator's truth
    assert "lesion_cl_random" in html and "lesion_cl_truth" in html  # the controls' results

