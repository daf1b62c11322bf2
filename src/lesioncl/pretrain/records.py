"""What a pretraining run leaves and watches: its fingerprint, logs, TensorBoard, the kNN
probe, the collapse check, resume checkpoints, the outputs (backbone.pth, final.pt,
history.csv, loss curve), and the stop signals it obeys.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

import lesioncl.checkpoint as checkpoint
from lesioncl.history import write_history as write_history_csv
from lesioncl.plotting import pyplot, save_png
from lesioncl.pretrain.augment import denormalize
from lesioncl.pretrain.config import (
    CHECKPOINT_FORMAT,
    COLLAPSE_FRACTION,
    COLLAPSE_PATIENCE,
    HISTORY_COLUMNS,
)
from lesioncl.progress import format_duration
from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.pretrain.train")


class TrainerRecords:
    """Logs, checkpoints, outputs and signals of :class:`~.trainer.Trainer` (its base)."""

    def compute_fingerprint(self) -> str:
        """Hash of what determines the result: hyper-parameters, world size, the data."""
        settings = self.cfg.computed_settings()
        settings["world"] = self.dist.world
        settings["global_batch"] = self.global_batch
        files = (self.cfg.train_cache, self.cfg.val_cache, self.cfg.lesion_index)
        return checkpoint.fingerprint(settings, files)

    def open_writer(self):
        if not self.dist.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        purge = self.epoch * self.steps_per_epoch + self.step if self.resumed else None
        writer = SummaryWriter(log_dir=str(self.cfg.outputs()["tb"]), purge_step=purge)
        # the run's hyper-parameters, for TensorBoard's HPARAMS view (runs side by side)
        from lesioncl.hparams import PRETRAIN_METRICS, pretrain_hparams, write_hparams

        write_hparams(
            writer,
            pretrain_hparams(self.cfg, global_batch=self.global_batch, world_size=self.dist.world),
            PRETRAIN_METRICS,
        )
        return writer

    # ---- training ------------------------------------------------------------------
    def run_probe(self) -> float:
        """kNN kappa of the current backbone on the val grades (nan without a probe)."""
        if self.probe is None:
            return float("nan")
        result = self.probe(self.module.backbone, self.device, self.cfg.amp, self.cfg.channels_last)
        return result["knn_kappa"]

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
                row["epoch"],
                row["embedding_std"],
                floor,
            )
        if len(recent) == COLLAPSE_PATIENCE and all(v < floor for v in recent):
            raise FloatingPointError(
                f"contrastive training collapsed: the embedding std stayed below {floor:.2g} for "
                f"{COLLAPSE_PATIENCE} epochs (epoch {row['epoch']}: {row['embedding_std']:.2g}; "
                f"loss {row['train_loss']:.4f}, chance ln(2N-1) = "
                f"{math.log(2 * self.global_batch - 1):.4f}). "
                "Lower pretrain.lr or raise pretrain.warmup_epochs and rerun."
            )

    # ---- logging -------------------------------------------------------------------
    def log_epoch(self, row: dict[str, float]) -> None:
        msg = (
            "epoch %d/%d: train loss %.4f, val loss %s, kNN kappa %s, lr %.3g, %.0f pairs/s, "
            "elapsed %s, ETA %s"
        )
        val = "-" if math.isnan(row["val_loss"]) else f"{row['val_loss']:.4f}"
        knn = "-" if math.isnan(row.get("knn_kappa", math.nan)) else f"{row['knn_kappa']:.3f}"
        done_here = row["epoch"] - self.fit_start_epoch
        per_epoch = (time.perf_counter() - self.fit_start) / max(1, done_here)
        eta = per_epoch * (self.cfg.epochs - row["epoch"])
        log.info(
            msg,
            row["epoch"],
            self.cfg.epochs,
            row["train_loss"],
            val,
            knn,
            row["lr"],
            row["pairs_per_s"],
            format_duration(row["elapsed_s"]),
            format_duration(eta),
        )
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

    def log_views(
        self, batch: torch.Tensor, views: torch.Tensor, step: int, pairs: int = 8
    ) -> None:
        """TensorBoard grids of the first view pairs: the augmented views and the raw input."""
        if self.writer is None:
            return
        from torchvision.utils import make_grid

        k = min(pairs, views.shape[0])
        shown = denormalize(views[:k].flatten(0, 1).float().contiguous()).cpu()
        self.writer.add_image("views/augmented_pairs", make_grid(shown, nrow=4, padding=2), step)
        raw = batch[:k].flatten(0, 1).permute(0, 3, 1, 2).float().div(255).cpu()
        self.writer.add_image(
            "views/input", make_grid(raw, nrow=4 if batch.shape[1] == 2 else 2, padding=2), step
        )

    # ---- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state: plain tensors and Python types only."""
        rng = checkpoint.capture_rng_state()
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
            "sampler": {
                "epoch": self.epoch,
                "seed": self.cfg.seed,
                "skip": self.step * self.local_batch,
            },
            "history": [dict(r) for r in self.history],
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        state = self.state_dict()  # collective under DDP: every rank takes part
        if self.dist.is_main:
            checkpoint.save(path, state)
            if self.step:
                log.info(
                    "checkpoint: %s (epoch %d, %d of %d steps done)",
                    path,
                    self.epoch + 1,
                    self.step,
                    self.steps_per_epoch,
                )
            else:
                log.info("checkpoint: %s (after epoch %d)", path, self.epoch)
        if self.dist.world > 1:
            dist.barrier()

    def load_checkpoint(self, path: str | os.PathLike) -> bool:
        """Resume from ``path`` if it exists and belongs to this run; returns whether it did."""
        state = checkpoint.load(path, self.fingerprint, fmt=CHECKPOINT_FORMAT)
        if state is None:
            return False
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.partial = {**new_partial(), **state["partial"]}  # older checkpoints lack spread_sum
        self.history = [dict(r) for r in state["history"]]
        rng = state["rng"]
        if len(rng) == self.dist.world:
            checkpoint.restore_rng_state(rng[self.dist.rank])
        log.info(
            "resumed from %s: %d epochs and %d of %d steps of epoch %d done",
            path,
            self.epoch,
            self.step,
            self.steps_per_epoch,
            self.epoch + 1,
        )
        return True

    # ---- outputs -------------------------------------------------------------------
    def export(self) -> None:
        """backbone.pth, final.pt, history.csv, the loss curve; then drop the resume checkpoint."""
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
                self.history,
                out["curve"],
                title=f"{kind}: {self.cfg.arch}, {self.cfg.view_size}-px views, "
                f"batch {self.global_batch}",
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
            log.warning(
                "received signal %d: stopping after this step and writing a resume checkpoint",
                signum,
            )
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
    write_history_csv(path, history, HISTORY_COLUMNS)


def plot_history(
    history: Sequence[dict[str, float]],
    path: str | os.PathLike,
    title: str = "",
    chance: float | None = None,
) -> None:
    """Train and validation loss per epoch as a PNG; ``chance``: the loss of uninformative
    embeddings, log(2B - 1) for B pairs, drawn as a dashed line."""
    plt = pyplot()
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
    knn = [
        (r["epoch"], r["knn_kappa"]) for r in history if math.isfinite(r.get("knn_kappa", math.nan))
    ]
    if knn:  # the kNN probe's val kappa on a second axis
        ax2 = ax.twinx()
        (line,) = ax2.plot(*zip(*knn), "s-", color="C3", label="kNN probe: val kappa")
        ax2.set_ylabel("kNN probe: validation kappa", color="C3")
        ax2.set_ylim(min(0.0, min(k for _, k in knn)) - 0.05, 1.0)
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
