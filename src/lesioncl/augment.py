"""One batched image augmentation for pretraining and fine-tuning, by torchvision's rules.

Per image, in order: horizontal flip, vertical flip, ColorJitter (its operations in a
random order per image, as torchvision; an operation whose range is 0 is skipped, as
torchvision leaves it out), RandomResizedCrop, RandomAffine (rotation, translation),
RandomGrayscale, and optionally a normalisation. The two recipes of the paper
(docs/method.md) are two settings of :class:`Augment`:

* pretraining (:class:`lesioncl.pretrain.augment.ViewAugment`): flips 0.5,
  ColorJitter(0.4, 0.4, 0.4, 0.1), RandomResizedCrop(scale 0.8-1.2, ratio 0.8-1.2),
  +-180 deg, translate 0.2, greyscale 0.2, EyePACS normalisation; two views per sample;
* fine-tuning (:class:`lesioncl.evaluation.augment.BatchAugment`): flips 0.5,
  ColorJitter(0.2, 0.2, 0, 0), RandomResizedCrop(scale 0.87-1.15, ratio 0.7-1.3),
  +-180 deg, translate 0.2; one view per image at its own size.

RandomResizedCrop follows torchvision exactly: a crop whose area or side would exceed
the image is redrawn (up to 10 times, then a central crop), so a scale range above 1
(fine-tuning's 1.15) does not zoom out; it only makes crops close to the whole image
likelier. This is what the authors' torchvision pipelines did.

Parameters are drawn on the CPU from a ``torch.Generator`` (reproducible, identical on
CPU and GPU, no device syncs) and applied to whole batches on the training device. Two
differences from torchvision, both deliberate:

* the flips, the crop and the affine are composed into **one** bilinear resampling
  (``grid_sample``), instead of three (torchvision's RandomAffine defaults to nearest
  neighbour). The colour operations come first, as in the reference order; they act
  per pixel or through the image's global mean, so moving the flips relative to them
  changes nothing. Pixels the rotation brings in from outside are black (the
  torchvision fill) before normalisation.
* ``strength`` (:meth:`Augment.scaled`) shrinks every range towards the identity
  (pretraining's view warm-up); at 0 an image is its input, at 1 the recipe's, and the
  random numbers drawn do not depend on it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

# EyePACS channel statistics used by the authors (docs/method.md), on [0, 1] RGB.
EYEPACS_MEAN = (0.4258, 0.2974, 0.2129)
EYEPACS_STD = (0.2767, 0.2024, 0.1686)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


# --------------------------------------------------------------------------- colour ops
# x: float (N, 3, H, W) in [0, 1]; factors: (N,) on x's device.
def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # per view
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * to_grayscale(x)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) per view, as an HSV round trip.

    Rotating the hue keeps each pixel's max (V) and chroma (max - min), so the round
    trip reduces to: hue h in sextants from the largest channel, then channel c =
    max - chroma * clamp(min(k_c, 4 - k_c), 0, 1) with k_c = (n_c + h + 6 shift) mod 6,
    n = (5, 3, 1) (the standard HSV -> RGB formula).
    """
    maxc, argmax = x.max(dim=1, keepdim=True)
    chroma = maxc - x.amin(dim=1, keepdim=True)
    # hue numerator when r, g or b is the largest channel: g - b, b - r, r - g
    diff = x[:, [1, 2, 0]] - x[:, [2, 0, 1]]
    h6 = torch.gather(diff, 1, argmax).div_(chroma.clamp_min(1e-12)).add_(argmax * 2.0)
    h6 = h6.add_(6.0 * shift.view(-1, 1, 1, 1))
    n = torch.tensor((5.0, 3.0, 1.0), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(h6 + n, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(chroma).neg_().add_(maxc).clamp_(0.0, 1.0)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


# --------------------------------------------------------------------------- parameters
@dataclass
class AugmentParams:
    """Random parameters of N images or views (CPU tensors)."""

    hflip: torch.Tensor  # (N,) bool
    vflip: torch.Tensor  # (N,) bool
    jitter_order: torch.Tensor  # (N, 4) long: a permutation of brightness/contrast/saturation/hue
    jitter: torch.Tensor  # (N, 4) float: the four factors (hue as a shift)
    crop: torch.Tensor  # (N, 4) float: top, left, height, width in input pixels
    angle: torch.Tensor  # (N,) degrees
    translate: torch.Tensor  # (N, 2) output pixels (dx, dy)
    gray: torch.Tensor  # (N,) bool

    def __len__(self) -> int:
        return self.hflip.shape[0]

    def take(self, index: torch.Tensor) -> "AugmentParams":
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class Augment:
    """Random flips, colour jitter, resized crop, affine and greyscale on float batches.

    The defaults are the identity; each range is torchvision's argument of the same
    name. ``out_size`` None keeps each input's size (square inputs). ``mean``/``std``
    set: the output is normalised with them.
    """

    def __init__(
        self,
        out_size: int | None = None,
        jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        scale: tuple[float, float] = (1.0, 1.0),
        ratio: tuple[float, float] = (1.0, 1.0),
        degrees: float = 0.0,
        translate: float = 0.0,
        grayscale_p: float = 0.0,
        hflip_p: float = 0.0,
        vflip_p: float = 0.0,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ):
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.out_size = None if out_size is None else int(out_size)
        self.jitter, self.scale, self.ratio = tuple(jitter), tuple(scale), tuple(ratio)
        self.degrees, self.translate = float(degrees), float(translate)
        self.grayscale_p, self.hflip_p, self.vflip_p = grayscale_p, hflip_p, vflip_p
        self.mean, self.std = mean, std

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, strength: float = 1.0
    ) -> torch.Tensor:
        """One augmented image per input: float (N, 3, H, W) in [0, 1] -> (N, 3, out, out)."""
        if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float (N, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        params = self.sample(x.shape[0], tuple(x.shape[-2:]), generator, strength)
        return self.apply(x, params)

    # ---- sampling (CPU) -------------------------------------------------------------
    def scaled(self, strength: float) -> Augment:
        """This augmentation with every range shrunk to the identity (``strength`` in [0, 1])."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
        if strength == 1.0:
            return self
        r = float(strength)

        def around_one(lo_hi: tuple[float, float], log: bool = False) -> tuple[float, float]:
            if log:  # a ratio range, shrunk on the log scale
                return (math.exp(r * math.log(lo_hi[0])), math.exp(r * math.log(lo_hi[1])))
            return (1.0 - r * (1.0 - lo_hi[0]), 1.0 + r * (lo_hi[1] - 1.0))

        out = copy.copy(self)
        out.jitter = tuple(v * r for v in self.jitter)
        out.scale, out.ratio = around_one(self.scale), around_one(self.ratio, log=True)
        out.degrees, out.translate = self.degrees * r, self.translate * r
        out.grayscale_p, out.hflip_p, out.vflip_p = (
            self.grayscale_p * r,
            self.hflip_p * r,
            self.vflip_p * r,
        )
        return out

    def sample(
        self,
        n: int,
        in_size: tuple[int, int],
        generator: torch.Generator | None = None,
        strength: float = 1.0,
    ) -> AugmentParams:
        """Parameters of ``n`` views of ``in_size = (H, W)`` inputs, by torchvision's rules.

        ``strength`` < 1 samples from the ranges of :meth:`scaled`; the same random
        numbers are drawn whatever the strength.
        """
        if strength != 1.0:
            return self.scaled(strength).sample(n, in_size, generator)
        g = generator

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

        hflip = torch.rand(n, generator=g) < self.hflip_p
        vflip = torch.rand(n, generator=g) < self.vflip_p
        b, c, s, h = self.jitter
        jitter_order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
        jitter = torch.stack(
            [
                uniform(max(0.0, 1 - b), 1 + b, n),
                uniform(max(0.0, 1 - c), 1 + c, n),
                uniform(max(0.0, 1 - s), 1 + s, n),
                uniform(-h, h, n),
            ],
            dim=1,
        ).float()
        crop = self._sample_crop(n, in_size, uniform, g)
        angle = uniform(-self.degrees, self.degrees, n).float()
        max_d = self.translate * (self.out_size or in_size[1])
        translate = torch.round(uniform(-max_d, max_d, n, 2)).float()
        gray = torch.rand(n, generator=g) < self.grayscale_p
        return AugmentParams(hflip, vflip, jitter_order, jitter, crop, angle, translate, gray)

    def _sample_crop(self, n, in_size, uniform, g, attempts: int = 10) -> torch.Tensor:
        """RandomResizedCrop.get_params, vectorised: ``attempts`` tries, then a central crop."""
        height, width = in_size
        area = height * width
        target = area * uniform(self.scale[0], self.scale[1], n, attempts)
        log_r = uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), n, attempts)
        aspect = torch.exp(log_r)
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.to(torch.int8).argmax(dim=1)
        rows = torch.arange(n)
        w, h, found = w[rows, first], h[rows, first], ok[rows, first]
        # fallback: the whole image, clamped to the ratio range (torchvision's central crop)
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        top = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (height - h + 1))
        left = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (width - w + 1))
        top = torch.where(found, top, torch.round((height - h) / 2))
        left = torch.where(found, left, torch.round((width - w) / 2))
        return torch.stack([top, left, h, w], dim=1).float()

    # ---- application (device) -------------------------------------------------------

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment float images ``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, out, out)``."""
        x = self.color_jitter(x, params)
        x = self.warp(x, params)
        gray = params.gray.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
        x = torch.where(gray, to_grayscale(x).expand_as(x), x)
        if self.mean is None:
            return x
        return normalize(x, self.mean, self.std)

    def color_jitter(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """The four colour operations in each view's own random order."""
        x = x.clone()
        factors = params.jitter.to(x.device, non_blocking=True)
        for step in range(4):
            for op_id, op in enumerate(_JITTER_OPS):
                if self.jitter[op_id] == 0:  # torchvision leaves the operation out
                    continue
                idx = torch.nonzero(params.jitter_order[:, step] == op_id).flatten()  # CPU: no sync
                if idx.numel() == 0:
                    continue
                idx = idx.to(x.device, non_blocking=True)
                x[idx] = op(x[idx], factors[idx, op_id])
        return x

    def warp(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Flips, resized crop and affine as one bilinear resampling to ``out`` x ``out``."""
        n, _, height, width = x.shape
        out = self.out_size or width
        dev = x.device
        # output pixel centres (u, v) in continuous pixel coordinates
        ramp = torch.arange(out, device=dev, dtype=torch.float32) + 0.5
        vv, uu = torch.meshgrid(ramp, ramp, indexing="ij")
        base = torch.stack((uu, vv), dim=-1).view(1, out * out, 2)  # (1, P, 2) as (x, y)

        # inverse affine: p2 = R(-angle) (p3 - c - t) + c, rotating about the centre
        rad = torch.deg2rad(params.angle).to(dev, non_blocking=True)
        cos, sin = torch.cos(rad), torch.sin(rad)
        rot_inv = torch.stack(
            (torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2
        )  # (N, 2, 2)
        centre = out / 2.0
        t = params.translate.to(dev, non_blocking=True).view(n, 1, 2)
        p2 = torch.einsum("nij,npj->npi", rot_inv, base - centre - t) + centre  # (N, P, 2)
        inside = ((p2 >= 0) & (p2 < out)).all(dim=-1)  # rotation fill: black outside

        # resized crop: p1 = (left, top) + p2 * (w, h) / out
        crop = params.crop.to(dev, non_blocking=True)
        origin = torch.stack((crop[:, 1], crop[:, 0]), -1).view(n, 1, 2)
        extent = torch.stack((crop[:, 3], crop[:, 2]), -1).view(n, 1, 2)
        p1 = origin + p2 * (extent / out)
        # flips of the input
        size = torch.tensor((width, height), device=dev, dtype=torch.float32)
        flip = (
            torch.stack((params.hflip, params.vflip), -1).to(dev, non_blocking=True).view(n, 1, 2)
        )
        p0 = torch.where(flip, size - p1, p1)
        grid = (p0 * (2.0 / size) - 1.0).view(n, out, out, 2)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return warped * inside.view(n, 1, out, out).to(warped.dtype)


def normalize(x: torch.Tensor, mean=EYEPACS_MEAN, std=EYEPACS_STD) -> torch.Tensor:
    """Float ``(N, 3, H, W)`` in [0, 1] -> normalised with ``mean`` and ``std``."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean=EYEPACS_MEAN, std=EYEPACS_STD) -> torch.Tensor:
    """Normalised views back to [0, 1] for display."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1)
