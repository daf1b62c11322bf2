"""Window-source experiments on a finished demo run: pretraining variants x seeds, each
evaluated with the workflow's linear protocol (docs/window-sources.md).

Each variant is a lesion index built from the demo's own files (the detector's index,
its random-window control, the generator's true boxes, ...) or a whole-image SimCLR
run; each is pretrained with the demo's recipe at several seeds and evaluated exactly
as the workflow does (frozen features at evaluation.input_size, the linear head on the
workflow's label fractions, test kappa with its bootstrap interval). Runs are cached:
a finished (variant, seed) is not redone.

    .venv/bin/python scripts/experiments/window_sources.py --demo . \
        --variants detector random truth --seeds 0 1 2 --out results/experiments

``--steps N`` fixes the number of SGD steps of every variant (epochs = N / steps per
epoch, warm-ups scaled alike), so that indexes of different sizes are compared at the
same optimisation budget; without it every variant trains the configured epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from lesioncl.crop.cache import open_crop_cache
from lesioncl.evaluation.features import FeatureSettings, run_feature_extraction
from lesioncl.evaluation.linear import LinearSettings, run_linear
from lesioncl.lesions import controls, load_lesion_index, write_lesion_index
from lesioncl.pretrain.config import PretrainConfig
from lesioncl.pretrain.data import grow_boxes
from lesioncl.pretrain.train import run_pretraining
from lesioncl.utils import setup_logging

log = logging.getLogger("window_sources")


# --------------------------------------------------------------------------- variants
def _truth(demo: Path, cfg: dict) -> pd.DataFrame:
    lesions = controls.read_truth_lesions(demo / "results/synthetic/eyepacs_lesions.csv")
    manifest = pd.read_csv(demo / "results/eyepacs/crop_manifest.csv", dtype={"image": str})
    return controls.truth_boxes(lesions, manifest, cfg["crop"]["size"])


def _crops(demo: Path) -> dict:
    return {s: open_crop_cache(demo / f"results/cache/crops_{s}.npy") for s in ("train", "val")}


def split_by_truth(index: dict, truth: pd.DataFrame, keep_hits: bool) -> dict:
    """The boxes of ``index`` whose centre is (``keep_hits``) or is not inside a true box,
    tested as :func:`lesioncl.lesions.quality.index_quality` counts a box's precision."""
    from lesioncl.lesions.quality import TOLERANCE, _centres, _inside
    from lesioncl.pretrain.data import image_key

    out: dict = {}
    by_split = controls.truth_by_image(truth)
    for split, images in index.items():
        by_image = by_split.get(split, {})
        kept = {}
        for name, boxes in images.items():
            b = np.asarray(boxes, dtype=float).reshape(-1, 4)
            tb = by_image.get(image_key(name), np.zeros((0, 4)))
            hit = _inside(_centres(b), tb, TOLERANCE).any(axis=1)
            chosen = [tuple(box) for box, h in zip(boxes, hit) if bool(h) == keep_hits]
            if chosen:
                kept[name] = chosen
        out[split] = kept
    return out


def grow(index: dict, margin: float, size: int) -> dict:
    """Every box grown by ``margin`` px on each side (what ``pretrain.box_margin`` does)."""
    return {
        split: {
            name: [tuple(b) for b in grow_boxes(np.asarray(boxes, float), margin, size)]
            for name, boxes in images.items()
        }
        for split, images in index.items()
    }


def build_index(variant: str, demo: Path, cfg: dict, seed: int) -> dict | None:
    if "+g" in variant:  # e.g. truth+g8: the variant's boxes grown by 8 px
        base, margin = variant.split("+g")
        return grow(build_index(base, demo, cfg, seed), float(margin), cfg["crop"]["size"])
    return _build_index(variant, demo, cfg, seed)


def _build_index(variant: str, demo: Path, cfg: dict, seed: int) -> dict | None:
    """The lesion index of a variant (None: whole-image SimCLR, or ``init``: random weights,
    no pretraining)."""
    li = cfg["lesion_index"]
    size = cfg["crop"]["size"]

    def detector():
        return load_lesion_index(demo / "results/lesions/lesion_index.pkl")

    if variant == "detector":
        return detector()
    if variant in ("detector_tp", "detector_fp"):
        # the detector's boxes split by the generator's truth: those whose centre lies in a
        # true box of any kind (1 px tolerance, as results/lesions/quality.json counts
        # them), or those that lie in none (vessels, texture)
        return split_by_truth(detector(), _truth(demo, cfg), keep_hits=variant == "detector_tp")
    if variant == "random":
        return controls.random_index(
            detector(), _crops(demo), controls.RandomIndexSettings(li["border_margin"], size, seed)
        )
    if variant in ("salient", "salient_off_lesions"):
        # the detector's box counts and sizes at the most contrasted places (a detector
        # that knows nothing of lesions); "_off_lesions": none centred on a true lesion
        avoid = controls.truth_by_image(_truth(demo, cfg)) if variant == "salient_off_lesions" else None
        settings = controls.SalientIndexSettings(li["border_margin"], size, seed)
        return controls.salient_index(detector(), _crops(demo), settings, avoid)
    if variant.startswith("truth"):
        # "_healthy": the images without a box of the chosen kinds get random windows
        base = variant.removesuffix("_healthy")
        kinds = controls.DETECTOR_KINDS
        if base == "truth_no_ma":
            kinds = tuple(k for k in kinds if k != "microaneurysm")
        if base == "truth_all":
            kinds = (*kinds, "neovascularisation", "preretinal_haemorrhage")
        settings = controls.TruthIndexSettings(kinds, li["max_box_size"], li["border_margin"], size)
        index, _ = controls.truth_index(_truth(demo, cfg), settings)
        if variant.endswith("_healthy"):
            # the other images get random windows, as many and as large as the detector's
            crops = _crops(demo)
            for split, images in detector().items():
                healthy = {k: v for k, v in images.items() if k not in index[split]}
                extra = controls.random_index(
                    {split: healthy},
                    crops,
                    controls.RandomIndexSettings(li["border_margin"], size, seed),
                )
                index[split].update(extra[split])
        return index
    if variant.startswith("simclr") or variant == "init":
        return None
    raise SystemExit(f"unknown variant {variant!r}")


# --------------------------------------------------------------------------- one run
def steps_per_epoch(
    index: dict | None, demo: Path, batch: int, samples: int | None = None
) -> int:
    """Whole batches per epoch: of ``samples`` (pretrain.samples_per_epoch) when set,
    else of one sample per training image, as the workflow's sampler draws them."""
    n = samples or (
        len(index["train"])
        if index is not None
        else len(open_crop_cache(demo / "results/cache/crops_train.npy")[1])
    )
    return max(1, n // batch)


def run_one(
    variant: str,
    seed: int,
    demo: Path,
    cfg: dict,
    out: Path,
    steps: int | None,
    as_workflow: bool = False,
) -> dict:
    run_dir = out / variant / f"seed{seed}"
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    pt, ev = cfg["pretrain"], cfg["evaluation"]
    index = build_index(variant, demo, cfg, seed)
    index_path = None
    if index is not None:
        index_path = run_dir / "lesion_index.pkl"
        write_lesion_index(index, index_path, run_dir / "lesion_index.json")
    batch = pt["batch_size"]
    view = pt["patch_size"]
    if variant.startswith("simclr"):
        view = int(variant.split("_")[1])
    samples = pt.get("samples_per_epoch")
    spe = steps_per_epoch(index, demo, batch, samples)
    epochs, warm, view_warm = pt["epochs"], pt["warmup_epochs"], pt["view_warmup_epochs"]
    if steps:
        scale = math.ceil(steps / spe) / epochs
        epochs = math.ceil(steps / spe)
        warm, view_warm = round(warm * scale), round(view_warm * scale)
    pcfg = PretrainConfig(
        mode="whole" if index is None else "lesion",
        train_cache=str(demo / "results/cache/crops_train.npy"),
        val_cache=str(demo / "results/cache/crops_val.npy"),
        lesion_index=str(index_path) if index_path else None,
        out_dir=str(run_dir / "pretrain"),
        arch=pt["arch"],
        init=pt["init"],
        view_size=view,
        epochs=epochs,
        batch_size=batch,
        lr=pt["lr"],
        optimizer=pt["optimizer"],
        momentum=pt["momentum"],
        nesterov=pt["nesterov"],
        weight_decay=pt["weight_decay"],
        warmup_epochs=warm,
        view_warmup_epochs=view_warm,
        samples_per_epoch=samples,
        temperature=pt["temperature"],
        proj_hidden=pt["proj_hidden"],
        proj_dim=pt["proj_dim"],
        # as_workflow: the workflow's loader process and probe schedule (a run's trajectory
        # depends on them); otherwise one probe at the end, loading in the process
        val_every=round(pt["val_every"] * epochs / pt["epochs"]) if as_workflow else epochs,
        checkpoint_every=10**6,
        workers=pt["workers"] if as_workflow else 0,
        amp=False,
        device="cpu",
        seed=seed,
        log_images=False,
        probe_size=ev["input_size"],
    )
    history = run_pretraining(pcfg) if variant != "init" else [{}]
    fsettings = FeatureSettings(
        input_size=ev["input_size"], batch_size=ev["feature_batch_size"], amp=False, seed=0
    )
    feats = {}
    for split in ("train", "val", "test"):
        feats[split] = run_dir / f"features_{split}.npz"
        run_feature_extraction(
            # a pretrained method's name: the backbone is read from the weights (a variant
            # named like a built-in, e.g. "random", would otherwise be built as one)
            method="random"
            if variant == "init"
            else "simclr_64"
            if variant.startswith("simclr")
            else "lesion_cl",
            split=split,
            images_npy=demo / f"results/cache/crops_{split}.npy",
            images_csv=demo / f"results/cache/crops_{split}.csv",
            output=feats[split],
            arch=pt["arch"],
            weights=None if variant == "init" else run_dir / "pretrain/backbone.pth",
            settings=fsettings,
        )
    lin = ev["linear"]
    lsettings = LinearSettings(
        epochs=lin["epochs"],
        lr=lin["lr"],
        weight_decays=tuple(lin["weight_decays"]),
        batch_size=lin["batch_size"],
        class_balanced=lin["class_balanced"],
    )
    kappas = {}
    eval_seed = ev["seeds"][0]
    for fraction in ev["fractions"]:
        res = run_linear(
            method=variant,
            fraction=fraction,
            seed=eval_seed,
            train_features=feats["train"],
            val_features=feats["val"],
            test_features=feats["test"],
            fractions_csv=demo / f"results/eval/fractions/seed{eval_seed}.csv",
            output=run_dir / f"linear_frac{fraction}.json",
            settings=lsettings,
            threads=torch.get_num_threads(),
        )
        kappas[str(fraction)] = res["test"]["kappa"]
    last = history[-1]
    result = {
        "variant": variant,
        "seed": seed,
        "train_images": len(index["train"]) if index is not None else None,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "steps": spe * epochs,
        "final_loss": last.get("train_loss"),
        "knn_kappa": last.get("knn_kappa"),
        "linear_test_kappa": kappas,
    }
    result_file.write_text(json.dumps(result, indent=1))
    for path in feats.values():
        path.unlink()
    return result


def table(results: list[dict], fractions: list) -> str:
    rows = [
        "| variant | seeds | steps | loss | kNN | "
        + " | ".join(f"linear {int(float(f) * 100)} %" for f in fractions)
        + " |"
    ]
    rows.append("|---|---|---:|---:|---:|" + "---:|" * len(fractions))
    by = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)
    for variant, rs in by.items():
        cells = []
        for f in fractions:
            k = np.array([r["linear_test_kappa"][str(f)] for r in rs], dtype=float)
            cells.append(f"{k.mean():.3f} ± {k.std(ddof=1) if len(k) > 1 else 0:.3f}")
        loss = np.mean([np.nan if r["final_loss"] is None else r["final_loss"] for r in rs])
        knn = np.mean([r["knn_kappa"] for r in rs if r["knn_kappa"] is not None] or [np.nan])
        rows.append(
            f"| {variant} | {','.join(str(r['seed']) for r in rs)} | {rs[0]['steps']} | "
            f"{loss:.2f} | {knn:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("."), help="folder of a finished demo")
    parser.add_argument("--config", type=Path, default=None, help="its config (default: demo's)")
    parser.add_argument("--variants", nargs="+", default=["detector", "random", "truth"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="SGD steps of every variant")
    parser.add_argument("--out", type=Path, default=Path("results/experiments"))
    parser.add_argument("--set", nargs="*", default=[], help="pretrain.key=value overrides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one core each)")
    parser.add_argument(
        "--as-workflow",
        action="store_true",
        help="the workflow's loader workers and probe schedule (pretrain.workers, val_every)",
    )
    args = parser.parse_args(argv)
    setup_logging(None)
    torch.set_num_threads(args.threads)
    config = args.config or Path(__file__).resolve().parents[2] / "config/config.yaml"
    cfg = yaml.safe_load(config.read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        cfg["pretrain"][key] = yaml.safe_load(value)
    results = []
    for variant in args.variants:
        for seed in args.seeds:
            r = run_one(variant, seed, args.demo, cfg, args.out, args.steps, args.as_workflow)
            log.info("%s seed %d: %s", variant, seed, r)
            results.append(r)
    text = table(results, cfg["evaluation"]["fractions"])
    print(text)
    (args.out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
