"""Learning-rate schedule, optimiser and the seeds of the augmentation streams."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lesioncl.pretrain.config import PretrainConfig


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
    return int(
        np.random.SeedSequence([seed % 2**63, stream, epoch, step]).generate_state(1, np.uint64)[0]
        >> 1
    )


def build_optimizer(model: nn.Module, cfg: "PretrainConfig") -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW (``momentum`` is its beta1).

    Weight decay applies to the weights of convolutions and linear layers only under
    AdamW (decaying BatchNorm scales and biases hurts small-batch training); SGD decays
    every parameter, as the paper's recipe does.
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.momentum, 0.999),
    )
