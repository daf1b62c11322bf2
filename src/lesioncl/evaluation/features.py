"""Backbones of the compared methods, the image cache, preprocessing and frozen features."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lesioncl.augment import EYEPACS_MEAN, EYEPACS_STD
from lesioncl.augment import normalize as normalize_images
from lesioncl.backbones import build_resnet
from lesioncl.evaluation.plan import LESION_METHODS
from lesioncl.progress import progress
from lesioncl.utils import atomic_path, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """What decides the frozen features (config ``evaluation``; defaults: the schema's).

    Rule ``eval_features`` fills it from ``params.settings``; the backbone (``arch``, the
    weights) and the operational ``channels_last`` and ``workers`` are passed beside it.
    """

    seed: int = 0  # initialises the ``random`` method's backbone (config ``seed``)
    input_size: int = 512  # the crops are resized to this before the backbone
    batch_size: int = 64  # images per forward pass (``evaluation.feature_batch_size``)
    amp: bool = True  # mixed precision on CUDA


class MethodUnavailable(RuntimeError):
    """A compared method cannot run here (e.g. ImageNet weights not available offline)."""


def method_kind(method: str, extra_weights: dict | None = None) -> str:
    """How a method's backbone is obtained: 'pretrained', 'extra', 'random' or 'imagenet'."""
    extra_weights = extra_weights or {}
    if method in extra_weights:
        return "extra"
    if method in ("random", "imagenet"):
        return method
    if method in LESION_METHODS or (
        method.startswith("simclr_") and method[len("simclr_") :].isdigit()
    ):
        return "pretrained"
    raise ValueError(
        f"unknown evaluation method {method!r}: use {', '.join(LESION_METHODS)}, simclr_<size>, "
        "random, imagenet or a name defined in evaluation.extra_weights"
    )


def build_method_backbone(
    method: str,
    arch: str,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    imagenet_weights: str | os.PathLike | None = None,
) -> nn.Module:
    """The backbone (fc = identity) that ``method`` starts from.

    * ``random`` – torchvision's initialisation after seeding with ``seed``;
    * ``imagenet`` – torchvision ImageNet weights found offline, else :class:`MethodUnavailable`;
    * anything else – the state_dict file ``weights`` (our pretraining output or an
      external file such as the authors' ``resnet50_128_08.pt``), which must match ``arch``.
    """
    if method == "random":
        seed_everything(seed)
        return build_resnet(arch, "random")
    if method == "imagenet":
        try:
            return build_resnet(arch, "imagenet", imagenet_weights)
        except FileNotFoundError as err:
            raise MethodUnavailable(str(err)) from err
    if not weights:
        raise ValueError(f"method {method!r} needs a backbone state_dict file")
    try:
        return build_resnet(arch, "path", weights)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"{weights}: the weights of method {method!r} do not fit a torchvision {arch} "
            f"({err}). Set pretrain.arch to the architecture the file was trained with "
            "(the authors' released weights are resnet50), or fix evaluation.extra_weights."
        ) from err


def load_crop_cache(
    npy_path: str | os.PathLike, csv_path: str | os.PathLike
) -> tuple[np.ndarray, pd.DataFrame]:
    """The image cache (uint8 (N, S, S, 3), memory-mapped) and its rows (image, level, split)."""
    npy_path, csv_path = Path(npy_path), Path(csv_path)
    try:
        images = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{npy_path}: not a readable .npy image cache ({err}); rerun rule crop_cache"
        ) from err
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
        or images.shape[1] != images.shape[2]
    ):
        raise ValueError(
            f"{npy_path}: expected uint8 (N, S, S, 3) RGB crops, got {images.dtype} "
            f"{images.shape}; "
            "rerun rule crop_cache"
        )
    rows = pd.read_csv(csv_path)
    missing = {"image", "level"} - set(rows.columns)
    if missing:
        raise ValueError(f"{csv_path}: missing columns {sorted(missing)}; rerun rule crop_cache")
    if len(rows) != len(images):
        raise ValueError(
            f"{csv_path} has {len(rows)} rows but {npy_path} holds {len(images)} images; "
            "they are out of sync, rerun rule crop_cache"
        )
    if len(rows) and not rows["level"].isin(range(5)).all():
        raise ValueError(f"{csv_path}: levels must be 0-4")
    return images, rows


def autocast(device: str, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    if amp and str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_float(batch: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW in [0, 1], resized to ``size`` x ``size``."""
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 (N, H, W, 3) batch, got {batch.dtype} {tuple(batch.shape)}"
        )
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x


def normalize(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Subtract the EyePACS mean and divide by its std (x in [0, 1], NCHW)."""
    x = normalize_images(x, EYEPACS_MEAN, EYEPACS_STD)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class ChunkDataset(torch.utils.data.Dataset):
    """Consecutive chunks of the cache (one item = one batch), read by DataLoader workers."""

    def __init__(self, images: np.ndarray, batch_size: int):
        self.images = images
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> torch.Tensor:
        chunk = np.array(self.images[i * self.batch_size : (i + 1) * self.batch_size], copy=True)
        return torch.from_numpy(chunk)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    input_size: int,
    batch_size: int = 64,
    device: str = "cpu",
    amp: bool = True,
    channels_last: bool = True,
    workers: int = 0,
    desc: str = "inference",
) -> np.ndarray:
    """Run ``model`` (eval mode) over all cached images; float32 outputs (N, ...)."""
    model.eval()
    loader = torch.utils.data.DataLoader(
        ChunkDataset(images, batch_size),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=str(device).startswith("cuda"),
    )
    outputs = []
    for batch in progress(loader, desc=desc, unit="batch", mininterval=5):
        x = normalize(to_float(batch.to(device, non_blocking=True), input_size), channels_last)
        with autocast(device, amp):
            out = model(x)
        outputs.append(out.float().cpu())
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return torch.cat(outputs).numpy()


def extract_features(
    model: nn.Module,
    images: np.ndarray,
    input_size: int,
    batch_size: int = 64,
    device: str = "cpu",
    amp: bool = True,
    channels_last: bool = True,
    workers: int = 0,
) -> np.ndarray:
    """Pooled features (N, D) float32 of the frozen backbone for every cached image."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    feats = predict(
        model, images, input_size, batch_size, device, amp, channels_last, workers, desc="features"
    )
    if feats.ndim != 2:
        raise ValueError(
            f"expected pooled (N, D) features, got shape {feats.shape}; is fc an identity?"
        )
    if not np.all(np.isfinite(feats)):
        raise ValueError("non-finite features: the backbone weights are broken")
    return feats.astype(np.float32)


def save_features(
    path: str | os.PathLike,
    features: np.ndarray,
    levels,
    images,
    method: str,
    split: str,
    skipped: str | None = None,
) -> None:
    """Write features (N, D), levels (N,) and image names (N,) to an ``.npz`` atomically.

    A skipped method (``skipped`` = the reason) is written with zero rows so that the
    downstream runs can record it as skipped instead of failing.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            features=np.asarray(features, dtype=np.float32),
            levels=np.asarray(levels, dtype=np.int64),
            images=np.asarray([str(i) for i in images], dtype=np.str_),
            method=np.asarray(method),
            split=np.asarray(split),
            skipped=np.asarray(skipped or ""),
        )


def load_features(path: str | os.PathLike) -> dict:
    """Read a features file written by :func:`save_features` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path}: not a features file ({err}); delete it and rerun rule eval_features"
        ) from err
    needed = {"features", "levels", "images", "skipped"}
    if needed - set(out):
        raise ValueError(
            f"{path}: missing arrays {sorted(needed - set(out))}; rerun rule eval_features"
        )
    out["skipped"] = str(out["skipped"]) or None
    out["method"] = str(out.get("method", ""))
    out["split"] = str(out.get("split", ""))
    return out


def run_feature_extraction(
    *,
    method: str,
    split: str,
    images_npy: str | os.PathLike,
    images_csv: str | os.PathLike,
    output: str | os.PathLike,
    arch: str,
    weights: str | os.PathLike | None = None,
    imagenet_weights: str | os.PathLike | None = None,
    settings: FeatureSettings = FeatureSettings(),
    device: str = "cpu",
    channels_last: bool = True,
    workers: int = 0,
) -> dict:
    """Extract and save the frozen features of one method on one split; returns a summary."""
    input_size = settings.input_size
    images, rows = load_crop_cache(images_npy, images_csv)
    if len(images) == 0:
        raise ValueError(f"{images_npy}: the {split} cache holds no images; check the crop stage")
    try:
        model = build_method_backbone(method, arch, weights, settings.seed, imagenet_weights)
    except MethodUnavailable as err:
        log.warning(
            "method %s skipped: %s. Its results are marked as skipped; once the weights are "
            "in place, rerun with --forcerun eval_features eval_finetune",
            method,
            err,
        )
        save_features(output, np.zeros((0, 0), np.float32), [], [], method, split, skipped=str(err))
        return {"method": method, "split": split, "skipped": str(err)}
    log.info(
        "features of %s on %s: %d images %dpx -> %dpx, %s on %s",
        method,
        split,
        len(images),
        images.shape[1],
        input_size,
        arch,
        device,
    )
    feats = extract_features(
        model,
        images,
        input_size,
        settings.batch_size,
        device,
        settings.amp,
        channels_last,
        workers,
    )
    save_features(output, feats, rows["level"].to_numpy(), rows["image"].astype(str), method, split)
    log.info("wrote %s: features %s", output, feats.shape)
    return {"method": method, "split": split, "shape": list(feats.shape), "skipped": None}
