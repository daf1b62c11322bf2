"""Speed of the lesion-pair loader: ours vs a per-sample PIL implementation of the original.

Both produce the pairs of lesion-based contrastive learning from the same 512x512 crops
and the same lesion index, timed batch by batch, interleaved (a machine shared with
other jobs slows both alike), on ONE CPU core (torch.set_num_threads(1), no DataLoader
workers), so the figures are pairs/s per core.

* original: per sample, decode the crop JPEG with PIL, cut two windows around a random
  lesion box (PIL crop, black padding at the edges as in the original), and run the
  torchvision transforms on each PIL window: flips, ColorJitter(0.4, 0.4, 0.4, 0.1),
  RandomResizedCrop(patch, 0.8-1.2, 0.8-1.2), RandomAffine(180, translate 0.2),
  RandomGrayscale(0.2), ToTensor, Normalize; default collate.
* ours, loader: what the CPU does per pair when training on a GPU: two windows sliced
  from the uint8 memmap cache, collated, (pinned); the augmentation runs per batch on
  the GPU. This is the figure the >= 5x target is about.
* ours, loader + batched augmentation on the CPU: the CPU-only training path.

Printed: pairs/s per core of each, and the ratios. With a CUDA GPU (--device cuda) the
batched augmentation's GPU throughput is printed too.

    python benchmarks/bench_loader.py                         # 64 generated 512 px crops
    python benchmarks/bench_loader.py --manifest results/eyepacs/crop_manifest.csv \\
        --index results/lesions/lesion_index.pkl --n 500      # real crops and index
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lesioncl.pretrain.augment import EYEPACS_MEAN, EYEPACS_STD, ViewAugment  # noqa: E402
from lesioncl.crop.cache import build_crop_cache  # noqa: E402
from lesioncl.pretrain.data import EpochSampler, LesionPairDataset, image_key  # noqa: E402
from lesioncl.pretrain.toydata import write_toy_dataset  # noqa: E402


class OriginalPairs(torch.utils.data.Dataset):
    """The straightforward per-sample implementation: JPEG decode + PIL transforms."""

    def __init__(self, paths: list[str], boxes: list[list[tuple[float, ...]]], patch: int):
        from torchvision import transforms as T

        self.paths, self.boxes, self.patch = paths, boxes, patch
        self.transform = T.Compose([
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.1),
            T.RandomResizedCrop(patch, scale=(0.8, 1.2), ratio=(0.8, 1.2)),
            T.RandomAffine(180, translate=(0.2, 0.2)),
            T.RandomGrayscale(0.2),
            T.ToTensor(),
            T.Normalize(EYEPACS_MEAN, EYEPACS_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def window(self, box) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = box
        lo_x, lo_y = int(math.ceil(x2)) - self.patch, int(math.ceil(y2)) - self.patch
        x0 = random.randint(min(lo_x, int(x1)), int(x1))
        y0 = random.randint(min(lo_y, int(y1)), int(y1))
        return x0, y0, x0 + self.patch, y0 + self.patch  # PIL pads outside with black

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.open(self.paths[index]).convert("RGB")
        box = random.choice(self.boxes[index])
        return tuple(self.transform(img.crop(self.window(box))) for _ in range(2))


def load_inputs(args, work: Path) -> tuple[Path, dict]:
    if args.manifest:
        from lesioncl.lesions import load_lesion_index

        if not args.index:
            raise SystemExit("--manifest needs --index (the lesion index pickle)")
        return args.manifest, load_lesion_index(args.index)
    t0 = time.perf_counter()
    paths = write_toy_dataset(work, n_train=args.n, n_val=2, size=512, seed=0, max_lesions=6)
    print(f"generated {args.n} 512x512 crops and their lesion index in {time.perf_counter() - t0:.1f} s")
    import pickle

    with open(paths["index"], "rb") as fh:
        return paths["manifest"], pickle.load(fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, help="crop_manifest.csv (default: generate crops)")
    ap.add_argument("--index", type=Path, help="lesion_index.pkl matching --manifest")
    ap.add_argument("--n", type=int, default=64, help="images to generate or to use")
    ap.add_argument("--patch", type=int, default=128, help="window size (the paper's 128)")
    ap.add_argument("--batch", type=int, default=32, help="pairs per batch")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the images")
    ap.add_argument("--device", default="cpu", help="also time the augmentation on this device (cuda)")
    ap.add_argument("--workdir", type=Path, help="where generated files and the cache go (default: temp)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    tmp = tempfile.TemporaryDirectory(prefix="bench_loader_") if args.workdir is None else None
    work = Path(tmp.name) if tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    manifest_path, index = load_inputs(args, work)

    manifest = pd.read_csv(manifest_path)
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    keep = [i for i, name in enumerate(train["image"]) if index["train"].get(f"{image_key(name)}.jpeg")]
    train = train.iloc[keep[: args.n]].reset_index(drop=True)
    subset = work / "bench_manifest.csv"
    train.to_csv(subset, index=False)
    t0 = time.perf_counter()
    npy = work / "cache" / "crops_train.npy"
    size = Image.open(train["path"][0]).size[0]
    build_crop_cache(subset, "train", size, npy, npy.with_suffix(".csv"), threads=1)
    print(f"crop cache of {len(train)} crops built in {time.perf_counter() - t0:.1f} s (once per split)")

    boxes = {f"{image_key(n)}.jpeg": index["train"][f"{image_key(n)}.jpeg"] for n in train["image"]}
    ours = LesionPairDataset(npy, boxes, args.patch, seed=0)
    original = OriginalPairs(list(train["path"]), [boxes[f"{image_key(n)}.jpeg"] for n in train["image"]], args.patch)
    augment = ViewAugment(args.patch)
    print(f"{len(ours)} images, patch {args.patch}, batch {args.batch}; {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.2f}; 1 thread per variant")

    def loader(dataset, sampler=None):
        return torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler, shuffle=sampler is None,
                                           num_workers=0, drop_last=True)

    seconds = {"original": 0.0, "loader": 0.0, "loader+aug": 0.0}
    pairs = dict.fromkeys(seconds, 0)
    gen = torch.Generator().manual_seed(0)
    for rnd in range(args.rounds + 1):  # round 0 warms up (imports, page cache)
        sampler = EpochSampler(len(ours), seed=0)
        sampler.set_epoch(rnd)
        it_orig, it_ours = iter(loader(original)), iter(loader(ours, sampler))
        for _ in range(len(ours) // args.batch):
            t0 = time.perf_counter()
            v1, _v2 = next(it_orig)
            t1 = time.perf_counter()
            batch = next(it_ours)
            t2 = time.perf_counter()
            views = augment(batch, gen)
            t3 = time.perf_counter()
            assert views.shape == (args.batch, 2, 3, args.patch, args.patch) and v1.shape == views[:, 0].shape
            if rnd:
                seconds["original"] += t1 - t0
                seconds["loader"] += t2 - t1
                seconds["loader+aug"] += t3 - t1
                for k in pairs:
                    pairs[k] += args.batch

    rate = {k: pairs[k] / seconds[k] for k in seconds}
    print()
    print(f"{'variant (1 CPU core)':<58}{'pairs/s':>10}{'vs original':>13}")
    labels = {
        "original": "original: JPEG decode + PIL transforms per sample",
        "loader": "ours, loader (GPU runs: augmentation on the GPU)",
        "loader+aug": "ours, loader + batched augmentation on the CPU",
    }
    for k, label in labels.items():
        print(f"{label:<58}{rate[k]:>10.1f}{rate[k] / rate['original']:>12.1f}x")
    print()
    ratio = rate["loader"] / rate["original"]
    print(f"loader speed-up per CPU core (GPU training path): {ratio:.1f}x (target >= 5x: "
          f"{'met' if ratio >= 5 else 'NOT met'})")
    print(f"CPU-only path (loader + augmentation on the CPU): {rate['loader+aug'] / rate['original']:.1f}x")

    if args.device != "cpu":
        device = torch.device(args.device)
        big = torch.cat([next(iter(loader(ours, EpochSampler(len(ours), seed=1))))] * max(1, 768 // args.batch))
        big = big.to(device)
        for _ in range(2):
            augment(big, gen)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        reps = 10
        for _ in range(reps):
            augment(big, gen)
        torch.cuda.synchronize(device)
        print(f"batched augmentation on {args.device}: {reps * big.shape[0] / (time.perf_counter() - t0):.0f} pairs/s "
              f"(batch {big.shape[0]})")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
