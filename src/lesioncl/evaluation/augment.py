"""The fine-tuning augmentation: the authors' recipe as a setting of the one batched
augmentation (:class:`lesioncl.augment.Augment`, shared with pretraining): flips,
ColorJitter(brightness 0.2, contrast 0.2), RandomResizedCrop(scale 0.87-1.15, ratio
0.7-1.3), rotation +-180 deg and translation 0.2, one view per image at its own size,
not normalised (the loop normalises after it).
"""

from __future__ import annotations

from dataclasses import dataclass

from lesioncl.augment import Augment


@dataclass(frozen=True)
class AugmentConfig:
    """The authors' fine-tuning augmentations (torchvision's argument names and ranges)."""

    hflip: float = 0.5
    vflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    scale: tuple[float, float] = (0.87, 1.15)
    ratio: tuple[float, float] = (0.7, 1.3)
    degrees: float = 180.0
    translate: float = 0.2


class BatchAugment(Augment):
    """The fine-tuning recipe on float NCHW batches in [0, 1] (output: same shape, in [0, 1]).

    ``__call__(x, generator)`` draws from a CPU ``torch.Generator`` (the same images on
    CPU and GPU).
    """

    def __init__(self, cfg: AugmentConfig = AugmentConfig()):
        self.cfg = cfg
        super().__init__(
            None,  # each batch keeps its size
            jitter=(cfg.brightness, cfg.contrast, 0.0, 0.0),
            scale=cfg.scale,
            ratio=cfg.ratio,
            degrees=cfg.degrees,
            translate=cfg.translate,
            hflip_p=cfg.hflip,
            vflip_p=cfg.vflip,
        )
