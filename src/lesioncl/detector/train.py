"""Train the lesion detector with mmengine's Runner, publish it, evaluate it.

:func:`train_detector`:

1. checks the IDRiD COCO files and their images,
2. prepares the backbone initialisation (``imagenet`` / ``path``: the weights are read
   and checked with :func:`lesioncl.backbones.build_resnet` – mmdet's ResNet uses
   torchvision's key names – and saved as a clean torchvision state_dict that the
   config's ``init_cfg=Pretrained`` points at; ``random``: no ``init_cfg``),
3. generates and writes the MMDetection config (``mmdet_config.py``),
4. trains (TensorBoard and JSON scalars under ``work_dir``; evaluation on the test set
   every ``val_interval`` epochs, for the curves only),
5. saves a plain state_dict (tensors only; ``torch.load(weights_only=True)`` reads it),
6. reloads the published config + weights with the inference code used for the
   lesion index and evaluates on the test set with pycocotools (``metrics.json``:
   mAP@[.5:.95], mAP@0.5, mAP@0.75 and per-class AP),
7. draws the training curves and per-class AP@0.5.

Resume after a time limit or preemption: mmengine trains in ``resume_dir`` (not a
Snakemake output, so Snakemake keeps it when it deletes a failed job's outputs) and
saves its full training state there after every epoch. A rerun with the same
hyper-parameters and data (``resume.json`` records them) resumes from the last saved
epoch (``resumed from ...`` in the log), so a limit costs at most the epoch in
progress; with other settings it starts over. Those checkpoints hold pickled objects
(optimizer, schedulers, mmengine's message hub), so ``torch.load`` runs with
``weights_only=False`` for files inside ``resume_dir`` only, in this process only,
while mmengine resumes. After training, the logs and TensorBoard events are copied to
``work_dir``, the checkpoints deleted with ``resume_dir``, and the published model is
the plain state_dict as before (read with ``weights_only=True`` everywhere else).

Resume: :mod:`.resume`; step 6 and 7: :mod:`.metrics`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from lesioncl.backbones import backbone_state_dict, build_resnet
from lesioncl.detector.config import build_mmdet_config, read_coco_classes
from lesioncl.detector.metrics import (
    check_coco_images,
    evaluate_detector,
    plot_training,
)
from lesioncl.detector.resume import (
    RESUME_RECORD,
    _file_digest,
    merged_scalars,
    resume_checkpoint,
    trust_checkpoints_in,
)
from lesioncl.utils import atomic_path, resolve_device, seed_everything, write_json

log = logging.getLogger(__name__)


def prepare_backbone_init(hp: Mapping[str, Any], out_path: str | os.PathLike) -> str | None:
    """The torchvision-format backbone file for ``init_cfg`` (None for random init)."""
    init = hp["init"]
    if init == "random":
        return None
    try:  # reads the weights safely and checks them against torchvision's layout
        model = build_resnet(hp["backbone"], init, hp.get("weights"))
    except RuntimeError as err:  # shape mismatch: weights of another architecture
        raise ValueError(
            f"detector.weights {hp.get('weights')}: does not fit a {hp['backbone']} backbone "
            f"({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}); "
            "set detector.backbone to the architecture of the weights"
        ) from err
    with atomic_path(out_path) as tmp:
        torch.save(backbone_state_dict(model), tmp)
    return str(out_path)


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors (no wrappers, no pickled objects)."""
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_detector(
    hp: Mapping[str, Any],
    *,
    train_ann: str,
    train_images: str,
    test_ann: str,
    test_images: str,
    out_model: str,
    out_config: str,
    out_metrics: str,
    out_curves: str,
    work_dir: str,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    resume_dir: str | None = None,
) -> dict[str, Any]:
    """Train, publish and evaluate the detector (see the module docstring).

    ``resume_dir``: where mmengine trains and keeps its resume checkpoints (default:
    ``<work_dir>_checkpoints`` beside ``work_dir``).
    """
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    from lesioncl.detector.compat import apply_patches, check_mmcv_cuda_ops, use_device

    classes = read_coco_classes(train_ann)
    read_coco_classes(test_ann)
    train_coco = check_coco_images(train_ann, train_images)
    check_coco_images(test_ann, test_images)
    device = resolve_device(device)
    torch.set_num_threads(max(1, threads - int(hp["workers"])))  # the rest: loader workers
    apply_patches()
    use_device(device)
    check_mmcv_cuda_ops(device)  # before any training, not at the first RoIAlign
    register_all_modules(init_default_scope=True)
    seed_everything(seed)

    work = Path(work_dir)
    state = Path(resume_dir) if resume_dir else work.with_name(f"{work.name}_checkpoints")
    record = {
        "detector": {k: hp[k] for k in sorted(hp)},
        "seed": seed,
        "train": _file_digest(train_ann),
        "test": _file_digest(test_ann),
    }
    resume_from = resume_checkpoint(state, record)
    backbone_file = prepare_backbone_init(hp, state / "backbone_init.pth")
    cfg = build_mmdet_config(
        hp,
        train_ann=str(train_ann),
        train_images=str(train_images),
        test_ann=str(test_ann),
        test_images=str(test_images),
        work_dir=str(state),
        seed=seed,
        backbone_checkpoint=backbone_file,
        tensorboard_dir=str(state / "tb"),
        classes=classes,
        resume_checkpoints=True,
    )
    with atomic_path(out_config) as tmp:
        tmp.write_text(cfg.pretty_text)  # what Config.dump writes for a .py file
    n_train = len(train_coco["images"])
    iters_per_epoch = -(-n_train // int(hp["batch_size"]))
    log.info(
        "training Faster R-CNN %s-FPN (init %s) on %d images, %d epochs x ~%d iterations, "
        "device %s",
        hp["backbone"],
        hp["init"],
        n_train,
        hp["epochs"],
        iters_per_epoch,
        device,
    )
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, str(resume_from)
        log.info(
            "resumed from %s (%s of %d epochs done)",
            resume_from,
            resume_from.stem.removeprefix("epoch_"),
            int(hp["epochs"]),
        )
    # mmengine keeps visualizers by name for the whole process: a fixed name would hand a
    # second run in one process (a resume, the tests) the first run's, saving into its
    # (maybe deleted) folder. A fresh name per run; the published config keeps the fixed one.
    cfg.visualizer["name"] = f"lesioncl-detector-{os.getpid()}-{time.time_ns()}"
    runner = Runner.from_cfg(cfg)
    # mmengine's logger does not propagate: copy its training lines into our log file too
    shared = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and h not in runner.logger.handlers
    ]
    for handler in shared:
        runner.logger.addHandler(handler)
    start = time.time()
    try:
        with trust_checkpoints_in(state):
            runner.train()
    finally:
        for handler in shared:
            runner.logger.removeHandler(handler)
    train_seconds = time.time() - start
    log.info("training took %.0f s", train_seconds)
    with atomic_path(out_model) as tmp:
        torch.save(plain_state_dict(runner.model), tmp)
    del runner
    # publish the logs of every (resumed) run, not the checkpoints; then drop the state
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        state,
        work,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.pth", "last_checkpoint", RESUME_RECORD),
    )
    scalars = work / "scalars.json"
    scalars.write_text("".join(json.dumps(rec) + "\n" for rec in merged_scalars(state)))
    shutil.rmtree(state)

    metrics = evaluate_detector(
        out_config, out_model, test_ann, test_images, device=device, workers=int(hp["workers"])
    )
    metrics.update(
        train_seconds=round(train_seconds, 1),
        train_images=n_train,
        epochs=int(hp["epochs"]),
        iterations=int(hp["epochs"]) * iters_per_epoch,
        device=device,
        backbone=hp["backbone"],
        init=hp["init"],
    )
    write_json(out_metrics, metrics)
    log.info(
        "test mAP %.4f, mAP@0.5 %.4f; per class AP@0.5 %s",
        metrics["mAP"],
        metrics["mAP_50"],
        {k: v["AP_50"] for k, v in metrics["per_class"].items()},
    )
    plot_training(scalars, metrics, out_curves)
    return metrics
