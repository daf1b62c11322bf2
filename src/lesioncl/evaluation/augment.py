"""The fine-tuning augmentations, batched on the device with per-sample parameters
(:class:`BatchAugment`): flips, brightness and contrast jitter, and one affine warp
(random resized crop, rotation, translation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger("lesioncl.evaluation.finetune")


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
