"""The paper's view augmentation (docs/method.md): two augmented views per sample.

Per view, in order: horizontal flip, vertical flip, ColorJitter(0.4, 0.4, 0.4, 0.1)
(always applied, its four operations in a random order per view, as torchvision),
RandomResizedCrop(out, scale 0.8-1.2, ratio 0.8-1.2), RandomAffine(+-180 deg,
translate 0.2), RandomGrayscale(0.2), normalisation with the EyePACS mean and std.
The operations are :class:`lesioncl.augment.Augment`'s (the one augmentation that
fine-tuning uses too); this module adds the pretraining recipe and the pairing: a
batch of two windows per sample (lesion-based) or of one whole image that both views
are made from (SimCLR baseline).

``strength`` (``sample``/``__call__``, default 1) scales every operation: the flip
and greyscale probabilities, the jitter ranges, the crop's scale and ratio ranges
around 1, the rotation and the translation. At 0 a view is its input, normalised; at
1 it is the paper's, draw for draw (the random numbers drawn do not depend on the
strength). The trainer's view warm-up (``pretrain.view_warmup_epochs``) ramps it.

A whole image arrives already shrunk to the output size
(:class:`.data.WholeImageDataset`, area interpolation) or is resized here with an
anti-aliased resize, then cropped; a lesion window already has the output size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lesioncl.augment import (  # noqa: F401 - re-exported: the pretraining API
    EYEPACS_MEAN,
    EYEPACS_STD,
    Augment,
    AugmentParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    denormalize,
)


class ViewAugment(Augment):
    """Makes two augmented, normalised views per sample from a uint8 batch.

    ``__call__(batch)`` takes ``(B, V, H, W, 3)`` uint8 on any device (V = 2 windows, or
    V = 1 whole image that both views are made from) and returns float
    ``(B, 2, 3, out, out)`` on the same device.
    """

    def __init__(
        self,
        out_size: int,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        scale: tuple[float, float] = (0.8, 1.2),
        ratio: tuple[float, float] = (0.8, 1.2),
        degrees: float = 180.0,
        translate: float = 0.2,
        grayscale_p: float = 0.2,
        flip_p: float = 0.5,
        mean: tuple[float, float, float] = EYEPACS_MEAN,
        std: tuple[float, float, float] = EYEPACS_STD,
    ):
        super().__init__(
            out_size,
            jitter=jitter,
            scale=scale,
            ratio=ratio,
            degrees=degrees,
            translate=translate,
            grayscale_p=grayscale_p,
            hflip_p=flip_p,
            vflip_p=flip_p,
            mean=mean,
            std=std,
        )

    def __call__(
        self,
        batch: torch.Tensor,
        generator: torch.Generator | None = None,
        positions: torch.Tensor | None = None,
        total: int | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Augment a uint8 ``(B, V, H, W, 3)`` batch into float ``(B, 2, 3, out, out)``.

        Parameters are drawn for ``total`` samples (default B) and the rows at
        ``positions`` (default 0..B-1) are used: under DDP every rank draws the
        global batch's parameters and takes its own, so the views do not depend on
        the number of GPUs. ``strength`` shrinks the augmentation (:meth:`scaled`).
        """
        if batch.dtype != torch.uint8 or batch.ndim != 5 or batch.shape[-1] != 3:
            raise ValueError(
                f"expected a uint8 (B, V, H, W, 3) batch, got {batch.dtype} {tuple(batch.shape)}"
            )
        n_samples, n_views = batch.shape[:2]
        x = batch.permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, V, 3, H, W)
        if n_views == 1:  # whole image: resize once, then two views of it
            x = x[:, 0]
            if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:
                x = F.interpolate(
                    x,
                    size=(self.out_size, self.out_size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                ).clamp_(0, 1)
            x = x.repeat_interleave(2, dim=0)  # (2B, 3, s, s), sample-major
        elif n_views == 2:
            x = x.flatten(0, 1)  # (2B, 3, H, W), sample-major
        else:
            raise ValueError(f"expected 1 or 2 views per sample, got {n_views}")
        total = n_samples if total is None else total
        positions = torch.arange(n_samples) if positions is None else positions.cpu()
        params = self.sample(2 * total, tuple(x.shape[-2:]), generator, strength)
        params = params.take((positions.view(-1, 1) * 2 + torch.arange(2)).flatten())
        out = self.apply(x, params)
        return out.view(n_samples, 2, 3, self.out_size, self.out_size)
