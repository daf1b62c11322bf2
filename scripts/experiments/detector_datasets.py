"""Which lesion data should the detector train on: IDRiD, DDR or both? (docs/detector.md)

Each variant is a finished workflow run of the demo configuration with its own
``detector.datasets`` (its results folder holds the detector, its lesion index and the
index's quality against the generator's boxes). This script trains the same detector at
more seeds on each variant's training data (the workflow's own seed 0 is the run's
model), measures every model on every source's test split (IDRiD test, DDR val and
test: a detector trained on one source is also measured on the other), and writes the
means with their spread beside the seed-0 lesion index's precision and recall.

    .venv/bin/python scripts/experiments/detector_datasets.py \
        --run idrid=results --run ddr=/tmp/det_ddr/results --run both=/tmp/det_both/results \
        --seeds 1 2 --out results/experiments/detector_datasets

``--steps-control`` adds "idrid, as many steps": IDRiD alone trained for as many
iterations as the joined IDRiD + DDR set gets in its 16 epochs (epochs and lr steps
scaled), at every seed, so that "more data" is not confused with "more SGD steps".
A finished (variant, seed) model is not retrained.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import yaml

from lesioncl.detector.sources import evaluate_sources
from lesioncl.detector.train import train_detector
from lesioncl.utils import setup_logging, write_json

log = logging.getLogger("detector_datasets")
KINDS = ("microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate")


def _data(results: Path, variant: str) -> Path:
    return results / ("idrid" if variant == "idrid" else "detector/data")


def _train(
    variant: str, results: Path, hp: dict, seed: int, out: Path, data_variant: str
) -> tuple[str, str]:
    folder = out / f"{variant}_seed{seed}"
    model, config = folder / "model.pth", folder / "mmdet_config.py"
    if model.is_file():
        return str(config), str(model)
    data = _data(results, data_variant)
    train_detector(
        hp,
        train_ann=str(data / "coco_train.json"),
        train_images=str(data / "images/train"),
        test_ann=str(data / "coco_test.json"),
        test_images=str(data / "images/test"),
        out_model=str(model),
        out_config=str(config),
        out_metrics=str(folder / "metrics.json"),
        out_curves=str(folder / "training_curves.png"),
        work_dir=str(folder / "work"),
        seed=seed,
        device="cpu",
        threads=2,
        resume_dir=str(folder / "checkpoints"),
    )
    return str(config), str(model)


def _index_quality(results: Path) -> dict:
    quality = json.loads((results / "lesions/quality.json").read_text())
    out = {}
    for split in ("train", "val"):
        q = quality["detector"]["splits"][split]
        out[split] = {
            "precision": q["precision"],
            "window_hit_rate": q["window_hit_rate"],
            "random_window_hit_rate": q["random_window_hit_rate"],
            "boxes": q["boxes"],
            "recall": {k: q["recall"].get(k) for k in KINDS},
        }
    return out


def _markdown(rows: dict, seeds: list[int]) -> str:
    def ms(values: list[float]) -> str:
        a = np.asarray(values, dtype=float)
        return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0:.3f}"

    lines = [
        f"Detector mAP@0.5 on each source's held-out split, mean ± sd over seeds {seeds} "
        "(the demo's recipe, 16 epochs):",
        "",
        "| trained on | train images | epochs | IDRiD test | DDR valid | DDR test |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, row in rows.items():
        cells = [ms(row["map50"][k]) for k in ("idrid/test", "ddr/val", "ddr/test")]
        lines.append(
            f"| {variant} | {row['train_images']} | {row['epochs']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "The lesion index each seed-0 detector builds on the EyePACS-like train split, "
        "against the generator's boxes:",
        "",
        "| trained on | boxes | precision | window hit rate (random windows) | "
        + " | ".join(f"recall {k}" for k in KINDS)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(KINDS),
    ]
    for variant, row in rows.items():
        if row["index"] is None:
            continue
        q = row["index"]["train"]
        lines.append(
            f"| {variant} | {q['boxes']} | {q['precision']:.3f} | {q['window_hit_rate']:.3f} "
            f"({q['random_window_hit_rate']:.3f}) | "
            + " | ".join(f"{q['recall'][k]:.3f}" for k in KINDS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="variant=results folder")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--steps-control", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/experiments/detector_datasets"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(str(args.out / "detector_datasets.log"))
    runs = {k: Path(v) for k, v in (r.split("=", 1) for r in args.run)}
    hp = yaml.safe_load(Path(args.config).read_text())["detector"]
    hp = {k: v for k, v in hp.items() if k not in ("datasets", "qc_images")}
    # every source's held-out splits, from the runs that made them
    idrid = next(r for v, r in runs.items() if v != "ddr")
    ddr = next(r for v, r in runs.items() if v != "idrid")
    sets = [
        ("idrid", "test", str(idrid / "idrid/coco_test.json"), str(idrid / "idrid/images/test")),
        ("ddr", "val", str(ddr / "ddr/coco_val.json"), str(ddr / "ddr/images/val")),
        ("ddr", "test", str(ddr / "ddr/coco_test.json"), str(ddr / "ddr/images/test")),
    ]
    plans = {
        v: (r, hp, [(0, str(r / "detector/mmdet_config.py"), str(r / "detector/model.pth"))])
        for v, r in runs.items()
    }
    if args.steps_control:
        n = {
            v: len(json.loads((_data(r, v) / "coco_train.json").read_text())["images"])
            for v, r in runs.items()
        }
        per_epoch = {v: -(-k // int(hp["batch_size"])) for v, k in n.items()}
        scale = per_epoch["both"] / per_epoch["idrid"]
        steps_hp = {
            **hp,
            "epochs": round(hp["epochs"] * scale),
            "lr_steps": [round(e * scale) for e in hp["lr_steps"]],
        }
        log.info("idrid_steps: %d epochs, lr steps %s", steps_hp["epochs"], steps_hp["lr_steps"])
        plans["idrid_steps"] = (runs["idrid"], steps_hp, [])
    rows = {}
    for variant, (results, variant_hp, models) in plans.items():
        data_variant = "idrid" if variant == "idrid_steps" else variant
        seeds = args.seeds if models else [0, *args.seeds]
        models = models + [
            (s, *_train(variant, results, variant_hp, s, args.out, data_variant)) for s in seeds
        ]
        train = json.loads((_data(results, data_variant) / "coco_train.json").read_text())
        row = {
            "train_images": len(train["images"]),
            "epochs": variant_hp["epochs"],
            "map50": {},
            "per_seed": {},
        }
        for seed, config, model in models:
            cache = args.out / f"{variant}_seed{seed}_eval.json"
            if cache.is_file():
                metrics = json.loads(cache.read_text())
            else:
                metrics = evaluate_sources(config, model, sets, device="cpu")
                write_json(cache, metrics)
            row["per_seed"][seed] = {
                f"{s}/{k}": {
                    "mAP": m["mAP"],
                    "mAP_50": m["mAP_50"],
                    "AP_50": {c: v["AP_50"] for c, v in m["per_class"].items()},
                }
                for s, by in metrics.items()
                for k, m in by.items()
            }
            for key, m in row["per_seed"][seed].items():
                row["map50"].setdefault(key, []).append(m["mAP_50"])
        row["index"] = _index_quality(results) if variant in runs else None
        rows[variant] = row
        log.info("%s: %s", variant, {k: np.round(v, 3).tolist() for k, v in row["map50"].items()})
    seeds = [0, *args.seeds]
    write_json(args.out / "summary.json", {"seeds": seeds, "variants": rows})
    (args.out / "summary.md").write_text(_markdown(rows, seeds))
    print(_markdown(rows, seeds))


if __name__ == "__main__":
    main()
