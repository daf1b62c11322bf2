"""The lesion detector: generated MMDetection config, COCO evaluation, a tiny real training,
and batched inference into lesion-index detections."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from conftest import REPO
from lesioncl.detector.config import CLASSES, mmdet_config_dict, read_coco_classes

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def schema_defaults(section: str) -> dict:
    return {k: v.get("default") for k, v in SCHEMA["properties"][section]["properties"].items()}


PATHS = dict(train_ann="r/coco_train.json", train_images="r/images/train", test_ann="r/coco_test.json",
             test_images="r/images/test", work_dir="r/work")


# ----------------------------------------------------------------------- config
def test_real_recipe_config_has_the_papers_values():
    hp = schema_defaults("detector")
    cfg = mmdet_config_dict(hp, backbone_checkpoint="w/resnet50.pth", **PATHS)
    model = cfg["model"]
    bb = model["backbone"]
    assert model["type"] == "FasterRCNN" and model["neck"]["type"] == "FPN"
    assert (bb["type"], bb["depth"], bb["frozen_stages"], bb["norm_eval"]) == ("ResNet", 50, 1, True)
    assert bb["init_cfg"] == {"type": "Pretrained", "checkpoint": "w/resnet50.pth"}
    assert model["neck"]["in_channels"] == [256, 512, 1024, 2048] and model["neck"]["out_channels"] == 256
    assert model["roi_head"]["bbox_head"]["num_classes"] == 4
    assert model["rpn_head"]["anchor_generator"]["scales"] == [8.0]
    assert model["test_cfg"]["rcnn"] == {"score_thr": 0.05, "nms": {"type": "nms", "iou_threshold": 0.5},
                                         "max_per_img": 100}
    train = cfg["train_dataloader"]
    assert train["batch_size"] == 2
    steps = [s["type"] for s in train["dataset"]["pipeline"]]
    assert steps == ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomFlip", "PackDetInputs"]
    resize = train["dataset"]["pipeline"][2]
    assert resize["scale"] == (1600, 1200) and resize["keep_ratio"] is True
    assert train["dataset"]["pipeline"][3]["prob"] == 0.5
    assert cfg["test_pipeline"][1]["scale"] == (1600, 1200)
    assert cfg["optim_wrapper"]["optimizer"] == {"type": "SGD", "lr": 0.005, "momentum": 0.9, "weight_decay": 0.0001}
    warmup, steps_lr = cfg["param_scheduler"]
    assert (warmup["type"], warmup["by_epoch"], warmup["end"], warmup["start_factor"]) == ("LinearLR", False, 100, 0.001)
    assert (steps_lr["type"], steps_lr["milestones"], steps_lr["gamma"]) == ("MultiStepLR", [50, 80], 0.1)
    assert cfg["train_cfg"]["max_epochs"] == 100
    assert cfg["metainfo"]["classes"] == CLASSES
    assert train["dataset"]["ann_file"] == "r/coco_train.json"
    assert train["dataset"]["data_prefix"] == {"img": "r/images/train/"}
    assert cfg["val_evaluator"]["ann_file"] == "r/coco_test.json"


def test_config_follows_the_workflow_config():
    hp = schema_defaults("detector") | dict(backbone="resnet18", img_scale=[320, 240], epochs=6, lr_steps=[4, 5],
                                            warmup_iters=0, frozen_stages=-1, anchor_scales=[2, 4], lr=0.02,
                                            fpn_channels=64, score_thr=0.1, nms_iou=0.4, max_per_img=50)
    cfg = mmdet_config_dict(hp, backbone_checkpoint=None, **PATHS)
    bb = cfg["model"]["backbone"]
    assert (bb["depth"], bb["frozen_stages"], bb["init_cfg"], bb["norm_eval"]) == (18, -1, None, False)
    assert cfg["model"]["neck"]["in_channels"] == [64, 128, 256, 512]
    assert cfg["model"]["rpn_head"]["anchor_generator"]["scales"] == [2.0, 4.0]
    assert [s["type"] for s in cfg["param_scheduler"]] == ["MultiStepLR"]  # no warm-up
    assert cfg["test_cfg"] == {"type": "TestLoop"}
    assert cfg["model"]["test_cfg"]["rcnn"]["max_per_img"] == 50
    with pytest.raises(ValueError, match="lr_steps"):
        mmdet_config_dict(hp | dict(lr_steps=[6]), **PATHS)


def test_train_crop_samples_windows_that_hold_boxes(tmp_path):
    """detector.train_crop: every training sample is a window of that side cut from the
    resized image, with at least one box, all boxes inside it; the test pipeline (and so
    inference on the EyePACS crops) still sees whole images."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    register_all_modules()
    ann, folder = make_coco(tmp_path, "train", 6, seed=3, size=(320, 240))
    hp = schema_defaults("detector") | dict(backbone="resnet18", img_scale=[320, 240], train_crop=96)
    cfg = mmdet_config_dict(hp, train_ann=str(ann), train_images=str(folder), test_ann=str(ann),
                            test_images=str(folder), work_dir=str(tmp_path / "work"))
    steps = [s["type"] for s in cfg["train_dataloader"]["dataset"]["pipeline"]]
    assert steps == ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomCrop", "RandomFlip", "PackDetInputs"]
    assert "RandomCrop" not in [s["type"] for s in cfg["test_pipeline"]]
    dataset = DATASETS.build(cfg["train_dataloader"]["dataset"])
    for i in range(len(dataset)):
        sample = dataset[i]
        img, boxes = sample["inputs"], sample["data_samples"].gt_instances.bboxes.tensor
        assert tuple(img.shape[1:]) == (96, 96)
        assert len(boxes) >= 1
        assert (boxes >= 0).all() and (boxes <= 96).all()
        assert ((boxes[:, 2] - boxes[:, 0]) > 0).all()


def test_config_round_trips_through_mmengine(tmp_path):
    from mmengine.config import Config

    from lesioncl.detector.config import build_mmdet_config

    cfg = build_mmdet_config(schema_defaults("detector"), backbone_checkpoint=None, **PATHS)
    path = tmp_path / "mmdet_config.py"
    cfg.dump(str(path))
    again = Config.fromfile(str(path))
    assert again.model.backbone.depth == 50
    assert tuple(again.metainfo["classes"]) == CLASSES
    assert again.param_scheduler[1].milestones == [50, 80]


def test_imagenet_init_offline_is_a_clear_error(tmp_path, monkeypatch):
    from lesioncl.detector.train import prepare_backbone_init

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hp = schema_defaults("detector") | dict(backbone="resnet18", init="imagenet", weights=None)
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        prepare_backbone_init(hp, tmp_path / "b.pth")


def test_path_init_is_checked_and_saved_in_torchvision_format(tmp_path):
    import torchvision

    from lesioncl.detector.train import prepare_backbone_init

    src = torchvision.models.resnet18(weights=None)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    hp = schema_defaults("detector") | dict(backbone="resnet18", init="path", weights=str(tmp_path / "w.pth"))
    out = prepare_backbone_init(hp, tmp_path / "b.pth")
    saved = torch.load(out, weights_only=True)
    assert "fc.weight" not in saved and torch.equal(saved["conv1.weight"], src.conv1.weight)
    with pytest.raises(ValueError, match="w.pth.*does not fit a resnet50 backbone"):
        prepare_backbone_init(hp | dict(backbone="resnet50"), tmp_path / "c.pth")


def test_coco_classes_are_checked(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}))
    assert read_coco_classes(path) == CLASSES
    path.write_text(json.dumps({"categories": [{"id": 1, "name": "lesion"}]}))
    with pytest.raises(ValueError, match="c.json.*idrid rule"):
        read_coco_classes(path)


# ----------------------------------------------------------------------- tiny data
COLOURS = [(70, 0, 0), (140, 0, 0), (250, 230, 60), (240, 240, 220)]


def make_coco(root: Path, split: str, n: int, seed: int, size=(128, 96)) -> tuple[Path, Path]:
    """A tiny IDRiD-like COCO set: blobs of four colours on a fundus-coloured background."""
    rng = np.random.default_rng(seed)
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    w, h = size
    for i in range(n):
        im = Image.new("RGB", size, (160, 70, 30))
        draw = ImageDraw.Draw(im)
        for _ in range(4):
            c = int(rng.integers(0, 4))
            s = int(rng.integers(10, 20))
            x, y = int(rng.integers(2, w - s - 2)), int(rng.integers(2, h - s - 2))
            draw.ellipse([x, y, x + s, y + s], fill=COLOURS[c])
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1, bbox=[x, y, s + 1, s + 1],
                             area=(s + 1) ** 2, iscrowd=0))
        name = f"IDRiD_{i:02d}.jpg"
        im.save(folder / name, quality=95)
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
    ann = root / f"coco_{split}.json"  # no "info" key: allowed by COCO, refused by pycocotools 2.0.10
    ann.write_text(json.dumps(dict(images=images, annotations=anns,
                                   categories=[dict(id=i + 1, name=c) for i, c in enumerate(CLASSES)])))
    return ann, folder


def test_coco_metrics_perfect_and_empty(tmp_path):
    from lesioncl.detector.inference import Detections
    from lesioncl.detector.metrics import coco_metrics

    ann, folder = make_coco(tmp_path, "test", 3, seed=5)
    coco = json.loads(ann.read_text())
    dets = []
    for im in coco["images"]:
        mine = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in mine)], np.float32)
        dets.append(Detections(str(folder / im["file_name"]), im["width"], im["height"], boxes,
                               np.full(len(mine), 0.9, np.float32), np.array([a["category_id"] - 1 for a in mine])))
    perfect = coco_metrics(str(ann), str(folder), dets, CLASSES)
    assert perfect["mAP"] == pytest.approx(1.0) and perfect["mAP_50"] == pytest.approx(1.0)
    present = {CLASSES[a["category_id"] - 1] for a in coco["annotations"]}
    for name, pc in perfect["per_class"].items():
        assert pc["AP_50"] == (pytest.approx(1.0) if name in present else None)
    # shifted by more than the box size: nothing matches
    shifted = [Detections(d.path, d.width, d.height, d.boxes + 40, d.scores, d.labels) for d in dets]
    assert coco_metrics(str(ann), str(folder), shifted, CLASSES)["mAP_50"] == 0.0
    empty = [Detections(d.path, d.width, d.height, np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0)) for d in dets]
    assert coco_metrics(str(ann), str(folder), empty, CLASSES)["mAP_50"] == 0.0


# ----------------------------------------------------------------------- tiny training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two iterations of real mmdet training on 4 tiny images (about a minute on CPU)."""
    from lesioncl.detector.train import train_detector

    root = tmp_path_factory.mktemp("det")
    train_ann, train_images = make_coco(root, "train", 4, seed=0)
    test_ann, test_images = make_coco(root, "test", 2, seed=1)
    hp = schema_defaults("detector") | dict(
        backbone="resnet18", init="random", img_scale=[128, 96], epochs=1, lr_steps=[], warmup_iters=1,
        frozen_stages=-1, workers=0, fpn_channels=16, roi_fc_channels=32, rpn_batch=32, roi_batch=32,
        anchor_scales=[2, 4], val_interval=1, log_interval=1, lr=0.01,
    )
    out = root / "out"
    log_file = logging.FileHandler(root / "rule.log")  # what setup_logging gives a rule
    logging.getLogger().addHandler(log_file)
    try:
        metrics = train_detector(
            hp, train_ann=str(train_ann), train_images=str(train_images), test_ann=str(test_ann),
            test_images=str(test_images), out_model=str(out / "model.pth"), out_config=str(out / "mmdet_config.py"),
            out_metrics=str(out / "metrics.json"), out_curves=str(out / "curves.png"), work_dir=str(out / "work"),
            seed=0, device="cpu", threads=1,
        )
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    return root, out, metrics


@pytest.mark.timeout(600)
def test_tiny_training_publishes_a_plain_state_dict_and_metrics(trained):
    root, out, metrics = trained
    state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert "roi_head.bbox_head.fc_cls.weight" in state
    assert state["roi_head.bbox_head.fc_cls.weight"].shape[0] == len(CLASSES) + 1  # + background
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert {"mAP", "mAP_50", "mAP_75", "per_class", "train_seconds"} <= set(saved)
    assert set(saved["per_class"]) == set(CLASSES)
    assert 0.0 <= saved["mAP_50"] <= 1.0 and saved["iterations"] == 2
    assert (out / "curves.png").stat().st_size > 1000
    assert list((out / "work" / "tb").glob("events.out.tfevents.*")), "no TensorBoard log"
    assert "Epoch(train)" in (root / "rule.log").read_text(), "mmengine's training log is not in the rule log"
    text = (out / "mmdet_config.py").read_text()
    assert "FasterRCNN" in text and "microaneurysm" in text
    assert not list((out / "work").rglob("*.pth")) or all(
        p.name == "backbone_init.pth" for p in (out / "work").rglob("*.pth")
    ), "mmengine checkpoints are not written"


@pytest.mark.timeout(600)
def test_predict_shard_rescales_non_square_crops(trained, tmp_path):
    """Batched inference over a manifest: boxes come back in det coordinates and are
    rescaled per axis into the square crops."""
    from lesioncl.lesions import PredictSettings, predict_shard

    root, out, _ = trained
    rows = []
    for i, (w, h, split) in enumerate([(160, 96, "train"), (96, 128, "val"), (128, 96, "test"), (150, 100, "train")]):
        src = Image.open(next((root / "images" / "train").glob("*.jpg"))).resize((w, h))
        det = tmp_path / f"{i}_left_det.jpeg"
        src.save(det)
        rows.append(dict(image=f"{i}_left", patient_id=i, eye="left", level=0, split=split,
                         path=str(det), det_path=str(det), det_width=w, det_height=h))
    manifest = tmp_path / "crop_manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    table = predict_shard(manifest, out / "mmdet_config.py", out / "model.pth", tmp_path / "s0.csv",
                          shard=0, n_shards=2, settings=PredictSettings(size=64, batch_size=2), device="cpu")
    # shard 0 of the train+val rows (0_left, 1_left, 3_left): 0_left and 3_left
    assert set(table["image"]) <= {"0_left", "3_left"}
    back = pd.read_csv(tmp_path / "s0.csv")
    assert list(back.columns) == list(table.columns)
    for r in table.itertuples():
        assert r.x1 == pytest.approx(r.det_x1 * 64 / r.det_width, abs=1e-3)
        assert r.y2 == pytest.approx(r.det_y2 * 64 / r.det_height, abs=1e-3)
    assert len(table), "the detector returned no box at all (score_thr 0.05 on an untrained head)"
    # a manifest whose size disagrees with the file (e.g. swapped w/h) is refused
    rows[0]["det_width"], rows[0]["det_height"] = rows[0]["det_height"], rows[0]["det_width"]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="swapped"):
        predict_shard(manifest, out / "mmdet_config.py", out / "model.pth", tmp_path / "s1.csv",
                      shard=0, n_shards=2, settings=PredictSettings(size=64, batch_size=2), device="cpu")


@pytest.mark.timeout(600)
def test_detector_qc_draws_truth_beside_predictions(trained, tmp_path):
    """The QC figure of rule detector_qc: chosen test images, ground truth | predictions."""
    from lesioncl.detector.qc import DetectorQcSettings, choose_test_images, draw_detector_qc

    root, out, _ = trained
    coco = json.loads((root / "coco_test.json").read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 1]  # image 1: no lesion
    test_ann = tmp_path / "coco_test.json"
    test_ann.write_text(json.dumps(coco))
    assert [im["id"] for im in choose_test_images(coco, 1)] == [2]
    png = tmp_path / "qc.png"
    drawn = draw_detector_qc(out / "mmdet_config.py", out / "model.pth", test_ann, root / "images" / "test",
                             png, settings=DetectorQcSettings(n_images=2, score_threshold=0.0), device="cpu")
    assert [d["image"] for d in drawn["images"]] == ["IDRiD_01.jpg", "IDRiD_00.jpg"]
    assert drawn["images"][0]["truth_boxes"] == 4 and drawn["images"][1]["truth_boxes"] == 0
    # score threshold 0 keeps every box the detector returned
    assert all(d["predicted_boxes"] == d["all_predicted_boxes"] for d in drawn["images"])
    with Image.open(png) as im:
        assert im.width > 2 * im.height / 2 and im.width > 600  # two panels per row
    strict = draw_detector_qc(out / "mmdet_config.py", out / "model.pth", test_ann, root / "images" / "test",
                              tmp_path / "qc2.png", settings=DetectorQcSettings(n_images=2, score_threshold=1.01),
                              device="cpu")
    assert all(d["predicted_boxes"] == 0 for d in strict["images"])
    with pytest.raises(FileNotFoundError, match="rerun rule idrid_coco"):
        draw_detector_qc(out / "mmdet_config.py", out / "model.pth", test_ann, tmp_path / "nowhere",
                         tmp_path / "qc3.png", device="cpu")
