"""Backbone loading for the compared methods, feature extraction and linear evaluation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from lesioncl.evaluation.features import (
    FeatureSettings,
    MethodUnavailable,
    build_method_backbone,
    load_crop_cache,
    load_features,
    method_kind,
    run_feature_extraction,
    save_features,
)
from lesioncl.evaluation.fractions import sample_fractions
from lesioncl.evaluation.linear import LinearSettings, linear_evaluation, run_linear, standardize


def _authors_format(path, arch="resnet18"):
    """A torchvision ResNet state_dict without fc, as the authors released it."""
    torch.manual_seed(1)
    model = getattr(torchvision.models, arch)(weights=None)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)
    return state


def test_method_kinds():
    assert method_kind("lesion_cl") == "pretrained"
    assert method_kind("simclr_128") == "pretrained"
    assert method_kind("random") == "random"
    assert method_kind("imagenet") == "imagenet"
    assert method_kind("authors", {"authors": "x.pt"}) == "extra"
    with pytest.raises(ValueError, match="extra_weights"):
        method_kind("simclr_big")


def test_authors_weight_format_loads(tmp_path):
    path = tmp_path / "resnet18_authors.pt"
    state = _authors_format(path)
    model = build_method_backbone("authors", "resnet18", path)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_mismatched_architecture_fails_clearly(tmp_path):
    path = tmp_path / "resnet18_authors.pt"
    _authors_format(path)
    with pytest.raises(ValueError, match=r"resnet18_authors\.pt.*resnet34"):
        build_method_backbone("authors", "resnet34", path)
    with pytest.raises(ValueError, match="pretrain.arch"):
        build_method_backbone("authors", "resnet50", path)


def test_random_is_seeded_and_imagenet_offline_is_unavailable(tmp_path, monkeypatch):
    a = build_method_backbone("random", "resnet18", seed=5).state_dict()
    b = build_method_backbone("random", "resnet18", seed=5).state_dict()
    c = build_method_backbone("random", "resnet18", seed=6).state_dict()
    assert torch.equal(a["conv1.weight"], b["conv1.weight"])
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(MethodUnavailable, match="not available offline"):
        build_method_backbone("imagenet", "resnet18")


def _tiny_cache(tmp_path, split, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    levels = np.arange(n) % 5
    np.save(tmp_path / f"crops_{split}.npy", images)
    pd.DataFrame({"image": [f"{split}{i}_left" for i in range(n)], "level": levels,
                  "split": split}).to_csv(tmp_path / f"crops_{split}.csv", index=False)
    return tmp_path / f"crops_{split}.npy", tmp_path / f"crops_{split}.csv"


def test_crop_cache_checks(tmp_path):
    npy, csv = _tiny_cache(tmp_path, "val", 4)
    images, rows = load_crop_cache(npy, csv)
    assert images.shape == (4, 32, 32, 3) and len(rows) == 4
    pd.read_csv(csv).iloc[:3].to_csv(csv, index=False)
    with pytest.raises(ValueError, match="out of sync"):
        load_crop_cache(npy, csv)
    np.save(npy, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="crop_cache"):
        load_crop_cache(npy, csv)


def test_feature_extraction_and_skip(tmp_path, monkeypatch):
    npy, csv = _tiny_cache(tmp_path, "train", 6)
    weights = tmp_path / "w.pt"
    _authors_format(weights)
    out = tmp_path / "feats" / "train.npz"
    info = run_feature_extraction(
        method="authors", split="train", images_npy=npy, images_csv=csv, output=out,
        arch="resnet18", weights=weights, settings=FeatureSettings(input_size=32, batch_size=4, amp=True),
        channels_last=True,
    )
    assert info["shape"] == [6, 512]
    feats = load_features(out)
    assert feats["features"].shape == (6, 512) and feats["features"].dtype == np.float32
    assert feats["levels"].tolist() == [0, 1, 2, 3, 4, 0]
    assert feats["images"][0] == "train0_left" and feats["skipped"] is None
    # Same weights, same images: deterministic features; batch size does not matter.
    out2 = tmp_path / "feats" / "train2.npz"
    run_feature_extraction(
        method="authors", split="train", images_npy=npy, images_csv=csv, output=out2,
        arch="resnet18", weights=weights, settings=FeatureSettings(input_size=32, batch_size=5),
    )
    assert np.allclose(load_features(out2)["features"], feats["features"], atol=1e-4)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))
    skipped = tmp_path / "feats" / "imagenet.npz"
    info = run_feature_extraction(
        method="imagenet", split="train", images_npy=npy, images_csv=csv, output=skipped,
        arch="resnet18", settings=FeatureSettings(input_size=32),
    )
    assert info["skipped"] and load_features(skipped)["skipped"].startswith("ImageNet weights")


def _clusters(n, dim=16, seed=0, shuffle_labels=False):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 1, (5, dim)) * 4
    y = rng.choice(5, size=n, p=[0.4, 0.15, 0.2, 0.15, 0.1])
    x = means[y] + rng.normal(0, 1, (n, dim))
    if shuffle_labels:
        y = rng.permutation(y)
    return x.astype(np.float32), y


def test_linear_eval_separable_features_reach_high_kappa():
    xtr, ytr = _clusters(200, seed=0)
    xva, yva = _clusters(100, seed=1)
    xte, yte = _clusters(150, seed=2)
    res = linear_evaluation(xtr, ytr, xva, yva, xte, yte, epochs=30, lr=0.01,
                            weight_decays=[0.0, 1e-3], batch_size=64, seed=0)
    assert res["test"]["kappa"] > 0.95
    assert res["val"]["kappa"] > 0.95
    # the referable-DR score is the head's P(grade >= 2): separable clusters rank perfectly
    assert res["test"]["referable_auroc"] > 0.98 and len(res["test"]["referable_auroc_ci95"]) == 2
    assert res["selected"]["weight_decay"] in (0.0, 1e-3)
    assert 1 <= res["selected"]["epoch"] <= 30
    # Deterministic for a fixed seed.
    again = linear_evaluation(xtr, ytr, xva, yva, xte, yte, epochs=30, lr=0.01,
                              weight_decays=[0.0, 1e-3], batch_size=64, seed=0)
    assert again["test"] == res["test"]


def test_linear_eval_random_labels_stay_near_chance():
    xtr, ytr = _clusters(200, seed=0, shuffle_labels=True)
    xva, yva = _clusters(100, seed=1, shuffle_labels=True)
    xte, yte = _clusters(300, seed=2, shuffle_labels=True)
    res = linear_evaluation(xtr, ytr, xva, yva, xte, yte, epochs=20, weight_decays=[1e-3], seed=0)
    assert abs(res["test"]["kappa"] or 0.0) < 0.3
    low, high = res["test"]["referable_auroc_ci95"]
    assert abs(res["test"]["referable_auroc"] - 0.5) < 0.12 and low < 0.5 < high


def test_standardize_uses_train_statistics_only():
    train = np.array([[0.0, 1.0], [2.0, 1.0]], np.float32)
    test = np.array([[4.0, 5.0]], np.float32)
    s_train, s_test = standardize(train, test)
    assert np.allclose(s_train.mean(0), 0)
    assert np.allclose(s_test, [[3.0, 4.0]])  # mean (1, 1), std (1, floor->1)


def test_run_linear_files_and_skipped(tmp_path):
    paths = {}
    for split, n, seed in (("train", 150, 0), ("val", 60, 1), ("test", 80, 2)):
        x, y = _clusters(n, seed=seed)
        paths[split] = tmp_path / f"{split}.npz"
        save_features(paths[split], x, y, [f"{split}{i}" for i in range(n)], "m", split)
    train = load_features(paths["train"])
    fr = sample_fractions(pd.DataFrame({"image": train["images"], "level": train["levels"]}), [0.5, 1.0], 0)
    fr.to_csv(tmp_path / "seed0.csv", index=False)
    out = tmp_path / "linear" / "frac0.5_seed0.json"
    res = run_linear(
        method="m", fraction=0.5, seed=0, train_features=paths["train"], val_features=paths["val"],
        test_features=paths["test"], fractions_csv=tmp_path / "seed0.csv", output=out,
        settings=LinearSettings(epochs=20, weight_decays=[0.0]), tensorboard_dir=tmp_path / "tb",
    )
    saved = json.loads(out.read_text())
    assert saved["skipped"] is False and saved["evaluation"] == "linear"
    assert saved["n_train"] == fr["frac0.5"].sum() == res["n_train"]
    assert saved["test"]["kappa"] > 0.9 and len(saved["test"]["confusion_matrix"]) == 5
    assert any((tmp_path / "tb").iterdir())

    save_features(paths["val"], np.zeros((0, 0)), [], [], "imagenet", "val", skipped="no weights")
    out = tmp_path / "linear" / "skipped.json"
    run_linear(method="imagenet", fraction=0.5, seed=0, train_features=paths["train"],
               val_features=paths["val"], test_features=paths["test"],
               fractions_csv=tmp_path / "seed0.csv", output=out)
    saved = json.loads(out.read_text())
    assert saved["skipped"] is True and saved["skip_reason"] == "no weights"


def test_linear_settings_keep_the_grid_as_a_tuple():
    """The rule hands the YAML list over; the frozen settings hold (and hash) a tuple."""
    settings = LinearSettings(weight_decays=[0.0, 0.1])
    assert settings.weight_decays == (0.0, 0.1) and hash(settings) == hash(LinearSettings(weight_decays=(0.0, 0.1)))
