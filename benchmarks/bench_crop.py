"""Speed of the EyePACS crop: the plain original algorithm vs lesioncl.crop, same run.

The plain algorithm (lesioncl.crop.crop_reference + save) decodes the full JPEG, blurs
it with PIL's ImageFilter.BLUR, finds the box with numpy, crops, Lanczos-resizes to
512 and saves quality 100 4:4:4. Ours (lesioncl.crop.crop_image) decodes at a
reduced DCT scale, searches the box on a reduced image and resamples from there.
Both run on the same images, interleaved image by image, so that a machine shared
with other jobs slows both alike. Printed: images/s of each, the ratio, the largest
box difference (full-resolution pixels) and the mean / max difference of the 512
outputs.

    python benchmarks/bench_crop.py                  # 20 generated 3000-4752 px JPEGs
    python benchmarks/bench_crop.py --images DIR     # your own JPEGs (e.g. EyePACS train/)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lesioncl import crop as C  # noqa: E402

SIZES = [(3888, 2592), (3456, 2304), (4752, 3168), (3216, 2136), (3000, 2000)]


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n fundus-like JPEGs: the scikit-image retina photo scaled to a disk clipped at
    top and bottom, off-centre on a black frame with side borders, light noise."""
    from skimage import data

    rng = np.random.default_rng(seed)
    retina = Image.fromarray(data.retina())
    noise = rng.integers(-2, 3, size=(256, 256, 3)).astype(np.int16)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        radius = int(h * rng.uniform(0.5, 0.56))
        cx = w // 2 + int(rng.integers(-h // 20, h // 20))
        disk = retina.resize((2 * radius, 2 * radius), Image.BILINEAR)
        canvas = Image.new("RGB", (w, h))
        canvas.paste(disk, (cx - radius, h // 2 - radius))
        arr = np.asarray(canvas).astype(np.int16)
        reps = (-(-h // 256), -(-w // 256), 1)
        arr = np.clip(arr + np.tile(noise, reps)[:h, :w] + 2, 0, 255).astype(np.uint8)
        path = folder / f"{i}_{'left' if i % 2 else 'right'}.jpeg"
        Image.fromarray(arr).save(path, format="JPEG", quality=int(rng.integers(88, 96)))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help="folder of JPEGs (default: generate --n images)")
    ap.add_argument("--n", type=int, default=20, help="images to generate or to take from --images")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the parallel run")
    ap.add_argument("--detect-max-size", type=int, default=1600,
                    help="detection crop size of the 'ours + detection crop' runs")
    ap.add_argument("--workdir", type=Path, help="where images and outputs go (default: a temp dir)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench_crop_") if args.workdir is None else None
    work = Path(tmp.name) if tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.images:
        images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))[: args.n]
        if not images:
            raise SystemExit(f"--images {args.images}: no .jpeg/.jpg files there")
    else:
        t0 = time.perf_counter()
        (work / "raw").mkdir(exist_ok=True)
        images = make_images(work / "raw", args.n)
        print(f"generated {len(images)} JPEGs in {time.perf_counter() - t0:.1f} s")
    for sub in ("ref", "ours", "ours_det", "det"):
        (work / sub).mkdir(exist_ok=True)
    params = C.CropParams()
    params_det = C.CropParams(detect_max_size=args.detect_max_size)
    sizes = [Image.open(p).size for p in images]
    mb = sum(p.stat().st_size for p in images) / len(images) / 1e6
    print(f"{len(images)} images, {min(sizes)} .. {max(sizes)} px, {mb:.2f} MB on average; "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}")

    def run_ref(p: Path) -> tuple[int, ...]:
        img, box, _ = C.crop_reference(p, params)
        img.save(work / "ref" / p.name, format="JPEG", quality=100, subsampling=0)
        return box

    def run_ours(p: Path) -> tuple[int, ...]:
        return C.crop_image(p, work / "ours" / p.name, None, params).box

    def run_ours_det(p: Path) -> tuple[int, ...]:
        return C.crop_image(p, work / "ours_det" / p.name, work / "det" / p.name, params_det).box

    C.init_worker()
    for f in (run_ref, run_ours, run_ours_det):  # warm-up (imports, caches)
        f(images[0])
    runs = {"reference": run_ref, "ours": run_ours, "ours_det": run_ours_det}
    seconds = dict.fromkeys(runs, 0.0)
    boxes = {k: [] for k in runs}
    for p in images:  # interleaved, so a busy machine slows every variant alike
        for name, f in runs.items():
            t0 = time.perf_counter()
            boxes[name].append(f(p))
            seconds[name] += time.perf_counter() - t0

    tasks = [C.CropTask(i, p.stem, str(p), str(work / "ours" / p.name), None, params)
             for i, p in enumerate(images)]
    tasks_det = [C.CropTask(i, p.stem, str(p), str(work / "ours_det" / p.name), str(work / "det" / p.name),
                            params_det) for i, p in enumerate(images)]
    par = {}
    for name, ts in (("ours", tasks), ("ours_det", tasks_det)):
        t0 = time.perf_counter()
        C.run_tasks(ts, args.workers, desc=f"{name} x{args.workers}")
        par[name] = time.perf_counter() - t0
    n = len(images)
    ref_rate = n / seconds["reference"]
    print()
    print(f"{'variant':<44}{'images/s':>10}{'vs reference':>14}")
    rows = [
        ("reference (plain algorithm), 1 process", seconds["reference"]),
        ("ours, 512 crop, 1 process", seconds["ours"]),
        (f"ours, 512 + detection crop ({args.detect_max_size}), 1 process", seconds["ours_det"]),
        (f"ours, 512 crop, {args.workers} processes", par["ours"]),
        (f"ours, 512 + detection crop, {args.workers} processes", par["ours_det"]),
    ]
    for label, s in rows:
        print(f"{label:<44}{n / s:>10.2f}{n / s / ref_rate:>13.1f}x")

    box_diff = max(max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(boxes["ours"], boxes["reference"]))
    box_diff_det = max(max(abs(a - b) for a, b in zip(x, y))
                       for x, y in zip(boxes["ours_det"], boxes["reference"]))
    diffs = []
    for p in images:
        a = np.asarray(Image.open(work / "ours" / p.name)).astype(np.int16)
        b = np.asarray(Image.open(work / "ref" / p.name)).astype(np.int16)
        diffs.append(np.abs(a - b))
    diffs = np.stack(diffs)
    print()
    print(f"single-process speed-up (the honest figure): {seconds['reference'] / seconds['ours']:.1f}x "
          f"(512 crop only), {seconds['reference'] / seconds['ours_det']:.1f}x (with the detection crop)")
    print(f"max box difference vs reference: {box_diff} px (512 only), {box_diff_det} px (with detection "
          f"crop), full-resolution pixels")
    print(f"512 output difference vs reference: mean {diffs.mean():.3f}, 99th percentile "
          f"{np.percentile(diffs, 99):.0f}, max {diffs.max()} (0-255 levels)")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
