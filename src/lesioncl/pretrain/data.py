"""Views for contrastive pretraining, read from the crop cache.

* :func:`sample_window` – where a lesion window goes (the geometry, unit-tested).
* :class:`LesionPairDataset` – one sample per image and epoch: a random lesion box of
  the image and two independent windows that each contain it (the paper's views);
  during a view warm-up the second window starts on the first and moves to its own
  place (:func:`view_strength`).
* :class:`WholeImageDataset` – the whole crop (SimCLR baseline; both views are made
  from it by the augmentation).
* :class:`EpochSampler` – shuffles per epoch, shards across DDP ranks, and hands the
  epoch to the dataset together with each index.

The datasets return **uint8** ``(V, H, W, 3)`` tensors cut straight from the memmap
(V = 2 windows, or 1 whole image); all float work (augmentation) happens per batch
in :mod:`.augment`, on the GPU when training there. Every sample's randomness comes
from ``(seed, stream, epoch, index)`` alone, so it does not depend on the number of
DataLoader workers or GPUs, and a resumed run sees exactly the windows it would have
seen without the interruption.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lesioncl.crop.cache import open_crop_cache

log = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff")


# --------------------------------------------------------------------------- geometry
def window_start_range(lo: float, hi: float, patch: int, size: int) -> tuple[int, int]:
    """Inclusive range of window starts ``s`` along one axis.

    The window covers pixels ``[s, s + patch)``; it contains the box extent
    ``[lo, hi]`` when ``s <= floor(lo)`` and ``s + patch >= ceil(hi)``. The range is
    intersected with ``[0, size - patch]`` so that the window stays inside the image:
    near an edge the window is *shifted* inward rather than padded with black, as the
    original implementation did. Because the box lies inside the image (callers clip
    it), the intersection is never empty when the box fits in the window.

    A box extent longer than ``patch`` cannot be contained: the window is then centred
    on the box (and clamped into the image), i.e. it shows the box's middle part.
    """
    if patch > size:
        raise ValueError(f"patch size {patch} is larger than the image ({size} px)")
    first = math.ceil(hi) - patch
    last = math.floor(lo)
    if first > last:  # box longer than the window: centre it on the box
        first = last = int(round((lo + hi) / 2 - patch / 2))
    first = min(max(first, 0), size - patch)
    last = min(max(last, 0), size - patch)
    return first, last


def sample_window(
    box: Sequence[float], patch: int, height: int, width: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left ``(x0, y0)`` of a random ``patch`` x ``patch`` window containing ``box``.

    ``box`` is ``(x1, y1, x2, y2)`` in pixels; it is clipped to the image first. The
    offset is uniform over all windows that contain the box and lie inside the image.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    ax, bx = window_start_range(x1, x2, patch, width)
    ay, by = window_start_range(y1, y2, patch, height)
    return int(rng.integers(ax, bx + 1)), int(rng.integers(ay, by + 1))


def grow_boxes(boxes: np.ndarray, margin: float, size: int) -> np.ndarray:
    """Boxes ``(n, 4)`` grown by ``margin`` px on each side, clipped to the ``size`` crop.

    A window that contains the grown box keeps the lesion at least ``margin`` px from its
    border (``pretrain.box_margin``), where a view's rotation, crop or shift cannot cut it.
    """
    if margin <= 0:
        return boxes
    grown = boxes + np.array([-margin, -margin, margin, margin], dtype=np.float64)
    return np.clip(grown, 0.0, float(size))


def view_strength(epoch: int, warmup_epochs: int) -> float:
    """How different the two views of a sample are in ``epoch`` (0-based) of a view warm-up.

    Linear from 0 (epoch 0: two identical, unaugmented copies of one window) to 1 (the
    paper's views) at ``warmup_epochs``; 1 throughout without a warm-up.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


def sample_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: independent streams for every (seed, stream, epoch, index)."""
    return np.random.default_rng([seed % 2**63, stream, epoch, index])


def image_key(name: str) -> str:
    """``'10_left.jpeg'`` and ``'10_left'`` both map to ``'10_left'``."""
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- datasets
class _CacheDataset(Dataset):
    """Opens the memmap lazily, once per process: workers share the page cache and a
    pickled dataset (spawn start method) carries only the path, never the pixels."""

    def __init__(self, cache: str | os.PathLike, seed: int, stream: int):
        self.cache = Path(cache)
        self.seed = int(seed)
        self.stream = int(stream)
        self._images: np.ndarray | None = None
        images, rows = open_crop_cache(self.cache)
        self.size = int(images.shape[1])
        self.rows = rows

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images, _ = open_crop_cache(self.cache)
        return self._images

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None
        return state


class LesionPairDataset(_CacheDataset):
    """Two windows around one random lesion box of each image: uint8 ``(2, P, P, 3)``.

    ``boxes`` is one split of the lesion index (``{'10_left.jpeg': [(x1, y1, x2, y2), ...]}``
    in crop pixels). Images without a box are left out (and counted in the log); an
    image of the index that is not in the cache is an error. ``box_margin`` grows every
    box before the windows are drawn (:func:`grow_boxes`; 0: the paper's windows).
    """

    def __init__(
        self,
        cache: str | os.PathLike,
        boxes: Mapping[str, Sequence[Sequence[float]]],
        patch: int,
        seed: int = 0,
        stream: int = TRAIN_STREAM,
        index_file: str | os.PathLike = "the lesion index",
        view_warmup_epochs: int = 0,
        box_margin: float = 0.0,
    ):
        super().__init__(cache, seed, stream)
        self.view_warmup_epochs = int(view_warmup_epochs)
        if box_margin < 0:
            raise ValueError(f"pretrain.box_margin must be >= 0, got {box_margin}")
        if patch > self.size:
            raise ValueError(
                f"pretrain.patch_size {patch} is larger than the cached crops ({self.size} px, "
                f"{cache})"
            )
        self.patch = int(patch)
        row_of = {image_key(str(name)): i for i, name in enumerate(self.rows["image"])}
        missing = [name for name in boxes if image_key(str(name)) not in row_of]
        if missing:
            raise ValueError(
                f"{index_file}: {len(missing)} images are not in the crop cache {cache} "
                f"(e.g. {missing[:3]}); the index and the cache come from different crops or "
                "splits — rerun the lesion index and crop_cache rules"
            )
        self.items: list[tuple[int, np.ndarray]] = []
        empty = 0
        for name, image_boxes in boxes.items():
            arr = np.asarray(image_boxes, dtype=np.float64)
            if arr.size == 0:
                arr = np.zeros((0, 4))
            if arr.ndim != 2 or arr.shape[1] != 4:
                raise ValueError(
                    f"{index_file}: image {name} has boxes of shape {arr.shape}, expected a list "
                    "of (x1, y1, x2, y2); rebuild the lesion index"
                )
            valid = (
                (arr[:, 2] >= arr[:, 0]) & (arr[:, 3] >= arr[:, 1]) & np.isfinite(arr).all(axis=1)
            )
            if not valid.all():
                raise ValueError(
                    f"{index_file}: image {name} has malformed boxes {arr[~valid][:3].tolist()} "
                    "(expected x1 <= x2, y1 <= y2); rebuild the lesion index"
                )
            if len(arr) == 0:
                empty += 1
                continue
            self.items.append(
                (row_of[image_key(str(name))], grow_boxes(arr, box_margin, self.size))
            )
        if empty:
            log.info("%s: %d images without lesion boxes are left out", index_file, empty)
        if not self.items:
            raise ValueError(
                f"{index_file}: no image with a lesion box for this split; nothing to train on"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int] | int) -> torch.Tensor:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        # index >= len(self): a further draw of an image in an epoch of more samples than
        # images (EpochSampler's samples); its own windows, from its own generator
        row, boxes = self.items[index % len(self.items)]
        rng = sample_rng(self.seed, self.stream, epoch, index)
        box = boxes[rng.integers(len(boxes))]
        image = self.images[row]
        p = self.patch
        (x0, y0), (x1, y1) = (sample_window(box, p, self.size, self.size, rng) for _ in range(2))
        # view warm-up: the second window slides from the first one's place to its own; every
        # start in between also contains the box (the valid starts form an interval per axis)
        r = view_strength(epoch, self.view_warmup_epochs)
        x1, y1 = int(round(x0 + r * (x1 - x0))), int(round(y0 + r * (y1 - y0)))
        views = np.stack([image[y0 : y0 + p, x0 : x0 + p], image[y1 : y1 + p, x1 : x1 + p]])
        return torch.from_numpy(views)


class WholeImageDataset(_CacheDataset):
    """The whole cached crop, uint8 ``(1, s, s, 3)`` (SimCLR baseline).

    ``size`` (the view size) shrinks the crop in the worker with OpenCV's area
    interpolation (anti-aliased, ~0.3 ms per 512 crop), so batches of small whole
    images, not of 512 crops, travel to the GPU; ``None`` keeps the cached size.
    """

    def __init__(
        self,
        cache: str | os.PathLike,
        seed: int = 0,
        stream: int = TRAIN_STREAM,
        size: int | None = None,
    ):
        super().__init__(cache, seed, stream)
        self.out_size = None if size is None or size == self.size else int(size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int] | int) -> torch.Tensor:
        index = key[1] if isinstance(key, tuple) else key
        image = self.images[index % len(self.rows)]
        if self.out_size is not None:
            import cv2

            image = cv2.resize(
                np.asarray(image), (self.out_size, self.out_size), interpolation=cv2.INTER_AREA
            )
        return torch.from_numpy(np.array(image)[None])


# --------------------------------------------------------------------------- sampler
class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for this rank: a permutation seeded by ``seed + epoch``,
    truncated to a multiple of ``world_size`` and split round-robin across ranks.

    Rank ``r`` gets positions ``r, r + W, r + 2W, ...`` of the permutation, so local batch
    ``b`` of every rank together is exactly global batch ``b`` of a single-process run.
    Call :meth:`set_epoch` before each epoch; ``skip`` drops this rank's first samples
    (a run resumed mid-epoch). ``(epoch, skip)`` is the sampler's whole state.

    ``samples`` (``pretrain.samples_per_epoch``; None: ``n``, one per item): an epoch of
    that many samples, so that data sets of different sizes train the same number of
    steps. Further permutations follow the first (each item once per round); round ``k``
    yields ``index + k * n``, which the datasets map to item ``index`` with draws of its
    own. With ``samples = n`` the epoch is exactly the plain one.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        samples: int | None = None,
    ):
        self.total = int(samples) if samples else n
        if min(n, self.total) < world_size:
            raise ValueError(f"{n} samples cannot be split across {world_size} ranks")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self) -> int:
        return max(0, self.total // self.world_size - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order: list[int] = []
        for k in range(-(-self.total // self.n)):  # rounds: ceil(total / n)
            if not self.shuffle:
                order += range(k * self.n, (k + 1) * self.n)
                continue
            # round 0 is the plain epoch's permutation; later rounds draw their own
            g = torch.Generator().manual_seed(self.seed + self.epoch + k * 1_000_003)
            order += (torch.randperm(self.n, generator=g) + k * self.n).tolist()
        order = order[: (self.total // self.world_size) * self.world_size]
        for index in order[self.rank :: self.world_size][self.skip :]:
            yield self.epoch, index
