"""The contrastive pretraining trainer (lesion windows or whole images), resumable, DDP-ready.

One plain training loop (torchvision-references style):

* data: uint8 views from the crop cache (:mod:`.data`), augmented per batch on the
  training device (:mod:`.augment`); every random draw is a function of
  ``(seed, epoch, step)`` so runs are reproducible and a resumed run continues
  exactly as if it had never stopped;
* model: ResNet + projection head (:mod:`.builder`), channels_last, bf16 autocast on
  GPU (``amp``), optional ``torch.compile``;
* loss: SupCon in SimCLR mode over the **global** batch; under DDP the embeddings are
  all-gathered with gradients (:func:`.loss.gather_with_grad`) so the update equals the
  single-process one (BatchNorm statistics stay per GPU unless ``sync_bn``);
* optimiser: SGD (momentum, Nesterov, weight decay), per-step cosine schedule to 0
  with an optional linear warm-up;
* validation loss every ``val_every`` epochs (fixed views, so epochs are comparable);
* logs: TensorBoard (``tb/``: loss, lr, pairs/s, view grids), progress (lesioncl.progress), the text log,
  ``history.csv``;
* checkpoints: ``checkpoints/last.pt`` every ``checkpoint_every`` epochs and when the
  job receives SIGTERM/SIGUSR1 (SLURM preemption or time limit, Snakemake stopping
  it; the checkpoint is then taken mid-epoch at the current step), written
  atomically and read with ``weights_only=True``. If it exists when training starts
  and was written for the same hyper-parameters and data, training resumes from it
  (model, optimiser, scheduler, RNG states, sampler position, history). It is
  deliberately *not* a Snakemake output: Snakemake deletes the outputs of an
  incomplete job before rerunning it. It is removed once the run has finished and
  ``final.pt`` (the same content) is written.

Multi-GPU: run under ``torchrun`` (:func:`launch` starts it when ``gpus > 1``); the
global batch is split evenly over the ranks.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from lesioncl.progress import format_duration, progress

from lesioncl.pretrain.augment import ViewAugment, denormalize
from lesioncl.pretrain.builder import ContrastiveModel
from lesioncl.pretrain.cache import open_crop_cache
from lesioncl.pretrain.data import (
    TRAIN_STREAM,
    VAL_STREAM,
    EpochSampler,
    LesionPairDataset,
    WholeImageDataset,
    view_strength,
)
from lesioncl.pretrain.loss import SupConLoss
from lesioncl.utils import atomic_path, resolve_device, seed_everything, setup_logging

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "pairs_per_s", "embedding_std", "knn_kappa",
                   "elapsed_s"]
#: An epoch whose embeddings spread less than this fraction of 1/sqrt(proj_dim) (the std
#: of uniformly spread unit vectors) counts as collapsed ...
COLLAPSE_FRACTION = 0.05
#: ... and this many collapsed epochs in a row stop the run (a collapsed network has
#: zero contrastive gradient and does not come back).
COLLAPSE_PATIENCE = 3
MODES = ("lesion", "whole")
OPTIMIZERS = ("sgd", "adamw")
# Settings that change how a run executes but not what it computes: not in the fingerprint.
_OPERATIONAL = {
    "train_cache", "val_cache", "lesion_index", "out_dir", "checkpoint", "workers",
    "checkpoint_every", "compile", "resume", "log_images", "probe_size", "probe_k", "probe_max_train",
}


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs (the rule's params, plus paths)."""

    mode: str  # "lesion" (the paper) or "whole" (SimCLR on whole images)
    train_cache: str  # results/cache/crops_train.npy
    out_dir: str  # results/pretrain/{method}: backbone.pth, final.pt, history.csv, loss_curve.png, tb/
    val_cache: str | None = None  # results/cache/crops_val.npy (None: no validation)
    lesion_index: str | None = None  # results/lesions/lesion_index.pkl (mode "lesion")
    checkpoint: str | None = None  # resume checkpoint; default {out_dir}/checkpoints/last.pt
    arch: str = "resnet50"
    init: str = "imagenet"
    weights: str | None = None
    view_size: int = 128  # lesion window side (patch_size) or whole-image size
    epochs: int = 1000
    batch_size: int = 768  # global, all ranks together
    lr: float = 0.02
    optimizer: str = "sgd"  # sgd (the paper) | adamw
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    # View warm-up: the two training views of a sample start identical (one window, not
    # augmented) and grow apart linearly to the paper's views over these epochs (0: none).
    view_warmup_epochs: int = 0
    temperature: float = 0.07
    proj_hidden: int = 2048
    proj_dim: int = 128
    val_every: int = 10
    checkpoint_every: int = 50
    workers: int = 8  # DataLoader workers per rank
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm across GPUs (CUDA DDP only)
    device: str = "auto"
    seed: int = 0
    resume: bool = True
    log_images: bool = True
    # kNN probe on the val grades at every validated epoch (:mod:`.probe`); 0: off.
    probe_size: int = 0  # input side (the evaluation's input_size)
    probe_k: int = 20
    probe_max_train: int = 5000  # training crops in the probe's memory bank at most

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.mode not in MODES:
            raise ValueError(f"unknown pretraining mode {self.mode!r}; choose one of {MODES}")
        if self.view_warmup_epochs < 0:
            raise ValueError(f"view_warmup_epochs must be >= 0, got {self.view_warmup_epochs}")
        if self.mode == "lesion" and not self.lesion_index:
            raise ValueError("lesion-based pretraining needs `lesion_index` (the lesion index pickle)")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else Path(self.out_dir) / "checkpoints" / "last.pt"

    def outputs(self) -> dict[str, Path]:
        out = Path(self.out_dir)
        return {
            "backbone": out / "backbone.pth",
            "final": out / "final.pt",
            "history": out / "history.csv",
            "curve": out / "loss_curve.png",
            "tb": out / "tb",
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown pretraining settings {unknown}")
        return cls(**values)


# --------------------------------------------------------------------------- helpers
@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun (or a test) set up; otherwise a single process."""
    device = resolve_device(device_name)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world, local = 0, 1, 0
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    return DistInfo(rank, world, local, dev, owns)


class WarmupCosine:
    """lr factor per optimiser step: linear warm-up from ~0, then cosine to 0 at ``total``."""

    def __init__(self, total_steps: int, warmup_steps: int = 0):
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def step_seed(seed: int, stream: int, epoch: int, step: int) -> int:
    """Seed of the augmentation generator of one (global) batch."""
    return int(np.random.SeedSequence([seed % 2**63, stream, epoch, step]).generate_state(1, np.uint64)[0] >> 1)


def capture_rng_state() -> dict[str, Any]:
    """Python/NumPy/torch RNG states as tensors and plain types (``weights_only`` loadable)."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(model: nn.Module, cfg: "PretrainConfig") -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW (``momentum`` is its beta1).

    Weight decay applies to the weights of convolutions and linear layers only under
    AdamW (decaying BatchNorm scales and biases hurts small-batch training); SGD decays
    every parameter, as the paper's recipe does.
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.momentum, 0.999))


class TrainingInterrupted(RuntimeError):
    """The job was asked to stop (SIGTERM/SIGUSR1); a resume checkpoint was written."""


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Builds data, model and optimiser from a :class:`PretrainConfig`; :meth:`fit` trains.

    ``callbacks`` are called as ``callback(trainer, epoch)`` after each epoch (after its
    checkpoint); an exception raised there stops training as a crash would.
    """

    def __init__(self, cfg: PretrainConfig, callbacks: Sequence[Callable[["Trainer", int], None]] = ()):
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        self.cuda = self.device.type == "cuda"
        seed_everything(cfg.seed)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast

        self.train_set, self.val_set = self.build_datasets()
        self.global_batch, self.local_batch = self.batch_sizes(len(self.train_set), cfg.batch_size)
        self.train_sampler = EpochSampler(len(self.train_set), True, cfg.seed, self.dist.rank, self.dist.world)
        self.train_loader = self.build_loader(self.train_set, self.train_sampler, self.local_batch)
        self.steps_per_epoch = len(self.train_sampler) // self.local_batch
        self.val_loader = None
        if self.val_set is not None:
            val_local = min(self.local_batch, len(self.val_set) // self.dist.world)
            if val_local < 2:
                log.warning("validation set too small (%d samples) for a contrastive loss; skipped", len(self.val_set))
            else:
                self.val_sampler = EpochSampler(len(self.val_set), False, cfg.seed, self.dist.rank, self.dist.world)
                self.val_loader = self.build_loader(self.val_set, self.val_sampler, val_local)

        self.module = self.build_model()
        self.model = self.wrap_model(self.module)
        self.criterion = SupConLoss(cfg.temperature)
        self.augment = ViewAugment(cfg.view_size)
        self.optimizer = build_optimizer(self.module, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(cfg.epochs * self.steps_per_epoch, cfg.warmup_epochs * self.steps_per_epoch)
        )
        self.autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16) if (cfg.amp and self.cuda) else nullcontext()
        )
        self.fingerprint = self.compute_fingerprint()
        self.epoch, self.step = 0, 0  # next step to run
        self.partial = new_partial()  # of the current epoch
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        self.resumed = cfg.resume and self.load_checkpoint(cfg.checkpoint_path)
        self.writer = self.open_writer()
        self.probe = None
        if cfg.probe_size and self.dist.is_main and cfg.val_cache:
            from lesioncl.pretrain.probe import KNNProbe

            self.probe = KNNProbe(cfg.train_cache, cfg.val_cache, cfg.probe_size, cfg.probe_k,
                                  max_train=cfg.probe_max_train)

    # ---- construction --------------------------------------------------------------
    def build_datasets(self):
        cfg = self.cfg
        if cfg.mode == "lesion":
            from lesioncl.lesion_index import load_lesion_index

            size = open_crop_cache(cfg.train_cache)[0].shape[1]
            index = load_lesion_index(cfg.lesion_index, required_splits=("train",), size=size)
            train = LesionPairDataset(cfg.train_cache, index["train"], cfg.view_size, cfg.seed, TRAIN_STREAM,
                                      index_file=f"{cfg.lesion_index} [train]",
                                      view_warmup_epochs=cfg.view_warmup_epochs)
            val = None
            if cfg.val_cache and index.get("val"):
                val = LesionPairDataset(cfg.val_cache, index["val"], cfg.view_size, cfg.seed, VAL_STREAM,
                                        index_file=f"{cfg.lesion_index} [val]")
            elif cfg.val_cache:
                log.warning("%s has no val images: no validation loss", cfg.lesion_index)
        else:
            train = WholeImageDataset(cfg.train_cache, cfg.seed, TRAIN_STREAM, size=cfg.view_size)
            val = WholeImageDataset(cfg.val_cache, cfg.seed, VAL_STREAM, size=cfg.view_size) if cfg.val_cache else None
        log.info("%s pretraining: %d train / %s val samples", cfg.mode, len(train), len(val) if val else 0)
        return train, val

    def batch_sizes(self, n_train: int, requested: int) -> tuple[int, int]:
        world = self.dist.world
        if requested % world:
            raise ValueError(f"pretrain batch size {requested} is not divisible by the {world} GPUs; change one of them")
        batch = requested
        if batch > n_train:
            batch = (n_train // world) * world
            log.warning("batch size %d > %d training samples: using %d", requested, n_train, batch)
        if batch // world < 1 or batch < 2:
            raise ValueError(f"{n_train} training samples are too few for contrastive training on {world} GPUs")
        return batch, batch // world

    def build_loader(self, dataset, sampler: EpochSampler, batch: int) -> DataLoader:
        workers = self.cfg.workers
        return DataLoader(
            dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
            pin_memory=self.cuda, persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None,
        )

    def build_model(self) -> ContrastiveModel:
        cfg = self.cfg
        model = ContrastiveModel(cfg.arch, cfg.init, cfg.weights, cfg.proj_hidden, cfg.proj_dim)
        if cfg.sync_bn and self.dist.world > 1:
            if self.cuda:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.warning("sync_bn needs CUDA; BatchNorm statistics stay per process")
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def wrap_model(self, module: nn.Module) -> nn.Module:
        model: nn.Module = module
        if self.dist.world > 1:
            model = DistributedDataParallel(module, device_ids=[self.dist.local_rank] if self.cuda else None)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def compute_fingerprint(self) -> str:
        """Hash of what determines the result: hyper-parameters, world size, the data."""
        settings = {k: v for k, v in self.cfg.to_dict().items() if k not in _OPERATIONAL}
        settings["world"] = self.dist.world
        settings["global_batch"] = self.global_batch
        data = []
        for path in (self.cfg.train_cache, self.cfg.val_cache, self.cfg.lesion_index):
            if path and Path(path).is_file():
                st = Path(path).stat()
                data.append([Path(path).name, st.st_size, int(st.st_mtime)])
        settings["data"] = data
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def open_writer(self):
        if not self.dist.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        purge = self.epoch * self.steps_per_epoch + self.step if self.resumed else None
        writer = SummaryWriter(log_dir=str(self.cfg.outputs()["tb"]), purge_step=purge)
        # the run's hyper-parameters, for TensorBoard's HPARAMS view (runs side by side)
        from lesioncl.hparams import PRETRAIN_METRICS, pretrain_hparams, write_hparams

        write_hparams(writer, pretrain_hparams(self.cfg, global_batch=self.global_batch,
                                               world_size=self.dist.world), PRETRAIN_METRICS)
        return writer

    # ---- training ------------------------------------------------------------------
    def fit(self) -> list[dict[str, float]]:
        """Train from the current position to ``epochs``; write the outputs. Returns the history."""
        cfg = self.cfg
        log.info(
            "training %s %s on %s x%d: %d epochs x %d steps, global batch %d (%d per rank), %d-px views",
            cfg.mode, cfg.arch, self.device, self.dist.world, cfg.epochs, self.steps_per_epoch,
            self.global_batch, self.local_batch, cfg.view_size,
        )
        previous = self._install_signal_handlers()
        self.fit_start, self.fit_start_epoch = time.perf_counter(), self.epoch
        elapsed_before = float(self.history[-1].get("elapsed_s", math.nan)) if self.history else 0.0
        if not math.isfinite(elapsed_before):
            elapsed_before = 0.0
        try:
            while self.epoch < cfg.epochs:
                epoch = self.epoch
                train_loss, spread, pairs_per_s, lr = self.train_epoch(epoch)
                val_loss, knn = float("nan"), float("nan")
                if self.is_val_epoch(epoch):
                    val_loss = self.validate(epoch)
                    knn = self.run_probe()
                row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                       "pairs_per_s": pairs_per_s, "embedding_std": spread, "knn_kappa": knn,
                       "elapsed_s": elapsed_before + time.perf_counter() - self.fit_start}
                self.history.append(row)
                self.epoch, self.step = epoch + 1, 0
                self.partial = new_partial()
                self.log_epoch(row)
                self.check_collapse(row)
                if (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs:
                    self.save_checkpoint(cfg.checkpoint_path)
                for callback in self.callbacks:
                    callback(self, epoch)
            self.export()
        finally:
            self._restore_signal_handlers(previous)
            if self.writer is not None:
                self.writer.close()
        return self.history

    def train_epoch(self, epoch: int) -> tuple[float, float, float, float]:
        """One epoch (from ``self.step`` when resuming mid-epoch): mean loss, mean
        embedding std (:func:`embedding_spread`), pairs/s, lr."""
        self.model.train()
        start = self.step
        self.train_sampler.set_epoch(epoch, skip=start * self.local_batch)
        lr = self.optimizer.param_groups[0]["lr"]
        self._sync()
        tic = time.perf_counter()
        bar = progress(
            self.train_loader, total=self.steps_per_epoch, initial=start, disable=not self.dist.is_main,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="step", leave=False, mininterval=2.0,
        )
        for step, batch in enumerate(bar, start=start):
            self.step = step
            global_step = epoch * self.steps_per_epoch + step
            lr = self.optimizer.param_groups[0]["lr"]
            views = self.make_views(batch, epoch, step, TRAIN_STREAM)
            if self.writer is not None and self.cfg.view_warmup_epochs:
                self.writer.add_scalar("train/view_strength", view_strength(epoch, self.cfg.view_warmup_epochs),
                                       global_step)
            if step == start and self.cfg.log_images and (epoch == 0 or self.is_val_epoch(epoch)):
                self.log_views(batch, views, global_step)
            loss_value, spread, stop = self.train_step(views, f"epoch {epoch + 1}, step {step + 1}")
            self.partial["loss_sum"] += loss_value
            self.partial["spread_sum"] += spread
            self.partial["steps"] += 1
            self.step = step + 1
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss_value, global_step)
                self.writer.add_scalar("train/lr", lr, global_step)
                self.writer.add_scalar("train/embedding_std", spread, global_step)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if stop:
                self._sync()
                self.partial["seconds"] += time.perf_counter() - tic
                self.save_checkpoint(self.cfg.checkpoint_path)
                raise TrainingInterrupted(
                    f"stop requested at epoch {epoch + 1}, step {step + 1}; resume checkpoint written to "
                    f"{self.cfg.checkpoint_path} (rerun the same job to continue)"
                )
        bar.close()
        self._sync()
        self.partial["seconds"] += time.perf_counter() - tic
        steps = max(1, self.partial["steps"])
        pairs_per_s = self.partial["steps"] * self.global_batch / max(self.partial["seconds"], 1e-9)
        return self.partial["loss_sum"] / steps, self.partial["spread_sum"] / steps, pairs_per_s, lr

    def train_step(self, views: torch.Tensor, where: str = "") -> tuple[float, float, bool]:
        """One optimiser step on augmented views (n, 2, 3, s, s) already on the device (from
        :meth:`make_views`): the loss and embedding spread averaged over ranks, and whether a
        rank was asked to stop. ``where`` (e.g. 'epoch 3, step 7') names the step in errors."""
        with self.autocast:
            z = self.model(views.flatten(0, 1))  # (2n, D)
        loss = self.contrastive_loss(z)
        loss_value, spread, stop = self.reduce_step(loss.detach(), embedding_spread(z.detach()))
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"non-finite contrastive loss ({loss_value}) at {where or 'this step'}: "
                "training stopped. Lower pretrain.lr, add warmup_epochs, or set amp: false."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss_value, spread, stop

    @torch.no_grad()
    def validate(self, epoch: int) -> float:
        """Mean contrastive loss over the val set with fixed views (BatchNorm in eval mode)."""
        if self.val_loader is None:
            return float("nan")
        self.model.eval()
        self.val_sampler.set_epoch(0)  # the same windows and views at every validation
        total, count = 0.0, 0
        for step, batch in enumerate(
            progress(self.val_loader, disable=not self.dist.is_main, desc="validation", leave=False, mininterval=2.0)
        ):
            views = self.make_views(batch, 0, step, VAL_STREAM)
            with self.autocast:
                z = self.model(views.flatten(0, 1))
            value, _, _ = self.reduce_step(self.contrastive_loss(z))
            total += value
            count += 1
        self.model.train()
        return total / max(1, count)

    def run_probe(self) -> float:
        """kNN kappa of the current backbone on the val grades (nan without a probe)."""
        if self.probe is None:
            return float("nan")
        result = self.probe(self.module.backbone, self.device, self.cfg.amp, self.cfg.channels_last)
        return result["knn_kappa"]

    def make_views(self, batch: torch.Tensor, epoch: int, step: int, stream: int) -> torch.Tensor:
        """uint8 (n, V, H, W, 3) -> augmented float (n, 2, 3, s, s) on the device, channels_last.

        Training views follow the view warm-up (:func:`.data.view_strength`): from random
        weights the paper's views share too little for the loss to leave chance for
        hundreds of steps, while views that start identical and grow apart are learned
        from the first step (docs/demo-experiments.md). Validation views are always the
        paper's, so validation losses stay comparable.
        """
        n = batch.shape[0]
        batch = batch.to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(step_seed(self.cfg.seed, stream, epoch, step))
        # this rank's samples sit at global positions rank, rank + W, ... (EpochSampler)
        positions = torch.arange(n) * self.dist.world + self.dist.rank
        strength = view_strength(epoch, self.cfg.view_warmup_epochs) if stream == TRAIN_STREAM else 1.0
        views = self.augment(batch, generator, positions, total=n * self.dist.world, strength=strength)
        if self.cfg.channels_last:
            flat = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            views = flat.unflatten(0, (n, 2))
        return views

    def contrastive_loss(self, z: torch.Tensor) -> torch.Tensor:
        """NT-Xent of this rank's samples against the global batch. z: (2n, D), sample-major."""
        return self.criterion.global_loss(z.view(z.shape[0] // 2, 2, -1))

    def reduce_step(self, loss: torch.Tensor, spread: torch.Tensor | None = None) -> tuple[float, float, bool]:
        """Mean loss and embedding spread over ranks, and whether any rank was asked to stop
        (one sync per step)."""
        spread = torch.zeros((), device=loss.device) if spread is None else spread
        stop = torch.tensor(float(self.stop_requested), device=loss.device)
        packed = torch.stack([loss.float().detach(), spread.float().to(loss.device), stop])
        if self.dist.world > 1:
            dist.all_reduce(packed)
            packed[:2] /= self.dist.world
        loss_value, spread_value, stop_value = packed.tolist()
        return loss_value, spread_value, stop_value > 0

    def check_collapse(self, row: dict[str, float]) -> None:
        """Stop when the embeddings have collapsed for :data:`COLLAPSE_PATIENCE` epochs.

        Collapse (every view mapped to nearly the same point) shows as a loss stuck at
        ln(2N - 1) and an embedding std near 0; it typically follows a too large first
        step from a random initialisation, and training cannot leave it.
        """
        floor = COLLAPSE_FRACTION / math.sqrt(self.cfg.proj_dim)
        recent = [r.get("embedding_std", math.nan) for r in self.history[-COLLAPSE_PATIENCE:]]
        if row["embedding_std"] < floor:
            log.warning(
                "epoch %d: embedding std %.2g is below %.2g: the embeddings are collapsing",
                row["epoch"], row["embedding_std"], floor,
            )
        if len(recent) == COLLAPSE_PATIENCE and all(v < floor for v in recent):
            raise FloatingPointError(
                f"contrastive training collapsed: the embedding std stayed below {floor:.2g} for "
                f"{COLLAPSE_PATIENCE} epochs (epoch {row['epoch']}: {row['embedding_std']:.2g}; loss "
                f"{row['train_loss']:.4f}, chance ln(2N-1) = {math.log(2 * self.global_batch - 1):.4f}). "
                "Lower pretrain.lr or raise pretrain.warmup_epochs and rerun."
            )

    def is_val_epoch(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    # ---- logging -------------------------------------------------------------------
    def log_epoch(self, row: dict[str, float]) -> None:
        msg = "epoch %d/%d: train loss %.4f, val loss %s, kNN kappa %s, lr %.3g, %.0f pairs/s, elapsed %s, ETA %s"
        val = "-" if math.isnan(row["val_loss"]) else f"{row['val_loss']:.4f}"
        knn = "-" if math.isnan(row.get("knn_kappa", math.nan)) else f"{row['knn_kappa']:.3f}"
        done_here = row["epoch"] - self.fit_start_epoch
        per_epoch = (time.perf_counter() - self.fit_start) / max(1, done_here)
        eta = per_epoch * (self.cfg.epochs - row["epoch"])
        log.info(msg, row["epoch"], self.cfg.epochs, row["train_loss"], val, knn, row["lr"], row["pairs_per_s"],
                 format_duration(row["elapsed_s"]), format_duration(eta))
        if self.writer is not None:
            step = row["epoch"] * self.steps_per_epoch
            self.writer.add_scalar("epoch/train_loss", row["train_loss"], step)
            if not math.isnan(row["val_loss"]):
                self.writer.add_scalar("epoch/val_loss", row["val_loss"], step)
            if not math.isnan(row.get("knn_kappa", math.nan)):
                self.writer.add_scalar("epoch/knn_kappa", row["knn_kappa"], step)
            self.writer.add_scalar("epoch/pairs_per_s", row["pairs_per_s"], step)
            self.writer.flush()
        if self.dist.is_main:
            write_history(self.cfg.outputs()["history"], self.history)

    def log_views(self, batch: torch.Tensor, views: torch.Tensor, step: int, pairs: int = 8) -> None:
        """TensorBoard grids of the first view pairs: the augmented views and the raw input."""
        if self.writer is None:
            return
        from torchvision.utils import make_grid

        k = min(pairs, views.shape[0])
        shown = denormalize(views[:k].flatten(0, 1).float().contiguous()).cpu()
        self.writer.add_image("views/augmented_pairs", make_grid(shown, nrow=4, padding=2), step)
        raw = batch[:k].flatten(0, 1).permute(0, 3, 1, 2).float().div(255).cpu()
        self.writer.add_image("views/input", make_grid(raw, nrow=4 if batch.shape[1] == 2 else 2, padding=2), step)

    # ---- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state: plain tensors and Python types only."""
        rng = capture_rng_state()
        if self.dist.world > 1:
            states: list[Any] = [None] * self.dist.world
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "partial": dict(self.partial),
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no gradient scaler
            "rng": states,
            "sampler": {"epoch": self.epoch, "seed": self.cfg.seed, "skip": self.step * self.local_batch},
            "history": [dict(r) for r in self.history],
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        state = self.state_dict()  # collective under DDP: every rank takes part
        if self.dist.is_main:
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
            if self.step:
                log.info("checkpoint: %s (epoch %d, %d of %d steps done)", path, self.epoch + 1, self.step,
                         self.steps_per_epoch)
            else:
                log.info("checkpoint: %s (after epoch %d)", path, self.epoch)
        if self.dist.world > 1:
            dist.barrier()

    def load_checkpoint(self, path: str | os.PathLike) -> bool:
        """Resume from ``path`` if it exists and belongs to this run; returns whether it did."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file must not block a fresh start
            log.warning("ignoring unreadable resume checkpoint %s (%s); starting from scratch", path, err)
            return False
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self.fingerprint:
            log.warning(
                "resume checkpoint %s was written for other settings or data (fingerprint %s, now %s); "
                "starting from scratch", path, state.get("fingerprint"), self.fingerprint,
            )
            return False
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.partial = {**new_partial(), **state["partial"]}  # older checkpoints lack spread_sum
        self.history = [dict(r) for r in state["history"]]
        rng = state["rng"]
        if len(rng) == self.dist.world:
            restore_rng_state(rng[self.dist.rank])
        log.info("resumed from %s: %d epochs and %d of %d steps of epoch %d done", path, self.epoch, self.step,
                 self.steps_per_epoch, self.epoch + 1)
        return True

    # ---- outputs -------------------------------------------------------------------
    def export(self) -> None:
        """backbone.pth, final.pt, history.csv and the loss curve; then drop the resume checkpoint."""
        state = self.state_dict()
        if self.dist.is_main:
            out = self.cfg.outputs()
            with atomic_path(out["backbone"]) as tmp:
                torch.save(self.module.backbone_state_dict(), tmp)
            with atomic_path(out["final"]) as tmp:
                torch.save(state, tmp)
            write_history(out["history"], self.history)
            kind = "lesion-based CL" if self.cfg.mode == "lesion" else "SimCLR on whole images"
            plot_history(
                self.history, out["curve"],
                title=f"{kind}: {self.cfg.arch}, {self.cfg.view_size}-px views, batch {self.global_batch}",
                chance=math.log(2 * self.global_batch - 1),
            )
            self.cfg.checkpoint_path.unlink(missing_ok=True)
            log.info("wrote %s and %s", out["backbone"], out["final"])
        if self.dist.world > 1:
            dist.barrier()

    # ---- signals -------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):  # noqa: ARG001
            log.warning("received signal %d: stopping after this step and writing a resume checkpoint", signum)
            self.stop_requested = True

        previous = {}
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, request_stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def new_partial() -> dict[str, float]:
    """Running sums of the epoch in progress (saved in checkpoints for mid-epoch resume)."""
    return {"loss_sum": 0.0, "spread_sum": 0.0, "steps": 0, "seconds": 0.0}


# --------------------------------------------------------------------------- files
def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of unit embeddings ``z`` (M, D): about
    1/sqrt(D) when they spread over the sphere, 0 when they collapse to one point."""
    return z.float().std(dim=0).mean()


def write_history(path: str | os.PathLike, history: Iterable[dict[str, float]]) -> None:
    """history.csv: epoch, train_loss, val_loss (empty when not validated), lr, pairs_per_s,
    embedding_std (empty in rows written before it was recorded)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            for row in history:
                values = {k: row.get(k, math.nan) for k in HISTORY_COLUMNS}
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                                 for k, v in values.items()})


def plot_history(
    history: Sequence[dict[str, float]], path: str | os.PathLike, title: str = "", chance: float | None = None
) -> None:
    """Train and validation loss per epoch as a PNG; ``chance``: the loss of uninformative
    embeddings, log(2B - 1) for B pairs, drawn as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, [r["train_loss"] for r in history], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if not math.isnan(r["val_loss"])]
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance: log(2B - 1)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("contrastive loss (NT-Xent)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    knn = [(r["epoch"], r["knn_kappa"]) for r in history if math.isfinite(r.get("knn_kappa", math.nan))]
    if knn:  # the kNN probe's val kappa on a second axis
        ax2 = ax.twinx()
        (line,) = ax2.plot(*zip(*knn), "s-", color="C3", label="kNN probe: val kappa")
        ax2.set_ylabel("kNN probe: validation kappa", color="C3")
        ax2.set_ylim(min(0.0, min(k for _, k in knn)) - 0.05, 1.0)
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- entry points
def run_pretraining(cfg: PretrainConfig, callbacks: Sequence[Callable[[Trainer, int], None]] = ()) -> list[dict]:
    """Train (resuming when possible) and write the outputs; tears down a group it created."""
    trainer = Trainer(cfg, callbacks)
    try:
        return trainer.fit()
    finally:
        if trainer.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def launch(cfg: PretrainConfig, gpus: int = 1, log_file: str | os.PathLike | None = None) -> None:
    """Run in this process (``gpus <= 1``) or under ``torchrun --nproc_per_node=gpus``.

    The torchrun workers run :func:`main` with the configuration written beside the
    outputs; rank 0 appends to ``log_file``. torchrun's ``--standalone`` rendezvous
    needs no free-port setup (single node).
    """
    if gpus <= 1:
        run_pretraining(cfg)
        return
    config_path = Path(cfg.out_dir) / "launch_config.json"
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "lesioncl.pretrain.train", "--config", str(config_path)]
    if log_file:
        cmd += ["--logfile", str(log_file)]
    log.info("launching %d DDP workers: %s", gpus, " ".join(cmd))
    for handler in logging.getLogger().handlers:
        handler.flush()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise RuntimeError(f"torchrun pretraining failed with exit code {result.returncode}; see {log_file}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lesioncl.pretrain.train --config run.json [--logfile file]`` (a torchrun worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON of PretrainConfig fields")
    parser.add_argument("--logfile", help="text log (rank 0 appends to it)")
    args = parser.parse_args(argv)
    setup_logging(None)
    if args.logfile and int(os.environ.get("RANK", "0")) == 0:
        handler = logging.FileHandler(args.logfile, mode="a")
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().addHandler(handler)
    cfg = PretrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    run_pretraining(cfg)


if __name__ == "__main__":
    main()
