"""External graded sets (lesioncl.external): each published layout with its quirks, read
from the synthetic generator's copy; bad input as clear errors or counted rejects; the
split; the crop; the table; the provenance stamp."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from lesioncl.crop.box import CropParams
from lesioncl.external import EXTERNAL_SETS, ExternalLayoutError, read_external
from lesioncl.external.crop import crop_external, write_labels
from lesioncl.external.split import SplitSettings, stratified_split
from lesioncl.external.tables import external_markdown, external_table
from lesioncl.provenance import ProvenanceError, check_provenance, make_stamp, write_provenance
from lesioncl.synthetic.graded_sets import GRADED_LAYOUTS, GradedSetSettings, generate_graded_set

SMALL = GradedSetSettings(n_images=30, height=160)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("graded")
    return {name: generate_graded_set(name, root / name, SMALL) and root / name
            for name in GRADED_LAYOUTS}


def _copy(sets, name, tmp_path):
    dest = tmp_path / name
    shutil.copytree(sets[name], dest)
    return dest


def test_every_layout_is_generated_and_read(sets):
    assert set(GRADED_LAYOUTS) == set(EXTERNAL_SETS)
    for name, folder in sets.items():
        labels, rejects = read_external(name, folder)
        assert list(labels.columns) == ["image", "level", "split", "path"]
        assert not labels["image"].duplicated().any()
        assert set(labels["split"]) == {"train", "val", "test"}, name
        assert labels["level"].between(0, 4).all()
        assert all(p.startswith(str(folder)) for p in labels["path"])
        assert len(labels) == 30, (name, len(labels), rejects)


def test_layout_quirks(sets):
    # IDRiD grading: names restart in each split; the official test split is kept
    labels, _ = read_external("idrid_grading", sets["idrid_grading"])
    assert {"train_IDRiD_001", "test_IDRiD_001"} <= set(labels["image"])
    assert set(labels.loc[labels["image"].str.startswith("test_"), "split"]) == {"test"}
    # a label file saved with a byte-order mark (spreadsheet exports) reads the same
    csv = sets["idrid_grading"] / "B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv"
    text = csv.read_text()
    csv.write_text("\ufeff" + text, encoding="utf-8")
    try:
        assert read_external("idrid_grading", sets["idrid_grading"])[0].equals(labels)
    finally:
        csv.write_text(text)
    # and the folder's parent works as well as the folder
    labels_b, _ = read_external("idrid_grading", sets["idrid_grading"] / "B. Disease Grading")
    assert labels_b.equals(labels)
    # APTOS: the unlabelled test images are never read
    labels, rejects = read_external("aptos2019", sets["aptos2019"])
    assert (sets["aptos2019"] / "test.csv").is_file() and not labels["path"].str.contains("test_images").any()
    assert rejects.empty
    # Messidor-2: files listed with their extension in another case are found; the two
    # ungradable images are counted, not dropped
    labels, rejects = read_external("messidor2", sets["messidor2"])
    assert labels["path"].str.endswith(".JPG").any()
    assert list(rejects["reason"]) == ["ungradable", "ungradable"]
    # DDR: grade 5 is counted as ungradable, one per split here; `valid` is val
    labels, rejects = read_external("ddr_grading", sets["ddr_grading"])
    assert sorted(rejects["split"]) == ["test", "train", "val"]
    assert set(rejects["reason"]) == {"ungradable"}
    assert (labels["split"] == "val").sum() >= 5


def test_bad_input_is_a_clear_error_or_a_counted_reject(sets, tmp_path):
    # a missing label file: the error names it
    folder = _copy(sets, "aptos2019", tmp_path)
    (folder / "train.csv").unlink()
    with pytest.raises(ExternalLayoutError, match=r"train\.csv is missing"):
        read_external("aptos2019", folder)
    # a grade outside 0-4 (DDR's 5 aside): the error names the file and the row
    folder = _copy(sets, "idrid_grading", tmp_path)
    csv = folder / "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
    text = csv.read_text().splitlines()
    text[2] = "IDRiD_002,7,0,,"
    csv.write_text("\n".join(text) + "\n")
    with pytest.raises(ExternalLayoutError, match=r"Training Labels\.csv: grades must be integers 0-4.*IDRiD_002: '7'"):
        read_external("idrid_grading", folder)
    # a name listed twice in one split
    folder = _copy(sets, "ddr_grading", tmp_path)
    lines = (folder / "DR_grading/train.txt").read_text().splitlines()
    (folder / "DR_grading/train.txt").write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(ExternalLayoutError, match=r"train\.txt: image name\(s\) listed more than once"):
        read_external("ddr_grading", folder)
    # a listed image that is absent, and an image nobody lists: counted rejects
    folder = _copy(sets, "messidor2", tmp_path / "m")
    table = pd.read_csv(folder / "messidor_data.csv", dtype=str)
    gone = folder / "IMAGES" / table.loc[table["adjudicated_gradable"] == "1", "image_id"].iloc[0]
    gone.unlink()
    (folder / "IMAGES" / "stray.png").write_bytes((folder / "IMAGES").glob("*.png").__next__().read_bytes())
    labels, rejects = read_external("messidor2", folder)
    assert len(labels) == 29
    assert sorted(rejects["reason"]) == ["missing_file", "not_listed", "ungradable", "ungradable"]
    assert gone.name in set(rejects["file"])
    # a zip instead of the folder, a missing folder, an unknown set
    archive = tmp_path / "aptos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train.csv", "id_code,diagnosis\n")
    with pytest.raises(ExternalLayoutError, match="extract it first"):
        read_external("aptos2019", archive)
    with pytest.raises(ExternalLayoutError, match="is not a folder"):
        read_external("aptos2019", tmp_path / "nowhere")
    with pytest.raises(ExternalLayoutError, match="unknown external set"):
        read_external("eyepacs", tmp_path)


def test_stratified_split_is_seeded_and_keeps_the_grade_mix():
    images = pd.Series([f"im{i:03d}" for i in range(200)])
    levels = pd.Series(np.repeat([0, 1, 2, 3, 4], [80, 40, 40, 20, 20]))
    s = SplitSettings(val_fraction=0.1, test_fraction=0.2, seed=3)
    split = stratified_split(images, levels, s)
    assert split.value_counts().to_dict() == {"train": 140, "test": 40, "val": 20}
    for level, n in ((0, 80), (3, 20)):
        assert (split[levels == level] == "test").sum() == round(0.2 * n)
    assert split.equals(stratified_split(images, levels, s))  # the same config: the same split
    shuffled = stratified_split(images[::-1], levels[::-1], s)  # listing order does not matter
    assert shuffled.sort_index().equals(split)
    assert not split.equals(stratified_split(images, levels, SplitSettings(seed=4)))
    with pytest.raises(ValueError, match="must leave training images"):
        SplitSettings(val_fraction=0.5, test_fraction=0.5)


def test_crop_cuts_every_frame_around_its_field_of_view(sets, tmp_path):
    """APTOS: grade-0 frames are squares of one size, the others wider; the crops are cut
    around the field of view either way, and a broken file is a counted reject."""
    folder = _copy(sets, "aptos2019", tmp_path)
    labels, rejects = read_external("aptos2019", folder)
    broken = labels["path"].iloc[0]
    open(broken, "wb").close()  # a zero-byte PNG
    write_labels(labels, rejects, tmp_path / "labels.csv", tmp_path / "layout_rejects.csv")
    out = tmp_path / "out"
    summary = crop_external(
        "aptos2019", tmp_path / "labels.csv", tmp_path / "layout_rejects.csv", out / "crops",
        out / "manifest.csv", out / "rejects.csv", out / "summary.json", out / "qc.png",
        CropParams(size=128, search_min_height=100),
    )
    manifest = pd.read_csv(out / "manifest.csv")
    rejects = pd.read_csv(out / "rejects.csv")
    assert len(manifest) == 29 and summary["rejected"]["crop"] == 1
    assert rejects.loc[0, "stage"] == "crop" and rejects.loc[0, "file"] == broken
    assert json.loads((out / "summary.json").read_text())["cropped"]["total"] == 29
    assert (out / "qc.png").stat().st_size > 0
    # the field of view fills every crop: the corners are black, the centre is not, for
    # square (grade-0) and wide frames alike
    from PIL import Image

    fill = {}
    for r in manifest.itertuples():
        arr = np.asarray(Image.open(r.path).convert("L"), dtype=float)
        row = arr[64]  # the middle row: the disc spans it from edge to edge
        fill.setdefault(r.level == 0, []).append((row > 20).mean())
    assert min(fill[True]) > 0.9 and min(fill[False]) > 0.9, fill
    # the EyePACS crop would keep a square frame whole: a smaller disc (the leak)
    kept = crop_external(
        "aptos2019", tmp_path / "labels.csv", tmp_path / "layout_rejects.csv", out / "crops_b",
        out / "m_b.csv", out / "r_b.csv", out / "s_b.json", None,
        CropParams(size=128, search_min_height=100), fov_box=False,
    )
    assert kept["cropped"]["total"] == 29
    square = pd.read_csv(out / "m_b.csv").query("level == 0")
    row = np.asarray(Image.open(square["path"].iloc[0]).convert("L"), dtype=float)[64]
    assert (row > 20).mean() < 0.97


def _result(method, fraction, seed, kappa, auc):
    cm = np.eye(5, dtype=int).tolist()
    return {"method": method, "evaluation": "linear", "fraction": fraction, "seed": seed,
            "skipped": False, "n_train": 10,
            "test": {"kappa": kappa, "kappa_ci95": [kappa - 0.1, kappa + 0.1], "accuracy": 0.5,
                     "confusion_matrix": cm, "n": 5, "referable_auroc": auc,
                     "referable_auroc_ci95": [auc - 0.05, min(1.0, auc + 0.05)]}}


def test_external_table_has_kappa_and_auroc_per_set(tmp_path):
    paths = {}
    for name in ("aptos2019", "messidor2"):
        paths[name] = []
        for method, k in (("lesion_cl", 0.6), ("random", 0.1)):
            p = tmp_path / f"{name}_{method}.json"
            p.write_text(json.dumps(_result(method, 1.0, 0, k, 0.5 + k / 2)))
            paths[name].append(p)
    table = external_table(paths, ["lesion_cl", "random"], [1.0])
    assert len(table) == 4 and set(table["set"]) == {"aptos2019", "messidor2"}
    summary = {"cropped": {"total": 9, "train": 5, "val": 2, "test": 2}, "rejected": {"total": 2},
               "reasons": {"ungradable": 2}}
    md = external_markdown(table, ["lesion_cl", "random"], [1.0], {"messidor2": summary})
    assert "## APTOS 2019 (`aptos2019`)" in md and "## Messidor-2 (`messidor2`)" in md
    assert "9 images (train 5, val 2, test 2); rejected 2 (ungradable 2)." in md
    assert "| lesion_cl | 0.600 [0.50, 0.70] |" in md and "| lesion_cl | 0.800 [0.75, 0.85] |" in md


def test_the_stamp_covers_the_external_sets(tmp_path):
    base = {"eyepacs": {"source": "synthetic"}, "idrid": {"source": "synthetic"}}
    plain = make_stamp(base)
    write_provenance(tmp_path, plain)
    # adding a set extends the stamp (nothing made from other data is replaced)
    added = make_stamp({**base, "external": {"sets": {"aptos2019": str(tmp_path / "a")}}})
    assert check_provenance(tmp_path, added) == "extended"
    write_provenance(tmp_path, added)
    stamp = json.loads((tmp_path / "provenance.json").read_text())
    assert stamp["data"]["external"] == {"aptos2019": str((tmp_path / "a").resolve())}
    assert stamp["history"][0]["hash"] == plain["hash"]
    # another copy of the same set: refused, the set named
    moved = make_stamp({**base, "external": {"sets": {"aptos2019": str(tmp_path / "b")}}})
    with pytest.raises(ProvenanceError, match=r"other data \(external\.aptos2019\)"):
        check_provenance(tmp_path, moved)
    # a config without external sets changes nothing either
    assert check_provenance(tmp_path, plain) == "extended"
    # stamps of configs without external sets keep their hash (earlier results folders)
    assert "external" not in plain["data"]


def test_transfer_grades_another_set_with_the_saved_head(tmp_path):
    """The head a linear evaluation chose, saved in its result with its standardisation,
    grades another set's features as it is (external validation)."""
    from lesioncl.evaluation.features import save_features
    from lesioncl.evaluation.linear import (
        apply_head,
        linear_evaluation,
        linear_probabilities,
        run_transfer,
        standardize,
    )

    rng = np.random.default_rng(0)

    def clusters(n, shift=0.0):
        y = rng.integers(0, 5, n)
        return (y[:, None] * 2.0 + rng.normal(0, 0.5, (n, 8)) + shift).astype(np.float32), y

    (xtr, ytr), (xva, yva), (xte, yte) = clusters(200), clusters(100), clusters(100)
    res = linear_evaluation(xtr, ytr, xva, yva, xte, yte, epochs=20, weight_decays=[0.0], seed=0)
    head = json.loads(json.dumps(res["head"]))  # as the result JSON stores it
    import torch

    state = {k: torch.tensor(head[k]) for k in ("weight", "bias")}
    _, xs_te = standardize(xtr, xte)
    assert np.allclose(apply_head(head, xte), linear_probabilities(state, xs_te), atol=1e-5)
    # the same predictions as the evaluation's own test metrics
    pred = apply_head(head, xte).argmax(1)
    cm = np.zeros((5, 5), int)
    np.add.at(cm, (yte, pred), 1)
    assert cm.tolist() == res["test"]["confusion_matrix"]
    source = tmp_path / "eyepacs.json"
    source.write_text(json.dumps({"method": "m", "evaluation": "linear", "fraction": 1.0,
                                  "seed": 0, "skipped": False, **res}))
    xo, yo = clusters(120)  # another set, same feature space
    save_features(tmp_path / "test.npz", xo, yo, [f"i{i}" for i in range(120)], "m", "test")
    out = run_transfer(method="m", seed=0, source_result=source, test_features=tmp_path / "test.npz",
                       output=tmp_path / "t.json")
    assert out["evaluation"] == "transfer_linear" and out["test"]["n"] == 120
    assert out["test"]["kappa"] > 0.8 and out["test"]["referable_auroc"] > 0.95
    # a shifted set (another camera): the head, trained elsewhere, grades it worse
    xs, ys = clusters(120, shift=3.0)
    save_features(tmp_path / "shifted.npz", xs, ys, [f"s{i}" for i in range(120)], "m", "test")
    shifted = run_transfer(method="m", seed=0, source_result=source,
                           test_features=tmp_path / "shifted.npz", output=tmp_path / "s.json")
    assert shifted["test"]["kappa"] < out["test"]["kappa"] - 0.1
    # a result of an earlier version has no head: said, with the fix
    old = {k: v for k, v in json.loads(source.read_text()).items() if k != "head"}
    source.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="--forcerun eval_linear"):
        run_transfer(method="m", seed=0, source_result=source, test_features=tmp_path / "test.npz",
                     output=tmp_path / "u.json")


def test_external_table_has_a_transfer_column(tmp_path):
    paths = []
    for i, (evaluation, fraction, k) in enumerate(
            (("linear", 0.1, 0.3), ("linear", 1.0, 0.6), ("transfer_linear", 1.0, 0.4))):
        r = _result("lesion_cl", fraction, 0, k, 0.7)
        r["evaluation"] = evaluation
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    table = external_table({"ddr_grading": paths}, ["lesion_cl"], [0.1, 1.0], 1.0)
    assert sorted(table["evaluation"].unique()) == ["linear", "transfer_linear"]
    assert len(table) == 3
    md = external_markdown(table, ["lesion_cl"], [0.1, 1.0])
    assert "| method | 10% | 100% | EyePACS head, as is |" in md
    assert "| lesion_cl | 0.300 [0.20, 0.40] | 0.600 [0.50, 0.70] | 0.400 [0.30, 0.50] |" in md
    assert "Fine-tuning" not in md  # none ran
    # fine-tuning results get their own blocks (no transfer column there)
    r = _result("lesion_cl", 1.0, 0, 0.7, 0.9)
    r["evaluation"] = "finetune"
    (tmp_path / "ft.json").write_text(json.dumps(r))
    table = external_table({"ddr_grading": [*paths, tmp_path / "ft.json"]}, ["lesion_cl"],
                           [0.1, 1.0], 1.0)
    md = external_markdown(table, ["lesion_cl"], [0.1, 1.0])
    block = md.split("Fine-tuning, test kappa:")[1].split("Fine-tuning, AUROC")[0]
    assert "| method | 10% | 100% |\n" in block and "| lesion_cl | – | 0.700 [0.60, 0.80] |" in block
    # the EyePACS fine-tuned grader graded as it is: the fine-tuning block's own column
    r = _result("lesion_cl", 1.0, 0, 0.5, 0.8)
    r["evaluation"] = "transfer_finetune"
    (tmp_path / "tft.json").write_text(json.dumps(r))
    table = external_table({"ddr_grading": [*paths, tmp_path / "ft.json", tmp_path / "tft.json"]},
                           ["lesion_cl"], [0.1, 1.0], 1.0, 1.0)
    md = external_markdown(table, ["lesion_cl"], [0.1, 1.0])
    block = md.split("Fine-tuning, test kappa:")[1].split("Fine-tuning, AUROC")[0]
    assert "| method | 10% | 100% | EyePACS fine-tuned, as is |" in block
    assert "| lesion_cl | – | 0.700 [0.60, 0.80] | 0.500 [0.40, 0.60] |" in block
    # without fine-tuning within the set, the transfer still gets its block
    table = external_table({"ddr_grading": [*paths, tmp_path / "tft.json"]}, ["lesion_cl"],
                           [0.1, 1.0], 1.0, 1.0)
    md = external_markdown(table, ["lesion_cl"], [0.1, 1.0])
    assert "| lesion_cl | – | – | 0.500 [0.40, 0.60] |" in md.split("Fine-tuning, test kappa:")[1]
