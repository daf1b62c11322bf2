"""TensorBoard hyper-parameters: every pretraining and fine-tuning run carries its own."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lesioncl.hparams import FINETUNE_METRICS, PRETRAIN_METRICS, plain_value, write_hparams
from lesioncl.pretrain.toydata import write_toy_cache
from lesioncl.pretrain.train import PretrainConfig, run_pretraining


def read_hparams(log_dir: Path) -> tuple[dict, list[str], set[str]]:
    """(hparams of the session, metric tags of the experiment, scalar tags) of one run's events."""
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    hparams, metrics = {}, []
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[key] = getattr(value, kind)
        if data.HasField("experiment"):
            metrics = [m.name.tag for m in data.experiment.metric_infos]
    return hparams, metrics, set(events.Tags()["scalars"])


def test_plain_values():
    assert plain_value(None) == "none" and plain_value([1, 2]) == "1,2" and plain_value(True) is True
    assert plain_value(float("nan")) == "nan" and plain_value(0.5) == 0.5 and plain_value(Path("a")) == "a"


def test_write_hparams_round_trip(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    write_hparams(writer, {"lr": 0.01, "arch": "resnet18", "amp": False, "steps": 3, "sizes": [1, 2]},
                  ["loss"])
    writer.add_scalar("loss", 1.5, 0)
    writer.close()
    hparams, metrics, scalars = read_hparams(tmp_path)
    assert hparams == {"lr": 0.01, "arch": "resnet18", "amp": False, "steps": 3.0, "sizes": "1,2"}
    assert metrics == ["loss"] and "loss" in scalars
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []  # no sub-run, unlike add_hparams


def test_pretraining_run_records_its_hparams(tmp_path):
    toy = write_toy_cache(tmp_path / "toy", size=32, n_train=8, n_val=4, seed=1, colorful=True)
    cfg = PretrainConfig(mode="lesion", train_cache=str(toy["train_cache"]), val_cache=str(toy["val_cache"]),
                         lesion_index=str(toy["index"]), out_dir=str(tmp_path / "lesion_cl"), arch="resnet18",
                         init="random", view_size=16, epochs=1, batch_size=4, lr=0.03, proj_hidden=16, proj_dim=8,
                         val_every=1, workers=0, device="cpu", seed=3, log_images=False, temperature=0.2)
    run_pretraining(cfg)
    hparams, metrics, scalars = read_hparams(cfg.outputs()["tb"])
    assert hparams["mode"] == "lesion" and hparams["arch"] == "resnet18" and hparams["temperature"] == 0.2
    assert hparams["lr"] == 0.03 and hparams["global_batch"] == 4 and hparams["gpus"] == 1
    assert hparams["seed"] == 3 and "train_cache" not in hparams and "out_dir" not in hparams
    assert metrics == list(PRETRAIN_METRICS)
    assert {"epoch/train_loss", "epoch/val_loss"} <= scalars  # the metrics' values come from these


def test_finetune_run_records_its_hparams(tmp_path):
    from test_evaluation_finetune import SETTINGS, _cache

    from lesioncl.evaluation.finetune_job import run_finetune

    cache = _cache(tmp_path)
    weights = tmp_path / "w.pt"
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")},
               weights)
    run_finetune(method="lesion_cl", fraction=0.5, seed=0, arch="resnet18", weights=weights, imagenet_weights=None,
                 cache=cache, fractions_csv=tmp_path / "seed0.csv", output=tmp_path / "ft/r.json",
                 history_csv=tmp_path / "ft/h.csv", checkpoint=tmp_path / "ck/r.pt", tensorboard_dir=tmp_path / "tb",
                 settings=SETTINGS)
    hparams, metrics, scalars = read_hparams(tmp_path / "tb")
    assert (hparams["method"], hparams["fraction"], hparams["seed"], hparams["arch"]) == ("lesion_cl", 0.5, 0.0,
                                                                                          "resnet18")
    assert hparams["n_train"] == 7 and hparams["lr"] == SETTINGS.lr and hparams["epochs"] == SETTINGS.epochs
    assert metrics == list(FINETUNE_METRICS) and "finetune/val_kappa" in scalars
