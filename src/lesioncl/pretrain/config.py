"""The settings of one pretraining run (:class:`PretrainConfig`) and the trainer's constants."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_FORMAT = 1
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "lr",
    "pairs_per_s",
    "embedding_std",
    "knn_kappa",
    "elapsed_s",
]
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
    "train_cache",
    "val_cache",
    "lesion_index",
    "out_dir",
    "checkpoint",
    "workers",
    "checkpoint_every",
    "compile",
    "resume",
    "log_images",
    "probe_size",
    "probe_k",
    "probe_max_train",
}


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs (the rule's params, plus paths)."""

    mode: str  # "lesion" (the paper) or "whole" (SimCLR on whole images)
    train_cache: str  # results/cache/crops_train.npy
    out_dir: (
        str  # results/pretrain/{method}: backbone.pth, final.pt, history.csv, loss_curve.png, tb/
    )
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
    # Lesion boxes grown by this many pixels on each side before the two windows are drawn:
    # the lesion stays that far from the windows' borders (0: the paper's windows).
    box_margin: float = 0.0
    # Samples (images drawn) per epoch; None: one per indexed image (the paper). A fixed
    # number gives window sources of different sizes the same number of steps.
    samples_per_epoch: int | None = None
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
        if self.samples_per_epoch is not None and self.samples_per_epoch < 2:
            raise ValueError(
                f"samples_per_epoch must be >= 2 or None, got {self.samples_per_epoch}"
            )
        if self.box_margin < 0:
            raise ValueError(f"box_margin must be >= 0, got {self.box_margin}")
        if self.view_warmup_epochs < 0:
            raise ValueError(f"view_warmup_epochs must be >= 0, got {self.view_warmup_epochs}")
        if self.mode == "lesion" and not self.lesion_index:
            raise ValueError(
                "lesion-based pretraining needs `lesion_index` (the lesion index pickle)"
            )

    @property
    def checkpoint_path(self) -> Path:
        return (
            Path(self.checkpoint)
            if self.checkpoint
            else Path(self.out_dir) / "checkpoints" / "last.pt"
        )

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

    def computed_settings(self) -> dict[str, Any]:
        """The settings that decide what the run computes (all but the operational ones):
        its checkpoint fingerprint and its TensorBoard hyper-parameters."""
        return {k: v for k, v in self.to_dict().items() if k not in _OPERATIONAL}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown pretraining settings {unknown}")
        return cls(**values)
