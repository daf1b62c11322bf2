"""One job of rule eval_finetune: the caches and the label fraction read, the run
fingerprinted, fine-tuned, scored on val and test, and its result JSON and history.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesioncl.backbones import feature_dim
from lesioncl.checkpoint import fingerprint as make_fingerprint
from lesioncl.evaluation.features import (
    MethodUnavailable,
    build_method_backbone,
    load_crop_cache,
)
from lesioncl.evaluation.finetune import (
    FinetuneSettings,
    Grader,
    finetune,
    grade_scores,
    write_history,
)
from lesioncl.evaluation.fractions import read_fractions
from lesioncl.evaluation.linear import clear_event_files, skipped_result
from lesioncl.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    N_LEVELS,
    classification_metrics,
    predict_thresholds,
    tune_thresholds,
)
from lesioncl.utils import atomic_path, write_json

log = logging.getLogger("lesioncl.evaluation.finetune")


def _rows_of(cache_rows, wanted, cache_csv) -> np.ndarray:
    index = {name: i for i, name in enumerate(cache_rows["image"].astype(str))}
    missing = [im for im in wanted if im not in index]
    if missing:
        raise ValueError(
            f"{cache_csv}: {len(missing)} images of the label fraction are not in the cache "
            f"(e.g. {missing[:3]}); rerun the fractions and crop_cache rules"
        )
    return np.array([index[im] for im in wanted], dtype=np.int64)


def run_finetune(
    *,
    method: str,
    fraction: float,
    seed: int,
    arch: str,
    weights: str | os.PathLike | None,
    imagenet_weights: str | os.PathLike | None,
    cache: dict,
    fractions_csv: str | os.PathLike,
    output: str | os.PathLike,
    history_csv: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    tensorboard_dir: str | os.PathLike | None,
    settings: FinetuneSettings,
    device: str = "cpu",
    threads: int = 1,
    model_output: str | os.PathLike | None = None,
) -> dict:
    """One fine-tuning run (method x fraction x seed) -> metrics JSON and history CSV.

    ``cache`` maps ``train``/``val``/``test`` to ``(npy, csv)`` paths of the image cache.
    ``model_output``: where to keep the fine-tuned grader (its best epoch, with the
    thresholds it grades with; :func:`save_grader`), named in the result as ``model``;
    the rule keeps it for the largest label fraction, which external validation grades
    other sets with (:func:`run_finetune_transfer`).
    """
    torch.set_num_threads(max(1, int(threads)))
    try:
        backbone = build_method_backbone(method, arch, weights, seed, imagenet_weights)
    except MethodUnavailable as err:
        log.warning("method %s skipped: %s", method, err)
        result = skipped_result(method, "finetune", fraction, seed, str(err))
        write_history(history_csv, [])
        write_json(output, result)
        return result
    model = Grader(backbone, feature_dim(arch))
    torch.manual_seed(seed)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)

    train_all, train_rows = load_crop_cache(*cache["train"])
    val_images, val_rows = load_crop_cache(*cache["val"])
    test_images, test_rows = load_crop_cache(*cache["test"])
    frac = read_fractions(fractions_csv, fraction)
    idx = _rows_of(train_rows, frac["image"].tolist(), cache["train"][1])
    train_levels = frac["level"].to_numpy()
    if not np.array_equal(train_rows["level"].to_numpy()[idx], train_levels):
        raise ValueError(
            f"{fractions_csv}: levels differ from {cache['train'][1]}; rerun the fractions rule"
        )
    log.info(
        "fine-tune %s, fraction %g, seed %d: %d labelled images (per level %s), %d val, %d test; "
        "%s at %dpx on %s",
        method,
        fraction,
        seed,
        len(train_levels),
        np.bincount(train_levels, minlength=N_LEVELS).tolist(),
        len(val_rows),
        len(test_rows),
        arch,
        settings.input_size,
        device,
    )
    fingerprint = make_fingerprint(
        {
            "method": method,
            "fraction": fraction,
            "seed": seed,
            "arch": arch,
            "settings": asdict(settings),
            "device": device,
        },
        files=[weights, fractions_csv, cache["train"][0], cache["val"][0]],
    )
    writer = None
    if tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        if not (checkpoint and Path(checkpoint).is_file()):
            clear_event_files(tensorboard_dir)  # a fresh run; a resumed one continues its curves
        writer = SummaryWriter(str(tensorboard_dir))
        # the run's hyper-parameters, for TensorBoard's HPARAMS view (runs side by side)
        from lesioncl.hparams import FINETUNE_METRICS, finetune_hparams, write_hparams

        write_hparams(
            writer,
            finetune_hparams(
                settings,
                method=method,
                fraction=fraction,
                seed=seed,
                arch=arch,
                n_train=len(train_levels),
            ),
            FINETUNE_METRICS,
        )
    try:
        fit = finetune(
            model,
            train_all,
            train_levels,
            val_images,
            val_rows["level"].to_numpy(),
            settings,
            train_indices=idx,
            seed=seed,
            device=device,
            checkpoint=checkpoint,
            fingerprint=fingerprint,
            writer=writer,
        )
    finally:
        if writer is not None:
            writer.close()

    s = settings
    y_val = val_rows["level"].to_numpy()
    y_test = test_rows["level"].to_numpy()
    val_scores = grade_scores(model, val_images, s, device, desc="val (best epoch)")
    test_scores = grade_scores(model, test_images, s, device, desc="test (best epoch)")
    result = {
        "method": method,
        "evaluation": "finetune",
        "fraction": float(fraction),
        "seed": int(seed),
        "skipped": False,
        "n_train": int(len(train_levels)),
        "n_train_per_level": np.bincount(train_levels, minlength=N_LEVELS).tolist(),
        "train_steps": int(fit["steps"]),
        "head": "regression-mse",
        "settings": asdict(s),
        "selected": {"epoch": fit["best_epoch"]},
        "thresholds": list(DEFAULT_THRESHOLDS),
        # the regression score is the severity: the referable-DR AUROC ranks it
        "val": classification_metrics(y_val, predict_thresholds(val_scores), val_scores),
        "test": classification_metrics(y_test, predict_thresholds(test_scores), test_scores),
    }
    if s.tune_thresholds:
        tuned, _ = tune_thresholds(val_scores, y_val)
        result["thresholds_tuned"] = tuned.tolist()
        result["val_tuned"] = classification_metrics(y_val, predict_thresholds(val_scores, tuned))
        result["test_tuned"] = classification_metrics(
            y_test, predict_thresholds(test_scores, tuned)
        )
    if model_output:
        thresholds = result.get("thresholds_tuned", result["thresholds"])
        save_grader(
            model_output,
            model,
            arch=arch,
            thresholds=thresholds,
            method=method,
            fraction=float(fraction),
            seed=int(seed),
        )
        result["model"] = Path(model_output).name
    write_history(history_csv, fit["history"])
    write_json(output, result)
    if checkpoint and Path(checkpoint).is_file():
        Path(checkpoint).unlink()
    log.info(
        "fine-tune %s frac %g seed %d: best epoch %d, val kappa %s, test kappa %s",
        method,
        fraction,
        seed,
        fit["best_epoch"],
        result["val"]["kappa"],
        result["test"]["kappa"],
    )
    return result


# --------------------------------------------------------------------------- the grader kept
def save_grader(
    path: str | os.PathLike,
    model: Grader,
    *,
    arch: str,
    thresholds,
    method: str,
    fraction: float,
    seed: int,
) -> None:
    """Keep a fine-tuned grader: a plain dict of its state_dict (backbone.*, head.*), its
    architecture and the thresholds that turn its score into a grade (loads with
    ``torch.load(weights_only=True)``). Written read-only: it costs a fine-tuning run."""
    model = getattr(model, "_orig_mod", model)
    record = {
        "arch": arch,
        "thresholds": [float(t) for t in thresholds],
        "method": method,
        "fraction": float(fraction),
        "seed": int(seed),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    os.chmod(path, 0o444)


def load_grader(path: str | os.PathLike) -> tuple[Grader, dict]:
    """The grader :func:`save_grader` kept, and its record (without the weights)."""
    from lesioncl.backbones import build_resnet

    record = torch.load(path, map_location="cpu", weights_only=True)
    backbone = build_resnet(record["arch"], "random")  # fc: identity
    model = Grader(backbone, feature_dim(record["arch"]))
    model.load_state_dict(record.pop("state_dict"))
    return model.eval(), record


def run_finetune_transfer(
    *,
    method: str,
    seed: int,
    source_result: str | os.PathLike,
    test_cache: tuple[str | os.PathLike, str | os.PathLike],
    output: str | os.PathLike,
    device: str = "cpu",
    threads: int = 1,
) -> dict:
    """External validation of fine-tuning: the grader fine-tuned on EyePACS
    (``source_result``, the run at the largest label fraction, which kept it) grades
    another set's test images (``test_cache``: npy, csv) as it is, with its own
    thresholds and no training on that set -> metrics JSON (``transfer_finetune``)."""
    torch.set_num_threads(max(1, int(threads)))
    source = json.loads(Path(source_result).read_text())
    fraction = float(source.get("fraction", 1.0))
    if source.get("skipped"):
        result = skipped_result(
            method, "transfer_finetune", fraction, seed, source.get("skip_reason", "skipped")
        )
        write_json(output, result)
        return result
    if "model" not in source:
        raise ValueError(
            f"{source_result}: this fine-tuning run kept no model (it was made by an earlier "
            "version). Fix: move the result away (it is write-protected) and rerun it, or "
            "set external.transfer: false"
        )
    model_path = Path(source_result).with_name(source["model"])
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path}: the fine-tuned model {source_result} names is missing. Fix: move "
            "the result away (it is write-protected) and rerun its fine-tuning"
        )
    model, record = load_grader(model_path)
    settings = FinetuneSettings(**{**source["settings"], "workers": 0})
    images, rows = load_crop_cache(*test_cache)
    scores = grade_scores(model.to(device), images, settings, device, desc="transfer test")
    levels = rows["level"].to_numpy()
    thresholds = np.asarray(record["thresholds"], dtype=np.float64)
    result = {
        "method": method,
        "evaluation": "transfer_finetune",
        "fraction": fraction,
        "seed": int(seed),
        "skipped": False,
        "source": str(source_result),
        "thresholds": record["thresholds"],
        "test": classification_metrics(levels, predict_thresholds(scores, thresholds), scores),
    }
    write_json(output, result)
    log.info(
        "transfer of the fine-tuned %s seed %d (%s): test kappa %.4f, AUROC %s",
        method,
        seed,
        model_path.name,
        result["test"]["kappa"],
        result["test"].get("referable_auroc"),
    )
    return result
