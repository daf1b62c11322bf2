"""Fine-tuning evaluation: the authors' DR-grading recipe from a pretrained backbone.

* Model – the backbone plus ``Linear(D, 1)``, trained as a regression on the grade
  with MSE; prediction = thresholds 0.5/1.5/2.5/3.5 (optionally thresholds tuned on
  the validation split, reported separately).
* SGD (lr 1e-3, Nesterov momentum 0.9, weight decay 5e-4), cosine schedule to 0
  over all iterations, 25 epochs, batch 16 (all from the config).
* Augmentations, batched on the device (:class:`BatchAugment`): horizontal and
  vertical flips, ColorJitter(brightness 0.2, contrast 0.2), a random resized crop
  (area 0.87-1.15, aspect 0.7-1.3), rotation in ±180° and translation up to 0.2 of
  the side. The crop, rotation and translation are composed into one affine warp
  (one resampling, black fill like the fundus background). Unlike torchvision's
  RandomResizedCrop, which falls back to a centre crop when a sampled crop is larger
  than the image, an area above 1 is a genuine zoom-out here.
* The epoch with the best validation kappa is kept; the test split is scored once,
  with that epoch's weights.
* bf16 autocast and channels_last on CUDA; automatic resume from a checkpoint
  written atomically after each epoch, outside the rule's declared outputs (which
  Snakemake deletes when a job fails), loaded with ``weights_only=True`` and ignored
  when it was written with other settings; it is deleted after a successful run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesioncl.backbones import feature_dim
from lesioncl.checkpoint import fingerprint as make_fingerprint
from lesioncl.checkpoint import load as load_checkpoint
from lesioncl.checkpoint import save as save_checkpoint
from lesioncl.evaluation.features import (
    MethodUnavailable,
    autocast,
    build_method_backbone,
    load_crop_cache,
    normalize,
    predict,
    to_float,
)
from lesioncl.evaluation.fractions import read_fractions
from lesioncl.evaluation.linear import clear_event_files, skipped_result
from lesioncl.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    N_LEVELS,
    classification_metrics,
    predict_thresholds,
    quadratic_kappa,
    tune_thresholds,
)
from lesioncl.history import write_history as write_history_csv
from lesioncl.progress import progress
from lesioncl.utils import seed_everything, write_json

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_kappa", "val_accuracy", "lr", "seconds"]


@dataclass(frozen=True)
class AugmentConfig:
    """The authors' fine-tuning augmentations."""

    hflip: float = 0.5
    vflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    scale: tuple[float, float] = (0.87, 1.15)
    ratio: tuple[float, float] = (0.7, 1.3)
    degrees: float = 180.0
    translate: float = 0.2


class BatchAugment:
    """Random flips, brightness/contrast jitter and an affine warp, per sample, on a batch.

    Input and output: float NCHW in [0, 1] (before normalisation), square images.
    """

    def __init__(self, cfg: AugmentConfig = AugmentConfig()):
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        n, dev = x.shape[0], x.device

        def rand(*shape):
            return torch.rand(*shape, device=dev, generator=gen)

        # Flips.
        hf = (rand(n) < cfg.hflip).view(n, 1, 1, 1)
        x = torch.where(hf, x.flip(3), x)
        vf = (rand(n) < cfg.vflip).view(n, 1, 1, 1)
        x = torch.where(vf, x.flip(2), x)
        # Brightness, then contrast around each image's mean grey level.
        b = (1 + (rand(n) * 2 - 1) * cfg.brightness).view(n, 1, 1, 1)
        x = (x * b).clamp_(0, 1)
        c = (1 + (rand(n) * 2 - 1) * cfg.contrast).view(n, 1, 1, 1)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2)).view(n, 1, 1, 1)
        x = ((x - grey) * c + grey).clamp_(0, 1)
        # Affine warp = resized crop, then rotation and translation (normalised coords).
        theta = self.affine_matrices(n, dev, gen)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def affine_matrices(self, n: int, dev, gen=None) -> torch.Tensor:
        """(n, 2, 3) maps from output to input coordinates in [-1, 1]."""
        cfg = self.cfg

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(n, device=dev, generator=gen)

        area = uniform(*cfg.scale)
        log_ratio = uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt()  # crop size relative to the image side
        h = (area / ratio).sqrt()
        # Crop centre: anywhere that keeps the crop inside the image (centred when larger).
        cx = (uniform(-1.0, 1.0)) * (1 - w).clamp(min=0)
        cy = (uniform(-1.0, 1.0)) * (1 - h).clamp(min=0)
        angle = uniform(-cfg.degrees, cfg.degrees) * math.pi / 180
        tx = uniform(-cfg.translate, cfg.translate) * 2  # fraction of the side -> [-1, 1] units
        ty = uniform(-cfg.translate, cfg.translate) * 2
        cos, sin = angle.cos(), angle.sin()
        # input = centre + S @ R^-1 @ (output - t), R^-1 = [[cos, sin], [-sin, cos]].
        a11, a12 = w * cos, w * sin
        a21, a22 = -h * sin, h * cos
        b1 = cx - (a11 * tx + a12 * ty)
        b2 = cy - (a21 * tx + a22 * ty)
        return torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1)


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
        gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
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
        scores = predict(
            model,
            val_images,
            s.input_size,
            s.eval_batch_size,
            device,
            s.amp,
            s.channels_last,
            s.workers,
            desc=f"val {epoch}",
        ).reshape(-1)
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


def _rows_of(cache_rows, wanted, cache_csv) -> np.ndarray:
    index = {name: i for i, name in enumerate(cache_rows["image"].astype(str))}
    missing = [im for im in wanted if im not in index]
    if missing:
        raise ValueError(
            f"{cache_csv}: {len(missing)} images of the label fraction are not in the cache "
            f"(e.g. {missing[:3]}); rerun the fractions and crop_cache rules"
        )
    return np.array([index[im] for im in wanted], dtype=np.int64)


def run_finetune(
    *,
    method: str,
    fraction: float,
    seed: int,
    arch: str,
    weights: str | os.PathLike | None,
    imagenet_weights: str | os.PathLike | None,
    cache: dict,
    fractions_csv: str | os.PathLike,
    output: str | os.PathLike,
    history_csv: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    tensorboard_dir: str | os.PathLike | None,
    settings: FinetuneSettings,
    device: str = "cpu",
    threads: int = 1,
) -> dict:
    """One fine-tuning run (method x fraction x seed) -> metrics JSON and history CSV.

    ``cache`` maps ``train``/``val``/``test`` to ``(npy, csv)`` paths of the image cache.
    """
    torch.set_num_threads(max(1, int(threads)))
    try:
        backbone = build_method_backbone(method, arch, weights, seed, imagenet_weights)
    except MethodUnavailable as err:
        log.warning("method %s skipped: %s", method, err)
        result = skipped_result(method, "finetune", fraction, seed, str(err))
        write_history(history_csv, [])
        write_json(output, result)
        return result
    model = Grader(backbone, feature_dim(arch))
    torch.manual_seed(seed)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)

    train_all, train_rows = load_crop_cache(*cache["train"])
    val_images, val_rows = load_crop_cache(*cache["val"])
    test_images, test_rows = load_crop_cache(*cache["test"])
    frac = read_fractions(fractions_csv, fraction)
    idx = _rows_of(train_rows, frac["image"].tolist(), cache["train"][1])
    train_levels = frac["level"].to_numpy()
    if not np.array_equal(train_rows["level"].to_numpy()[idx], train_levels):
        raise ValueError(
            f"{fractions_csv}: levels differ from {cache['train'][1]}; rerun the fractions rule"
        )
    log.info(
        "fine-tune %s, fraction %g, seed %d: %d labelled images (per level %s), %d val, %d test; "
        "%s at %dpx on %s",
        method,
        fraction,
        seed,
        len(train_levels),
        np.bincount(train_levels, minlength=N_LEVELS).tolist(),
        len(val_rows),
        len(test_rows),
        arch,
        settings.input_size,
        device,
    )
    fingerprint = make_fingerprint(
        {
            "method": method,
            "fraction": fraction,
            "seed": seed,
            "arch": arch,
            "settings": asdict(settings),
            "device": device,
        },
        files=[weights, fractions_csv, cache["train"][0], cache["val"][0]],
    )
    writer = None
    if tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        if not (checkpoint and Path(checkpoint).is_file()):
            clear_event_files(tensorboard_dir)  # a fresh run; a resumed one continues its curves
        writer = SummaryWriter(str(tensorboard_dir))
        # the run's hyper-parameters, for TensorBoard's HPARAMS view (runs side by side)
        from lesioncl.hparams import FINETUNE_METRICS, finetune_hparams, write_hparams

        write_hparams(
            writer,
            finetune_hparams(
                settings,
                method=method,
                fraction=fraction,
                seed=seed,
                arch=arch,
                n_train=len(train_levels),
            ),
            FINETUNE_METRICS,
        )
    try:
        fit = finetune(
            model,
            train_all,
            train_levels,
            val_images,
            val_rows["level"].to_numpy(),
            settings,
            train_indices=idx,
            seed=seed,
            device=device,
            checkpoint=checkpoint,
            fingerprint=fingerprint,
            writer=writer,
        )
    finally:
        if writer is not None:
            writer.close()

    s = settings
    y_val = val_rows["level"].to_numpy()
    y_test = test_rows["level"].to_numpy()
    val_scores = predict(
        model,
        val_images,
        s.input_size,
        s.eval_batch_size,
        device,
        s.amp,
        s.channels_last,
        s.workers,
        desc="val (best epoch)",
    ).reshape(-1)
    test_scores = predict(
        model,
        test_images,
        s.input_size,
        s.eval_batch_size,
        device,
        s.amp,
        s.channels_last,
        s.workers,
        desc="test (best epoch)",
    ).reshape(-1)
    result = {
        "method": method,
        "evaluation": "finetune",
        "fraction": float(fraction),
        "seed": int(seed),
        "skipped": False,
        "n_train": int(len(train_levels)),
        "n_train_per_level": np.bincount(train_levels, minlength=N_LEVELS).tolist(),
        "train_steps": int(fit["steps"]),
        "head": "regression-mse",
        "settings": asdict(s),
        "selected": {"epoch": fit["best_epoch"]},
        "thresholds": list(DEFAULT_THRESHOLDS),
        "val": classification_metrics(y_val, predict_thresholds(val_scores)),
        "test": classification_metrics(y_test, predict_thresholds(test_scores)),
    }
    if s.tune_thresholds:
        tuned, _ = tune_thresholds(val_scores, y_val)
        result["thresholds_tuned"] = tuned.tolist()
        result["val_tuned"] = classification_metrics(y_val, predict_thresholds(val_scores, tuned))
        result["test_tuned"] = classification_metrics(
            y_test, predict_thresholds(test_scores, tuned)
        )
    write_history(history_csv, fit["history"])
    write_json(output, result)
    if checkpoint and Path(checkpoint).is_file():
        Path(checkpoint).unlink()
    log.info(
        "fine-tune %s frac %g seed %d: best epoch %d, val kappa %s, test kappa %s",
        method,
        fraction,
        seed,
        fit["best_epoch"],
        result["val"]["kappa"],
        result["test"]["kappa"],
    )
    return result
