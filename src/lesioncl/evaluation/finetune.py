"""Fine-tuning evaluation: the authors' DR-grading recipe from a pretrained backbone.

* Model – the backbone plus ``Linear(D, 1)``, trained as a regression on the grade
  with MSE; prediction = thresholds 0.5/1.5/2.5/3.5 (optionally thresholds tuned on
  the validation split, reported separately).
* SGD (lr 1e-3, Nesterov momentum 0.9, weight decay 5e-4), cosine schedule to 0
  over all iterations, 25 epochs, batch 16 (all from the config).
* Augmentations, batched on the device (:class:`.augment.BatchAugment`, the same
  operations as pretraining's, :mod:`lesioncl.augment`): horizontal and vertical
  flips, ColorJitter(brightness 0.2, contrast 0.2), RandomResizedCrop(scale
  0.87-1.15, ratio 0.7-1.3), rotation in ±180° and translation up to 0.2 of the side,
  by torchvision's rules (a crop larger than the image is redrawn, so there is no
  zoom-out), composed into one resampling (black fill like the fundus background).
* The epoch with the best validation kappa is kept; the test split is scored once,
  with that epoch's weights.
* bf16 autocast and channels_last on CUDA; automatic resume from a checkpoint
  written atomically after each epoch, outside the rule's declared outputs (which
  Snakemake deletes when a job fails), loaded with ``weights_only=True`` and ignored
  when it was written with other settings; it is deleted after a successful run.

:mod:`.finetune_job` runs one job of rule eval_finetune; :mod:`.augment` holds the
augmentation.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesioncl.checkpoint import load as load_checkpoint
from lesioncl.checkpoint import save as save_checkpoint
from lesioncl.evaluation.augment import BatchAugment
from lesioncl.evaluation.features import (
    autocast,
    normalize,
    predict,
    to_float,
)
from lesioncl.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    predict_thresholds,
    quadratic_kappa,
)
from lesioncl.history import write_history as write_history_csv
from lesioncl.progress import progress
from lesioncl.utils import seed_everything

log = logging.getLogger("lesioncl.evaluation.finetune")


HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_kappa", "val_accuracy", "lr", "seconds"]


class Grader(nn.Module):
    """Backbone + one regression output (the grade)."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(1)


class IndexedImages(torch.utils.data.Dataset):
    """(uint8 HWC image, level) of selected rows of the memory-mapped cache."""

    def __init__(self, images: np.ndarray, indices: np.ndarray, levels: np.ndarray):
        self.images, self.indices, self.levels = images, indices, levels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.images[self.indices[i]], copy=True))
        return img, int(self.levels[i])


@dataclass
class FinetuneSettings:
    epochs: int = 25
    # An epoch runs at least this many SGD steps (small label fractions pass over their
    # images several times per epoch, each pass reshuffled); 0: one pass per epoch.
    min_steps_per_epoch: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    input_size: int = 512
    eval_batch_size: int = 64
    tune_thresholds: bool = True
    amp: bool = True
    channels_last: bool = True
    workers: int = 0


def grade_scores(model: nn.Module, images, s: FinetuneSettings, device, desc: str) -> np.ndarray:
    """The model's continuous grade (N,) for every image, with the run's inference settings."""
    return predict(
        model,
        images,
        s.input_size,
        s.eval_batch_size,
        device,
        s.amp,
        s.channels_last,
        s.workers,
        desc=desc,
    ).reshape(-1)


def _loader(
    dataset, batch_size: int, seed: int, epoch: int, workers: int, device: str, repeat: int = 0
):
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919 * repeat)
    drop_last = len(dataset) > batch_size  # avoid a BatchNorm batch of one; reshuffled each epoch
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=gen,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
    )


def steps_per_epoch(n_images: int, batch_size: int, min_steps: int = 0) -> int:
    """SGD steps of one fine-tuning epoch: one pass (``drop_last``), at least ``min_steps``."""
    natural = n_images // batch_size if n_images > batch_size else 1
    return max(natural, int(min_steps))


def _epoch_batches(
    dataset, batch_size: int, seed: int, epoch: int, workers: int, device: str, steps: int
):
    """``steps`` batches: passes over ``dataset``, each reshuffled, cut at ``steps``."""
    done, repeat = 0, 0
    while done < steps:
        for batch in _loader(dataset, batch_size, seed, epoch, workers, device, repeat):
            yield batch
            done += 1
            if done == steps:
                return
        repeat += 1


def finetune(
    model: Grader,
    train_images: np.ndarray,
    train_levels: np.ndarray,
    val_images: np.ndarray,
    val_levels: np.ndarray,
    settings: FinetuneSettings,
    *,
    train_indices: np.ndarray | None = None,
    seed: int = 0,
    device: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    fingerprint: str = "",
    writer=None,
    augment: BatchAugment | None = None,
) -> dict:
    """Train ``model`` on the training images (uint8 NHWC array); select the epoch on val.

    ``train_indices`` selects the labelled rows of ``train_images`` (e.g. a fraction of
    the memory-mapped cache, read lazily); ``train_levels`` are their grades.

    Returns ``{"best_state", "best_epoch", "best_val_kappa", "history"}``; the model
    is left holding the best epoch's weights.
    """
    if train_indices is None:
        train_indices = np.arange(len(train_images))
    if len(train_indices) != len(train_levels):
        raise ValueError("train_indices and train_levels differ in length")
    if len(train_indices) < 2:
        raise ValueError(f"fine-tuning needs at least 2 labelled images, got {len(train_indices)}")
    s = settings
    augment = augment or BatchAugment()
    seed_everything(seed)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick fast kernels
    model = model.to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = IndexedImages(train_images, np.asarray(train_indices), np.asarray(train_levels))
    n_steps = steps_per_epoch(len(dataset), s.batch_size, s.min_steps_per_epoch)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=s.lr,
        momentum=s.momentum,
        nesterov=s.nesterov,
        weight_decay=s.weight_decay,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.epochs * n_steps))
    start_epoch, history = 0, []
    best = {"kappa": -math.inf, "epoch": 0, "state": None}
    ckpt = load_checkpoint(checkpoint, fingerprint) if checkpoint else None
    if ckpt is not None:
        log.info("resuming from %s after epoch %d", checkpoint, ckpt["epoch"])
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
        best = {
            "kappa": float(ckpt["best_kappa"]),
            "epoch": int(ckpt["best_epoch"]),
            "state": ckpt["best_state"],
        }
    y_val = np.asarray(val_levels, dtype=np.int64)

    for epoch in range(start_epoch + 1, s.epochs + 1):
        t0 = time.time()
        model.train()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)  # CPU: augmentation draws
        total, seen = 0.0, 0
        bar = progress(
            _epoch_batches(dataset, s.batch_size, seed, epoch, s.workers, device, n_steps),
            total=n_steps,
            desc=f"epoch {epoch}/{s.epochs}",
            unit="batch",
            mininterval=5,
        )
        for imgs, levels in bar:
            x = to_float(imgs.to(device, non_blocking=True), s.input_size)
            x = normalize(augment(x, gen), s.channels_last)
            y = levels.to(device, dtype=torch.float32)
            with autocast(device, s.amp):
                out = model(x)
            loss = F.mse_loss(out.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss at epoch {epoch}; lower evaluation.finetune.lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        scores = grade_scores(model, val_images, s, device, desc=f"val {epoch}")
        val_pred = predict_thresholds(scores, DEFAULT_THRESHOLDS)
        kappa = quadratic_kappa(y_val, val_pred)
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "val_loss": float(np.mean((scores - y_val) ** 2)),
            "val_kappa": kappa,
            "val_accuracy": float(np.mean(val_pred == y_val)),
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
        }
        history.append(row)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val kappa %.4f",
            epoch,
            row["train_loss"],
            row["val_loss"],
            kappa,
        )
        if writer is not None:
            for key in ("train_loss", "val_loss", "val_kappa", "val_accuracy", "lr"):
                value = row[key]
                writer.add_scalar(
                    f"finetune/{key}", 0.0 if not math.isfinite(value) else value, epoch
                )
            writer.flush()
        score = -math.inf if math.isnan(kappa) else kappa
        if best["state"] is None or score > best["kappa"]:
            best = {
                "kappa": score,
                "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        if checkpoint:
            save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "best_state": best["state"],
                    "best_epoch": best["epoch"],
                    "best_kappa": best["kappa"],
                    "fingerprint": fingerprint,
                },
            )
    model.load_state_dict(best["state"])
    return {
        "best_epoch": best["epoch"],
        "best_val_kappa": best["kappa"],
        "history": history,
        "steps": s.epochs * n_steps,
    }


def write_history(path, history: list[dict]) -> None:
    """The fine-tuning history (:data:`HISTORY_COLUMNS`, one row per epoch)."""
    write_history_csv(path, history, HISTORY_COLUMNS)
