"""Train the lesion detector with mmengine's Runner, publish it, evaluate it.

:func:`train_detector`:

1. checks the IDRiD COCO files and their images,
2. prepares the backbone initialisation (``imagenet`` / ``path``: the weights are read
   and checked with :func:`lesioncl.backbones.build_resnet` – mmdet's ResNet uses
   torchvision's key names – and saved as a clean torchvision state_dict that the
   config's ``init_cfg=Pretrained`` points at; ``random``: no ``init_cfg``),
3. generates and writes the MMDetection config (``mmdet_config.py``),
4. trains (TensorBoard and JSON scalars under ``work_dir``; evaluation on the test set
   every ``val_interval`` epochs, for the curves only),
5. saves a plain state_dict (tensors only; ``torch.load(weights_only=True)`` reads it),
6. reloads the published config + weights with the inference code used for the
   lesion index and evaluates on the test set with pycocotools (``metrics.json``:
   mAP@[.5:.95], mAP@0.5, mAP@0.75 and per-class AP),
7. draws the training curves and per-class AP@0.5.

Resume after a time limit or preemption: mmengine trains in ``resume_dir`` (not a
Snakemake output, so Snakemake keeps it when it deletes a failed job's outputs) and
saves its full training state there after every epoch. A rerun with the same
hyper-parameters and data (``resume.json`` records them) resumes from the last saved
epoch (``resumed from ...`` in the log), so a limit costs at most the epoch in
progress; with other settings it starts over. Those checkpoints hold pickled objects
(optimizer, schedulers, mmengine's message hub), so ``torch.load`` runs with
``weights_only=False`` for files inside ``resume_dir`` only, in this process only,
while mmengine resumes. After training, the logs and TensorBoard events are copied to
``work_dir``, the checkpoints deleted with ``resume_dir``, and the published model is
the plain state_dict as before (read with ``weights_only=True`` everywhere else).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from lesioncl.backbones import backbone_state_dict, build_resnet
from lesioncl.detector.config import build_mmdet_config, read_coco_classes
from lesioncl.plotting import pyplot, save_png
from lesioncl.utils import atomic_path, resolve_device, seed_everything, write_json

log = logging.getLogger(__name__)


def check_coco_images(ann_file: str | os.PathLike, images_dir: str | os.PathLike) -> dict[str, Any]:
    """Every image of a COCO file exists under ``images_dir``; returns the parsed json."""
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    try:
        coco = json.loads(ann_file.read_text())
        images = coco["images"]
        coco["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{ann_file}: not a COCO detection json ({err}); rerun the idrid rule"
        ) from err
    if not images:
        raise ValueError(f"{ann_file}: no images; check the IDRiD source (idrid.path)")
    missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{ann_file}: {len(missing)} images missing under {images_dir} (first: {missing[:3]}); "
            "rerun the idrid rule"
        )
    return coco


def prepare_backbone_init(hp: Mapping[str, Any], out_path: str | os.PathLike) -> str | None:
    """The torchvision-format backbone file for ``init_cfg`` (None for random init)."""
    init = hp["init"]
    if init == "random":
        return None
    try:  # reads the weights safely and checks them against torchvision's layout
        model = build_resnet(hp["backbone"], init, hp.get("weights"))
    except RuntimeError as err:  # shape mismatch: weights of another architecture
        raise ValueError(
            f"detector.weights {hp.get('weights')}: does not fit a {hp['backbone']} backbone "
            f"({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}); "
            "set detector.backbone to the architecture of the weights"
        ) from err
    with atomic_path(out_path) as tmp:
        torch.save(backbone_state_dict(model), tmp)
    return str(out_path)


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors (no wrappers, no pickled objects)."""
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


RESUME_RECORD = "resume.json"


def _file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def resume_checkpoint(state_dir: Path, record: Mapping[str, Any]) -> Path | None:
    """The checkpoint an interrupted run left in ``state_dir`` for the same ``record``
    (hyper-parameters, seed, data); None to start over (``state_dir`` is then emptied
    and ``record`` written)."""
    saved = state_dir / RESUME_RECORD
    found = None
    if saved.is_file():
        try:
            same = json.loads(saved.read_text()) == json.loads(json.dumps(record))
        except ValueError:
            same = False
        pointer = state_dir / "last_checkpoint"  # written by mmengine after each save
        if not same:
            log.warning(
                "%s: the interrupted run used other settings or data; starting over", state_dir
            )
        elif pointer.is_file():
            named = Path(pointer.read_text().strip())
            for candidate in (named, state_dir / named.name):
                if candidate.is_file():
                    found = candidate
                    break
    if found is not None:
        return found
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    (state_dir / RESUME_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return None


@contextlib.contextmanager
def trust_checkpoints_in(folder: str | os.PathLike) -> Iterator[None]:
    """Let ``torch.load`` unpickle (``weights_only=False``) files inside ``folder`` only:
    mmengine's own resume checkpoints, written by this workflow in its results. Every
    other load keeps torch's safe default; the patch lives only while the block runs."""
    root = Path(folder).resolve()
    original = torch.load

    def load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).resolve().is_relative_to(root):
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def merged_scalars(state_dir: Path) -> list[dict[str, Any]]:
    """mmengine's scalars.json of every (resumed) run in ``state_dir``, in order, a
    logged step of a later run replacing the same step of an earlier one."""
    records: dict[tuple[bool, int], dict[str, Any]] = {}
    for path in sorted(state_dir.glob("*/vis_data/scalars.json")):  # run folders: timestamps
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # the last line of a run killed while writing it
                continue
            records[("coco/bbox_mAP_50" in rec, int(rec["step"]))] = rec
    return [records[k] for k in sorted(records, key=lambda k: (k[0], k[1]))]


def train_detector(
    hp: Mapping[str, Any],
    *,
    train_ann: str,
    train_images: str,
    test_ann: str,
    test_images: str,
    out_model: str,
    out_config: str,
    out_metrics: str,
    out_curves: str,
    work_dir: str,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    resume_dir: str | None = None,
) -> dict[str, Any]:
    """Train, publish and evaluate the detector (see the module docstring).

    ``resume_dir``: where mmengine trains and keeps its resume checkpoints (default:
    ``<work_dir>_checkpoints`` beside ``work_dir``).
    """
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    from lesioncl.detector.compat import apply_patches, check_mmcv_cuda_ops, use_device

    classes = read_coco_classes(train_ann)
    read_coco_classes(test_ann)
    train_coco = check_coco_images(train_ann, train_images)
    check_coco_images(test_ann, test_images)
    device = resolve_device(device)
    torch.set_num_threads(max(1, threads - int(hp["workers"])))  # the rest: loader workers
    apply_patches()
    use_device(device)
    check_mmcv_cuda_ops(device)  # before any training, not at the first RoIAlign
    register_all_modules(init_default_scope=True)
    seed_everything(seed)

    work = Path(work_dir)
    state = Path(resume_dir) if resume_dir else work.with_name(f"{work.name}_checkpoints")
    record = {
        "detector": {k: hp[k] for k in sorted(hp)},
        "seed": seed,
        "train": _file_digest(train_ann),
        "test": _file_digest(test_ann),
    }
    resume_from = resume_checkpoint(state, record)
    backbone_file = prepare_backbone_init(hp, state / "backbone_init.pth")
    cfg = build_mmdet_config(
        hp,
        train_ann=str(train_ann),
        train_images=str(train_images),
        test_ann=str(test_ann),
        test_images=str(test_images),
        work_dir=str(state),
        seed=seed,
        backbone_checkpoint=backbone_file,
        tensorboard_dir=str(state / "tb"),
        classes=classes,
        resume_checkpoints=True,
    )
    with atomic_path(out_config) as tmp:
        tmp.write_text(cfg.pretty_text)  # what Config.dump writes for a .py file
    n_train = len(train_coco["images"])
    iters_per_epoch = -(-n_train // int(hp["batch_size"]))
    log.info(
        "training Faster R-CNN %s-FPN (init %s) on %d images, %d epochs x ~%d iterations, "
        "device %s",
        hp["backbone"],
        hp["init"],
        n_train,
        hp["epochs"],
        iters_per_epoch,
        device,
    )
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, str(resume_from)
        log.info(
            "resumed from %s (%s of %d epochs done)",
            resume_from,
            resume_from.stem.removeprefix("epoch_"),
            int(hp["epochs"]),
        )
    # mmengine keeps visualizers by name for the whole process: a fixed name would hand a
    # second run in one process (a resume, the tests) the first run's, saving into its
    # (maybe deleted) folder. A fresh name per run; the published config keeps the fixed one.
    cfg.visualizer["name"] = f"lesioncl-detector-{os.getpid()}-{time.time_ns()}"
    runner = Runner.from_cfg(cfg)
    # mmengine's logger does not propagate: copy its training lines into our log file too
    shared = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and h not in runner.logger.handlers
    ]
    for handler in shared:
        runner.logger.addHandler(handler)
    start = time.time()
    try:
        with trust_checkpoints_in(state):
            runner.train()
    finally:
        for handler in shared:
            runner.logger.removeHandler(handler)
    train_seconds = time.time() - start
    log.info("training took %.0f s", train_seconds)
    with atomic_path(out_model) as tmp:
        torch.save(plain_state_dict(runner.model), tmp)
    del runner
    # publish the logs of every (resumed) run, not the checkpoints; then drop the state
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        state,
        work,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.pth", "last_checkpoint", RESUME_RECORD),
    )
    scalars = work / "scalars.json"
    scalars.write_text("".join(json.dumps(rec) + "\n" for rec in merged_scalars(state)))
    shutil.rmtree(state)

    metrics = evaluate_detector(
        out_config, out_model, test_ann, test_images, device=device, workers=int(hp["workers"])
    )
    metrics.update(
        train_seconds=round(train_seconds, 1),
        train_images=n_train,
        epochs=int(hp["epochs"]),
        iterations=int(hp["epochs"]) * iters_per_epoch,
        device=device,
        backbone=hp["backbone"],
        init=hp["init"],
    )
    write_json(out_metrics, metrics)
    log.info(
        "test mAP %.4f, mAP@0.5 %.4f; per class AP@0.5 %s",
        metrics["mAP"],
        metrics["mAP_50"],
        {k: v["AP_50"] for k, v in metrics["per_class"].items()},
    )
    plot_training(scalars, metrics, out_curves)
    return metrics


def evaluate_detector(
    config_path: str,
    weights_path: str,
    test_ann: str,
    test_images: str,
    *,
    device: str = "auto",
    batch_size: int = 2,
    workers: int = 0,
) -> dict[str, Any]:
    """COCO bbox evaluation of the published detector on a COCO test set."""
    from lesioncl.detector.inference import LesionDetector

    coco = check_coco_images(test_ann, test_images)
    detector = LesionDetector(config_path, weights_path, device=device)
    paths = [str(Path(test_images) / im["file_name"]) for im in coco["images"]]
    dets = list(detector.predict(paths, batch_size=batch_size, workers=workers, desc="evaluate"))
    return coco_metrics(test_ann, test_images, dets, detector.classes)


def coco_metrics(
    test_ann: str, test_images: str, detections: Iterable, classes: tuple[str, ...]
) -> dict[str, Any]:
    """pycocotools bbox metrics of ``detections`` (:class:`inference.Detections`)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from lesioncl.detector.compat import apply_patches

    apply_patches()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(test_ann))
    by_path = {str(Path(test_images) / im["file_name"]): im["id"] for im in gt.dataset["images"]}
    cat_ids = sorted(gt.getCatIds())
    results = []
    for det in detections:
        image_id = by_path[str(Path(det.path))]
        for (x1, y1, x2, y2), score, label in zip(
            det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()
        ):
            results.append(
                dict(
                    image_id=image_id,
                    category_id=cat_ids[label],
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                    score=float(score),
                )
            )
    gt_counts = {c: len(gt.getAnnIds(catIds=[c])) for c in cat_ids}
    per_class = {
        name: {"AP": 0.0, "AP_50": 0.0, "gt_boxes": gt_counts[c]}
        for name, c in zip(classes, cat_ids)
    }
    metrics: dict[str, Any] = {
        "mAP": 0.0,
        "mAP_50": 0.0,
        "mAP_75": 0.0,
        "per_class": per_class,
        "test_images": len(by_path),
        "detections": len(results),
    }
    if not results:
        log.warning("the detector found nothing on %s: all APs are 0", test_ann)
        return metrics
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.info("pycocotools summary:\n%s", out.getvalue())
    metrics.update(mAP=_ap(ev.stats[0]), mAP_50=_ap(ev.stats[1]), mAP_75=_ap(ev.stats[2]))
    precision = ev.eval["precision"]  # [iou thr, recall, class, area, max dets]
    for k, (name, c) in enumerate(zip(classes, cat_ids)):
        all_iou = precision[:, :, k, 0, -1]
        iou50 = precision[0, :, k, 0, -1]
        # no ground truth of the class in the test set: AP undefined (None)
        per_class[name]["AP"] = _ap(all_iou[all_iou > -1].mean()) if (all_iou > -1).any() else None
        per_class[name]["AP_50"] = _ap(iou50[iou50 > -1].mean()) if (iou50 > -1).any() else None
    return metrics


def _ap(value: float) -> float:
    return round(max(0.0, float(value)), 4)


def plot_training(
    scalars_json: str | os.PathLike, metrics: Mapping[str, Any], out_png: str | os.PathLike
) -> None:
    """Loss curves, test mAP@0.5 during training and the final per-class AP@0.5."""
    plt = pyplot()

    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    path = Path(scalars_json)
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            (val if "coco/bbox_mAP_50" in rec else train).append(rec)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for key in ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    if val:
        ax.plot(
            [r["step"] for r in val], [r["coco/bbox_mAP_50"] for r in val], "o-", label="mAP@0.5"
        )
        ax.plot(
            [r["step"] for r in val], [r["coco/bbox_mAP"] for r in val], "s-", label="mAP@[.5:.95]"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test set (monitoring only)")
    ax = axes[2]
    names = list(metrics["per_class"])
    values = [metrics["per_class"][n]["AP_50"] or 0.0 for n in names]
    ax.bar(names, values, color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"final test: mAP@0.5 {metrics['mAP_50']:.3f}, mAP {metrics['mAP']:.3f}", fontsize=9
    )
    ax.set_ylabel("AP@0.5")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=100)
