"""Detector training resumes after SIGTERM (what SLURM sends at a time limit) from the
last epoch mmengine saved, and publishes a plain state_dict as before.

tests/test_slurm.py shows the same through a real SLURM time limit.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_detector import make_coco, schema_defaults

EPOCHS = 4


class Custom:
    """An object in a checkpoint (as mmengine's): not loadable with weights_only=True."""


def _setup(root: Path) -> dict:
    train_ann, train_images = make_coco(root, "train", 4, seed=0)
    test_ann, test_images = make_coco(root, "test", 2, seed=1)
    hp = schema_defaults("detector") | dict(
        backbone="resnet18", init="random", img_scale=[128, 96], epochs=EPOCHS, lr_steps=[], warmup_iters=1,
        frozen_stages=-1, workers=0, fpn_channels=16, roi_fc_channels=32, rpn_batch=32, roi_batch=32,
        anchor_scales=[2, 4], val_interval=100, log_interval=1, lr=0.01, batch_size=2,
    )
    out = root / "out"
    return dict(hp=hp, train_ann=str(train_ann), train_images=str(train_images), test_ann=str(test_ann),
                test_images=str(test_images), out_model=str(out / "model.pth"),
                out_config=str(out / "mmdet_config.py"), out_metrics=str(out / "metrics.json"),
                out_curves=str(out / "curves.png"), work_dir=str(out / "work"), seed=0, device="cpu",
                threads=1, resume_dir=str(out / "checkpoints"))


def _train_steps(scalars: Path) -> list[int]:
    return [json.loads(line)["step"] for line in scalars.read_text().splitlines()
            if line.strip() and "coco/bbox_mAP_50" not in line]


@pytest.mark.timeout(900)
def test_sigterm_then_rerun_resumes_from_the_last_epoch(tmp_path):
    from lesioncl.detector.train import train_detector

    args = _setup(tmp_path)
    state = Path(args["resume_dir"])
    # The job sends itself SIGTERM (what SLURM sends at a time limit) right after the first
    # epoch checkpoint: the stop lands in the second epoch whatever the machine's load (a
    # test polling for the checkpoint could miss the tiny run's remaining epochs).
    script = (
        "import json, os, signal, sys\n"
        "from mmengine.hooks import CheckpointHook\n"
        "from lesioncl.detector.train import train_detector\n"
        "saved = CheckpointHook.after_train_epoch\n"
        "def after_train_epoch(self, runner):\n"
        "    saved(self, runner)\n"
        "    if runner.epoch == 0:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "CheckpointHook.after_train_epoch = after_train_epoch\n"
        "a = json.loads(sys.argv[1]); hp = a.pop('hp'); train_detector(hp, **a)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=600)
        assert (state / "last_checkpoint").is_file(), proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not Path(args["out_model"]).exists()
    saved = (state / "last_checkpoint").read_text().strip()
    done = int(Path(saved).stem.removeprefix("epoch_"))
    assert 1 <= done < EPOCHS, saved

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        hp = args.pop("hp")
        metrics = train_detector(hp, **args)
    finally:
        logging.getLogger().removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert any(m.startswith(f"resumed from {saved} ({done} of {EPOCHS} epochs done)") for m in messages), messages
    # every iteration logged once, the resumed run starting after the saved epochs
    steps = _train_steps(Path(args["work_dir"]) / "scalars.json")
    assert steps == list(range(1, EPOCHS * 2 + 1)), steps
    runs = sorted(Path(args["work_dir"]).glob("*/vis_data/scalars.json"))
    assert len(runs) == 2 and min(_train_steps(runs[1])) == done * 2 + 1
    # the published model is a plain state_dict; the resume state is gone
    state_dict = torch.load(args["out_model"], map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state_dict.values())
    assert not state.exists() and not list(Path(args["work_dir"]).rglob("*.pth"))
    assert metrics["iterations"] == EPOCHS * 2


def test_other_settings_start_over(tmp_path):
    """A checkpoint of a run with other hyper-parameters or data is not resumed."""
    from lesioncl.detector.resume import RESUME_RECORD, resume_checkpoint

    state = tmp_path / "checkpoints"
    assert resume_checkpoint(state, {"lr": 0.01}) is None  # fresh: the record is written
    (state / "epoch_2.pth").write_bytes(b"x")
    (state / "last_checkpoint").write_text(str(state / "epoch_2.pth"))
    assert resume_checkpoint(state, {"lr": 0.01}) == state / "epoch_2.pth"
    assert resume_checkpoint(state, {"lr": 0.02}) is None
    assert not (state / "epoch_2.pth").exists()
    assert json.loads((state / RESUME_RECORD).read_text()) == {"lr": 0.02}


def test_only_checkpoints_in_the_resume_folder_are_unpickled(tmp_path):
    """weights_only=False is granted to files inside the resume folder, nowhere else,
    and only while the block runs."""
    from lesioncl.detector.resume import trust_checkpoints_in

    inside, outside = tmp_path / "ckpt" / "epoch_1.pth", tmp_path / "elsewhere.pth"
    inside.parent.mkdir()
    for path in (inside, outside):
        torch.save({"meta": Custom()}, path)
    with trust_checkpoints_in(inside.parent):
        assert isinstance(torch.load(inside)["meta"], Custom)
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(outside)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(inside)
