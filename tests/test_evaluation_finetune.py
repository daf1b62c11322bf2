"""Fine-tuning: batched augmentations, training with resume, and a whole tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from lesioncl.evaluation import finetune as ft
from lesioncl.evaluation.augment import AugmentConfig, BatchAugment
from lesioncl.evaluation.finetune import FinetuneSettings, Grader
from lesioncl.evaluation.finetune_job import run_finetune
from lesioncl.evaluation.fractions import sample_fractions

IDENTITY = AugmentConfig(hflip=0, vflip=0, brightness=0, contrast=0, scale=(1, 1), ratio=(1, 1),
                         degrees=0, translate=0)


def test_augment_identity_and_flip():
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(BatchAugment(IDENTITY)(x), x, atol=1e-5)
    flip = AugmentConfig(**{**IDENTITY.__dict__, "hflip": 1.0})
    assert torch.allclose(BatchAugment(flip)(x), x.flip(3), atol=1e-5)


def test_augment_default_is_random_bounded_and_seeded():
    x = torch.rand(4, 3, 24, 24)
    aug = BatchAugment()
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    p = aug.sample(1000, (64, 64), torch.Generator().manual_seed(0))
    area = p.crop[:, 2] * p.crop[:, 3] / 64**2  # of the resized crop, in integer pixels
    # torchvision's RandomResizedCrop(scale 0.87-1.15): a crop larger than the image is
    # redrawn, so no zoom-out; the sides are whole pixels (area within rounding of 0.87)
    assert area.min() >= 0.87 - 0.04 and area.max() <= 1.0 and area.max() > 0.98
    ratio = p.crop[:, 3] / p.crop[:, 2]
    assert ratio.min() >= 0.7 - 0.05 and ratio.max() <= 1.3 + 0.05
    b, c, s, h = p.jitter.unbind(1)
    assert 0.8 <= b.min() and b.max() <= 1.2 and 0.8 <= c.min() and c.max() <= 1.2
    assert (s == 1).all() and (h == 0).all()  # no saturation or hue jitter


def _model():
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = torch.nn.Identity()
    return Grader(backbone, 512)


def _data(n, seed, size=32):
    rng = np.random.default_rng(seed)
    levels = np.arange(n) % 5
    # Brightness grows with the grade, so the task is learnable.
    images = (rng.integers(0, 40, (n, size, size, 3)) + levels[:, None, None, None] * 40).astype(np.uint8)
    return images, levels


SETTINGS = FinetuneSettings(epochs=3, batch_size=4, lr=1e-3, input_size=32, eval_batch_size=8,
                            tune_thresholds=True, amp=True, channels_last=True, workers=0)


def test_finetune_resume_is_exact(tmp_path, monkeypatch):
    train, ytr = _data(10, 0)
    val, yva = _data(6, 1)
    full = ft.finetune(_model(), train, ytr, val, yva, SETTINGS, seed=0)
    assert [r["epoch"] for r in full["history"]] == [1, 2, 3]
    assert 1 <= full["best_epoch"] <= 3

    # Interrupted during epoch 3 (after two checkpoints), then resumed.
    ckpt = tmp_path / "ckpt" / "run.pt"
    real_predict, calls = ft.predict, {"n": 0}

    def flaky_predict(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(ft, "predict", flaky_predict)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(_model(), train, ytr, val, yva, SETTINGS, seed=0, checkpoint=ckpt, fingerprint="a")
    monkeypatch.setattr(ft, "predict", real_predict)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    assert not list(ckpt.parent.glob("*.tmp"))
    resumed = ft.finetune(_model(), train, ytr, val, yva, SETTINGS, seed=0, checkpoint=ckpt, fingerprint="a")
    for a, b in zip(full["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert resumed["best_epoch"] == full["best_epoch"]

    # A checkpoint of other settings is not reused.
    other = ft.finetune(_model(), train, ytr, val, yva, FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 1}),
                        seed=0, checkpoint=ckpt, fingerprint="b")
    assert len(other["history"]) == 1


def _cache(tmp_path):
    cache = {}
    for split, n, seed in (("train", 12, 0), ("val", 8, 1), ("test", 8, 2)):
        images, levels = _data(n, seed)
        np.save(tmp_path / f"crops_{split}.npy", images)
        pd.DataFrame({"image": [f"{split}{i}" for i in range(n)], "level": levels, "split": split}).to_csv(
            tmp_path / f"crops_{split}.csv", index=False)
        cache[split] = (tmp_path / f"crops_{split}.npy", tmp_path / f"crops_{split}.csv")
    rows = pd.read_csv(cache["train"][1])
    sample_fractions(rows, [0.5, 1.0], seed=0).to_csv(tmp_path / "seed0.csv", index=False)
    return cache


def test_run_finetune_outputs(tmp_path):
    cache = _cache(tmp_path)
    weights = tmp_path / "w.pt"
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items()
                if not k.startswith("fc.")}, weights)
    out = tmp_path / "ft" / "frac0.5_seed0.json"
    hist = tmp_path / "ft" / "frac0.5_seed0_history.csv"
    ckpt = tmp_path / "ckpt" / "frac0.5_seed0.pt"
    run_finetune(
        method="lesion_cl", fraction=0.5, seed=0, arch="resnet18", weights=weights,
        imagenet_weights=None, cache=cache, fractions_csv=tmp_path / "seed0.csv", output=out,
        history_csv=hist, checkpoint=ckpt, tensorboard_dir=tmp_path / "tb", settings=SETTINGS,
    )
    res = json.loads(out.read_text())
    assert res["evaluation"] == "finetune" and res["skipped"] is False
    assert res["n_train"] == 7 and res["n_train_per_level"] == [2, 2, 1, 1, 1]
    for key in ("val", "test", "val_tuned", "test_tuned"):
        assert res[key]["n"] == 8 and np.array(res[key]["confusion_matrix"]).sum() == 8
    assert np.all(np.diff(res["thresholds_tuned"]) > 0)
    # the regression score ranks referable DR (the 8 test images: both sides present)
    assert 0.0 <= res["test"]["referable_auroc"] <= 1.0 and len(res["test"]["referable_auroc_ci95"]) == 2
    if res["val"]["kappa"] is not None and res["val_tuned"]["kappa"] is not None:
        assert res["val_tuned"]["kappa"] >= res["val"]["kappa"] - 1e-12
    history = pd.read_csv(hist)
    assert list(history["epoch"]) == [1, 2, 3] and list(history.columns) == ft.HISTORY_COLUMNS
    assert res["selected"]["epoch"] in history["epoch"].tolist()
    assert not ckpt.exists()  # removed after success
    assert any((tmp_path / "tb").iterdir())


def test_run_finetune_imagenet_offline_is_skipped(tmp_path, monkeypatch):
    cache = _cache(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))
    out = tmp_path / "imagenet.json"
    run_finetune(
        method="imagenet", fraction=1.0, seed=0, arch="resnet18", weights=None, imagenet_weights=None,
        cache=cache, fractions_csv=tmp_path / "seed0.csv", output=out, history_csv=tmp_path / "h.csv",
        checkpoint=None, tensorboard_dir=None, settings=SETTINGS,
    )
    res = json.loads(out.read_text())
    assert res["skipped"] is True and "offline" in res["skip_reason"]
    assert list(pd.read_csv(tmp_path / "h.csv").columns) == ft.HISTORY_COLUMNS


def test_steps_per_epoch_has_a_floor():
    assert ft.steps_per_epoch(240, 16) == 15
    assert ft.steps_per_epoch(24, 16) == 1  # one pass, drop_last
    assert ft.steps_per_epoch(24, 16, min_steps=8) == 8  # a small fraction passes several times
    assert ft.steps_per_epoch(240, 16, min_steps=8) == 15
    assert ft.steps_per_epoch(10, 16) == 1


def test_min_steps_per_epoch_trains_that_many_steps(tmp_path):
    train, ytr = _data(10, 0)
    val, yva = _data(6, 1)
    settings = FinetuneSettings(**{**SETTINGS.__dict__, "epochs": 2, "min_steps_per_epoch": 5})
    batches = list(ft._epoch_batches(ft.IndexedImages(train, np.arange(10), ytr), 4, 0, 1, 0, "cpu", 5))
    assert len(batches) == 5 and all(len(b[1]) == 4 for b in batches)  # 2 per pass, reshuffled passes
    first_pass = torch.cat([b[1] for b in batches[:2]])
    second_pass = torch.cat([b[1] for b in batches[2:4]])
    assert len(first_pass) == len(second_pass) == 8
    fit = ft.finetune(_model(), train, ytr, val, yva, settings, seed=0)
    assert fit["steps"] == 10 and [r["epoch"] for r in fit["history"]] == [1, 2]


def test_the_kept_grader_grades_another_set_as_it_is(tmp_path):
    """eval_finetune keeps the grader of its largest fraction; external validation grades
    with it. On the run's own test split it reproduces the run's tuned test metrics."""
    from lesioncl.evaluation.finetune_job import load_grader, run_finetune_transfer

    cache = _cache(tmp_path)
    out, model = tmp_path / "ft" / "frac1_seed0.json", tmp_path / "ft" / "frac1_seed0_model.pt"
    run_finetune(
        method="random", fraction=1.0, seed=0, arch="resnet18", weights=None,
        imagenet_weights=None, cache=cache, fractions_csv=tmp_path / "seed0.csv", output=out,
        history_csv=tmp_path / "h.csv", checkpoint=None, tensorboard_dir=None, settings=SETTINGS,
        model_output=model,
    )
    res = json.loads(out.read_text())
    assert res["model"] == model.name
    assert not model.stat().st_mode & 0o222  # read-only, as a protected output
    grader, record = load_grader(model)  # a plain record: loads with weights_only=True
    assert record["thresholds"] == res["thresholds_tuned"] and record["arch"] == "resnet18"
    assert isinstance(grader, Grader)
    transfer = tmp_path / "transfer.json"
    got = run_finetune_transfer(method="random", seed=0, source_result=out,
                                test_cache=cache["test"], output=transfer)
    assert got["evaluation"] == "transfer_finetune" and got["fraction"] == 1.0
    for key in ("kappa", "confusion_matrix", "referable_auroc"):
        assert got["test"][key] == res["test_tuned"].get(key, res["test"][key]), key
    # a run made before models were kept: a clear error with the fix
    res.pop("model")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(res))
    with pytest.raises(ValueError, match="kept no model .* rerun it"):
        run_finetune_transfer(method="random", seed=0, source_result=old,
                              test_cache=cache["test"], output=tmp_path / "t2.json")
