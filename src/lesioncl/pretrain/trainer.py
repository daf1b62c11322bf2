"""The pretraining engine: data, model, optimiser, the training and validation loops."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lesioncl.crop.cache import open_crop_cache
from lesioncl.pretrain.augment import ViewAugment
from lesioncl.pretrain.builder import ContrastiveModel
from lesioncl.pretrain.config import PretrainConfig
from lesioncl.pretrain.data import (
    TRAIN_STREAM,
    VAL_STREAM,
    EpochSampler,
    LesionPairDataset,
    WholeImageDataset,
    view_strength,
)
from lesioncl.pretrain.distributed import setup_distributed
from lesioncl.pretrain.loss import SupConLoss
from lesioncl.pretrain.records import TrainerRecords, embedding_spread, new_partial
from lesioncl.pretrain.schedule import WarmupCosine, build_optimizer, step_seed
from lesioncl.progress import progress
from lesioncl.utils import seed_everything

log = logging.getLogger("lesioncl.pretrain.train")


class TrainingInterrupted(RuntimeError):
    """The job was asked to stop (SIGTERM/SIGUSR1); a resume checkpoint was written."""


# --------------------------------------------------------------------------- trainer
class Trainer(TrainerRecords):
    """Builds data, model and optimiser from a :class:`PretrainConfig`; :meth:`fit` trains.

    ``callbacks`` are called as ``callback(trainer, epoch)`` after each epoch (after its
    checkpoint); an exception raised there stops training as a crash would.
    """

    def __init__(
        self, cfg: PretrainConfig, callbacks: Sequence[Callable[["Trainer", int], None]] = ()
    ):
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
        n_samples = cfg.samples_per_epoch or len(self.train_set)
        self.global_batch, self.local_batch = self.batch_sizes(n_samples, cfg.batch_size)
        self.train_sampler = EpochSampler(
            len(self.train_set),
            True,
            cfg.seed,
            self.dist.rank,
            self.dist.world,
            samples=cfg.samples_per_epoch,
        )
        self.train_loader = self.build_loader(self.train_set, self.train_sampler, self.local_batch)
        self.steps_per_epoch = len(self.train_sampler) // self.local_batch
        self.val_loader = None
        if self.val_set is not None:
            val_local = min(self.local_batch, len(self.val_set) // self.dist.world)
            if val_local < 2:
                log.warning(
                    "validation set too small (%d samples) for a contrastive loss; skipped",
                    len(self.val_set),
                )
            else:
                self.val_sampler = EpochSampler(
                    len(self.val_set), False, cfg.seed, self.dist.rank, self.dist.world
                )
                self.val_loader = self.build_loader(self.val_set, self.val_sampler, val_local)

        self.module = self.build_model()
        self.model = self.wrap_model(self.module)
        self.criterion = SupConLoss(cfg.temperature)
        self.augment = ViewAugment(cfg.view_size)
        self.optimizer = build_optimizer(self.module, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            WarmupCosine(
                cfg.epochs * self.steps_per_epoch, cfg.warmup_epochs * self.steps_per_epoch
            ),
        )
        self.autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if (cfg.amp and self.cuda)
            else nullcontext()
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

            self.probe = KNNProbe(
                cfg.train_cache,
                cfg.val_cache,
                cfg.probe_size,
                cfg.probe_k,
                max_train=cfg.probe_max_train,
            )

    # ---- construction --------------------------------------------------------------
    def build_datasets(self):
        cfg = self.cfg
        if cfg.mode == "lesion":
            from lesioncl.lesions import load_lesion_index

            size = open_crop_cache(cfg.train_cache)[0].shape[1]
            index = load_lesion_index(cfg.lesion_index, required_splits=("train",), size=size)
            train = LesionPairDataset(
                cfg.train_cache,
                index["train"],
                cfg.view_size,
                cfg.seed,
                TRAIN_STREAM,
                index_file=f"{cfg.lesion_index} [train]",
                view_warmup_epochs=cfg.view_warmup_epochs,
                box_margin=cfg.box_margin,
            )
            val = None
            if cfg.val_cache and index.get("val"):
                val = LesionPairDataset(
                    cfg.val_cache,
                    index["val"],
                    cfg.view_size,
                    cfg.seed,
                    VAL_STREAM,
                    index_file=f"{cfg.lesion_index} [val]",
                    box_margin=cfg.box_margin,
                )
            elif cfg.val_cache:
                log.warning("%s has no val images: no validation loss", cfg.lesion_index)
        else:
            train = WholeImageDataset(cfg.train_cache, cfg.seed, TRAIN_STREAM, size=cfg.view_size)
            val = (
                WholeImageDataset(cfg.val_cache, cfg.seed, VAL_STREAM, size=cfg.view_size)
                if cfg.val_cache
                else None
            )
        log.info(
            "%s pretraining: %d train / %s val samples",
            cfg.mode,
            len(train),
            len(val) if val else 0,
        )
        return train, val

    def batch_sizes(self, n_train: int, requested: int) -> tuple[int, int]:
        world = self.dist.world
        if requested % world:
            raise ValueError(
                f"pretrain batch size {requested} is not divisible by the {world} GPUs; change one "
                "of them"
            )
        batch = requested
        if batch > n_train:
            batch = (n_train // world) * world
            log.warning("batch size %d > %d training samples: using %d", requested, n_train, batch)
        if batch // world < 1 or batch < 2:
            raise ValueError(
                f"{n_train} training samples are too few for contrastive training on {world} GPUs"
            )
        return batch, batch // world

    def build_loader(self, dataset, sampler: EpochSampler, batch: int) -> DataLoader:
        workers = self.cfg.workers
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=self.cuda,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
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
            model = DistributedDataParallel(
                module, device_ids=[self.dist.local_rank] if self.cuda else None
            )
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def fit(self) -> list[dict[str, float]]:
        """Train from the current position to ``epochs``; write the outputs. Returns the history."""
        cfg = self.cfg
        log.info(
            "training %s %s on %s x%d: %d epochs x %d steps, global batch %d (%d per rank), "
            "%d-px views",
            cfg.mode,
            cfg.arch,
            self.device,
            self.dist.world,
            cfg.epochs,
            self.steps_per_epoch,
            self.global_batch,
            self.local_batch,
            cfg.view_size,
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
                row = {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "lr": lr,
                    "pairs_per_s": pairs_per_s,
                    "embedding_std": spread,
                    "knn_kappa": knn,
                    "elapsed_s": elapsed_before + time.perf_counter() - self.fit_start,
                }
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
            self.train_loader,
            total=self.steps_per_epoch,
            initial=start,
            disable=not self.dist.is_main,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            unit="step",
            leave=False,
            mininterval=2.0,
        )
        for step, batch in enumerate(bar, start=start):
            self.step = step
            global_step = epoch * self.steps_per_epoch + step
            lr = self.optimizer.param_groups[0]["lr"]
            views = self.make_views(batch, epoch, step, TRAIN_STREAM)
            if self.writer is not None and self.cfg.view_warmup_epochs:
                strength = view_strength(epoch, self.cfg.view_warmup_epochs)
                self.writer.add_scalar("train/view_strength", strength, global_step)
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
                    f"stop requested at epoch {epoch + 1}, step {step + 1}; resume checkpoint "
                    "written to "
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
            progress(
                self.val_loader,
                disable=not self.dist.is_main,
                desc="validation",
                leave=False,
                mininterval=2.0,
            )
        ):
            views = self.make_views(batch, 0, step, VAL_STREAM)
            with self.autocast:
                z = self.model(views.flatten(0, 1))
            value, _, _ = self.reduce_step(self.contrastive_loss(z))
            total += value
            count += 1
        self.model.train()
        return total / max(1, count)

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
        strength = (
            view_strength(epoch, self.cfg.view_warmup_epochs) if stream == TRAIN_STREAM else 1.0
        )
        views = self.augment(
            batch, generator, positions, total=n * self.dist.world, strength=strength
        )
        if self.cfg.channels_last:
            flat = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            views = flat.unflatten(0, (n, 2))
        return views

    def contrastive_loss(self, z: torch.Tensor) -> torch.Tensor:
        """NT-Xent of this rank's samples against the global batch. z: (2n, D), sample-major."""
        return self.criterion.global_loss(z.view(z.shape[0] // 2, 2, -1))

    def reduce_step(
        self, loss: torch.Tensor, spread: torch.Tensor | None = None
    ) -> tuple[float, float, bool]:
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

    def is_val_epoch(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
