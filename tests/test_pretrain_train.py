"""The trainer on generated data: learning, outputs, resume, failure modes."""

from __future__ import annotations

import math
import os
import signal

import pandas as pd
import pytest
import torch
import torchvision

from lesioncl.pretrain.config import COLLAPSE_FRACTION, PretrainConfig
from lesioncl.pretrain.schedule import WarmupCosine
from lesioncl.pretrain.train import run_pretraining
from lesioncl.pretrain.trainer import Trainer, TrainingInterrupted
from lesioncl.pretrain.data import TRAIN_STREAM, VAL_STREAM
from lesioncl.pretrain.toydata import write_toy_cache


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    # colourful discs: images a tiny random-init network can tell apart within a few steps
    return write_toy_cache(tmp_path_factory.mktemp("toy"), size=48, n_train=16, n_val=8, seed=1, colorful=True)


def make_cfg(toy, out, **overrides) -> PretrainConfig:
    """2 epochs x 2 steps of resnet18 on 16-px windows unless overridden."""
    values = dict(
        mode="lesion", train_cache=str(toy["train_cache"]), val_cache=str(toy["val_cache"]),
        lesion_index=str(toy["index"]), out_dir=str(out), arch="resnet18", init="random",
        view_size=16, epochs=2, batch_size=8, lr=0.05, proj_hidden=32, proj_dim=16, val_every=2,
        checkpoint_every=1, workers=0, device="cpu", seed=0, log_images=False,
    )
    values.update(overrides)
    return PretrainConfig(**values)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_loss_decreases_and_outputs_follow_the_contract(toy, tmp_path):
    cfg = make_cfg(toy, tmp_path / "lesion_cl", view_size=24, epochs=10, lr=0.01, warmup_epochs=2,
                   proj_hidden=64, val_every=5, log_images=True)
    history = run_pretraining(cfg)
    losses = [h["train_loss"] for h in history]
    chance = math.log(2 * cfg.batch_size - 1)  # NT-Xent of embeddings that carry no information
    late = sum(losses[-5:]) / 5
    assert late < losses[0] - 0.5 and late < chance - 0.1, [round(v, 3) for v in losses]
    out = cfg.outputs()
    # backbone.pth: torchvision's resnet18 loads it; only fc is missing
    sd = load(out["backbone"])
    assert not any(k.startswith(("fc.", "projector.")) for k in sd)
    result = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    final = load(out["final"])
    assert final["epoch"] == 10 and final["step"] == 0 and len(final["history"]) == 10
    table = pd.read_csv(out["history"])
    assert list(table.columns) == ["epoch", "train_loss", "val_loss", "lr", "pairs_per_s", "embedding_std",
                                   "knn_kappa", "elapsed_s"]
    assert table["knn_kappa"].isna().all()  # no probe configured
    assert table["elapsed_s"].is_monotonic_increasing
    # embeddings spread out (1/sqrt(proj_dim) for a uniform spread), well above the collapse floor
    floor = COLLAPSE_FRACTION / math.sqrt(cfg.proj_dim)
    assert (table["embedding_std"] > 3 * floor).all(), table["embedding_std"].tolist()
    assert table["val_loss"].notna().tolist() == [False] * 4 + [True] + [False] * 4 + [True]
    assert (table["pairs_per_s"] > 0).all() and table["lr"].iloc[0] < table["lr"].iloc[2]  # warm-up
    assert table["lr"].iloc[2:].is_monotonic_decreasing
    assert out["curve"].stat().st_size > 1000 and list(out["tb"].glob("events.*"))
    assert not cfg.checkpoint_path.exists()  # the resume checkpoint is gone once finished


def test_whole_image_simclr_runs(toy, tmp_path):
    cfg = make_cfg(toy, tmp_path / "simclr_16", mode="whole", lesion_index=None, epochs=1, val_every=1)
    history = run_pretraining(cfg)
    assert len(history) == 1 and math.isfinite(history[0]["val_loss"])
    assert cfg.outputs()["backbone"].is_file()


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    cfg = make_cfg(toy, tmp_path_factory.mktemp("reference"))
    return cfg, run_pretraining(cfg)


class StopAfter:
    """Simulates a killed job: raises after the given epoch (its checkpoint is on disk)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, trainer, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


class TermAfter:
    """Sends this process SIGTERM (as SLURM preemption does) after the given epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, trainer, epoch):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_after_a_kill_equals_an_uninterrupted_run(toy, tmp_path, reference):
    ref_cfg, ref_history = reference
    cfg = make_cfg(toy, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg, callbacks=[StopAfter(0)])
    assert load(cfg.checkpoint_path)["epoch"] == 1
    assert not cfg.outputs()["backbone"].exists()
    history = run_pretraining(cfg)  # picks the checkpoint up

    assert_same_weights(load(cfg.outputs()["backbone"]), load(ref_cfg.outputs()["backbone"]))
    assert_same_weights(load(cfg.outputs()["final"])["model"], load(ref_cfg.outputs()["final"])["model"])
    for a, b in zip(history, ref_history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(toy, tmp_path, reference):
    ref_cfg, _ = reference
    cfg = make_cfg(toy, tmp_path / "term")
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 1"):
        run_pretraining(cfg, callbacks=[TermAfter(0)])
    state = load(cfg.checkpoint_path)
    assert (state["epoch"], state["step"]) == (1, 1)  # one step into the second epoch
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    run_pretraining(cfg)
    assert_same_weights(load(cfg.outputs()["backbone"]), load(ref_cfg.outputs()["backbone"]))


def test_a_checkpoint_of_other_settings_is_not_resumed(toy, tmp_path):
    cfg = make_cfg(toy, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg, callbacks=[StopAfter(0)])
    changed = make_cfg(toy, tmp_path / "a", lr=0.01)
    trainer = Trainer(changed)
    assert not trainer.resumed and trainer.epoch == 0
    same = Trainer(make_cfg(toy, tmp_path / "a", workers=1))  # workers do not matter
    assert same.resumed and same.epoch == 1


def test_non_finite_loss_stops_with_epoch_and_step(toy, tmp_path):
    trainer = Trainer(make_cfg(toy, tmp_path / "nan"))
    calls = {"n": 0}
    original = trainer.contrastive_loss

    def poisoned(z):
        calls["n"] += 1
        loss = original(z)
        return loss * float("nan") if calls["n"] == 4 else loss

    trainer.contrastive_loss = poisoned
    with pytest.raises(FloatingPointError, match="epoch 2, step 2"):
        trainer.fit()


def test_collapsed_embeddings_stop_training_with_advice(toy, tmp_path):
    """All views mapped to one point: the loss sits at ln(2N - 1), the gradient is zero,
    and the run stops after COLLAPSE_PATIENCE epochs instead of training on."""
    cfg = make_cfg(toy, tmp_path / "collapsed", epochs=6, val_every=6)
    trainer = Trainer(cfg)
    last = trainer.model.projector[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(1.0)
    with pytest.raises(FloatingPointError, match="collapsed.*Lower pretrain.lr or raise pretrain.warmup_epochs"):
        trainer.fit()
    table = pd.read_csv(cfg.outputs()["history"])
    assert table["epoch"].tolist() == [1, 2, 3]  # stopped at the third collapsed epoch
    assert (table["embedding_std"] < 1e-3).all()
    assert table["train_loss"].tolist() == pytest.approx([math.log(2 * cfg.batch_size - 1)] * 3, abs=1e-3)


def test_warmup_cosine_schedule():
    f = WarmupCosine(total_steps=10, warmup_steps=2)
    assert [round(f(s), 3) for s in range(3)] == [0.5, 1.0, 1.0]
    assert f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert WarmupCosine(4)(0) == 1.0


def test_config_validation(toy, tmp_path):
    with pytest.raises(ValueError, match="needs `lesion_index`"):
        make_cfg(toy, tmp_path, lesion_index=None)
    with pytest.raises(ValueError, match="unknown pretraining mode"):
        make_cfg(toy, tmp_path, mode="moco")
    with pytest.raises(ValueError, match=r"unknown pretraining settings \['lr_typo'\]"):
        PretrainConfig.from_dict({**make_cfg(toy, tmp_path).to_dict(), "lr_typo": 1})


def test_knn_predict_votes_by_similarity():
    from lesioncl.pretrain.probe import knn_predict

    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 3, 3, 4])
    queries = torch.tensor([[2.0, 0.1], [0.05, 3.0], [-1.0, -0.1]])
    assert knn_predict(bank, labels, queries, k=2).tolist() == [0, 3, 4]
    # k larger than the bank: every row votes, the nearest weigh most
    assert knn_predict(bank, labels, queries, k=50, temperature=0.05).tolist() == [0, 3, 4]


def test_knn_probe_is_recorded_at_validated_epochs(toy, tmp_path):
    cfg = make_cfg(toy, tmp_path / "probe", epochs=4, val_every=2, probe_size=32, probe_k=5)
    history = run_pretraining(cfg)
    knn = [h["knn_kappa"] for h in history]
    assert math.isnan(knn[0]) and math.isnan(knn[2]) and math.isfinite(knn[1]) and math.isfinite(knn[3])
    table = pd.read_csv(cfg.outputs()["history"])
    assert table["knn_kappa"].notna().tolist() == [False, True, False, True]
    # the probe changes nothing the training computes
    plain = run_pretraining(make_cfg(toy, tmp_path / "plain", epochs=4, val_every=2))
    assert [h["train_loss"] for h in plain] == [h["train_loss"] for h in history]


def test_knn_probe_grades_a_learnable_cache(tmp_path):
    """Brightness follows the grade: even a random network's features grade it well above chance."""
    import numpy as np

    from lesioncl.pretrain.probe import KNNProbe

    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("val", 30)):
        levels = np.arange(n) % 5
        images = (rng.integers(0, 30, (n, 32, 32, 3)) + levels[:, None, None, None] * 50).astype(np.uint8)
        np.save(tmp_path / f"crops_{split}.npy", images)
        pd.DataFrame({"image": [f"{split}{i}_left.jpeg" for i in range(n)], "level": levels,
                      "split": split}).to_csv(tmp_path / f"crops_{split}.csv", index=False)
    probe = KNNProbe(tmp_path / "crops_train.npy", tmp_path / "crops_val.npy", size=32, k=5)
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    backbone.train()
    result = probe(backbone, torch.device("cpu"))
    assert result["knn_kappa"] > 0.8, result
    assert backbone.training  # its mode is restored


def test_optimizers(toy, tmp_path):
    from lesioncl.pretrain.schedule import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    sgd = build_optimizer(model, make_cfg(toy, tmp_path / "a", weight_decay=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    adamw = build_optimizer(model, make_cfg(toy, tmp_path / "b", optimizer="adamw", weight_decay=0.1, lr=0.002))
    decays = sorted((g["weight_decay"], len(g["params"])) for g in adamw.param_groups)
    assert isinstance(adamw, torch.optim.AdamW) and decays == [(0.0, 3), (0.1, 1)]  # only the weight matrix
    with pytest.raises(ValueError, match="optimizer"):
        make_cfg(toy, tmp_path / "c", optimizer="lamb")


def test_view_warmup_starts_from_identical_views(toy, tmp_path):
    trainer = Trainer(make_cfg(toy, tmp_path / "vw", epochs=4, view_warmup_epochs=2))
    batch = next(iter(trainer.train_loader))  # epoch 0: the two windows of a sample are one
    assert torch.equal(batch[:, 0], batch[:, 1])
    views = trainer.make_views(batch, 0, 0, TRAIN_STREAM)  # and not augmented
    torch.testing.assert_close(views[:, 0], views[:, 1], rtol=0, atol=1e-6)
    trainer.train_sampler.set_epoch(2)  # warm-up over: the paper's views
    batch = next(iter(trainer.train_loader))
    assert not torch.equal(batch[:, 0], batch[:, 1])
    assert not torch.allclose(*trainer.make_views(batch, 2, 0, TRAIN_STREAM).unbind(1))
    # validation views are the paper's from the first epoch
    val = next(iter(trainer.val_loader))
    assert not torch.allclose(*trainer.make_views(val, 0, 0, VAL_STREAM).unbind(1))
    with pytest.raises(ValueError, match="view_warmup_epochs"):
        make_cfg(toy, tmp_path, view_warmup_epochs=-1)
    # part of what a run computes: a checkpoint of another warm-up is not resumed
    assert trainer.fingerprint != Trainer(make_cfg(toy, tmp_path / "vw2", epochs=4)).fingerprint
