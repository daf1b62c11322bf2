"""Hyper-parameters of a training run in its TensorBoard log (the HPARAMS view).

Each pretraining run (``results/pretrain/{method}/tb``) and each fine-tuning run
(``results/eval/tb/finetune/...``) is one TensorBoard run. :func:`write_hparams` attaches
the run's hyper-parameters to it and declares the scalar tags that serve as its metrics,
so ``tensorboard --logdir results`` lists the runs side by side in the HPARAMS tab,
one row per run, with the last value of each metric. Unlike
``SummaryWriter.add_hparams`` it writes into the run's own event file (no extra
sub-run per call), so a resumed run keeps one row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Scalar tags written by the trainers that TensorBoard shows as each run's metrics.
PRETRAIN_METRICS = ("epoch/train_loss", "epoch/val_loss", "epoch/knn_kappa", "epoch/pairs_per_s")
FINETUNE_METRICS = ("finetune/val_kappa", "finetune/val_loss", "finetune/train_loss")


def plain_value(value: Any) -> bool | int | float | str:
    """A value TensorBoard's hparams accept: bool, int, float, str (others as text)."""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def write_hparams(writer, hparams: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """Attach ``hparams`` to ``writer``'s run; declare ``metrics`` (scalar tags) its metrics."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {str(k): plain_value(v) for k, v in hparams.items()}
    experiment, session_start, session_end = hparams_summary(values, {tag: 0.0 for tag in metrics})
    file_writer = writer._get_file_writer()
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary)
    writer.flush()
    return values


def pretrain_hparams(cfg, *, global_batch: int, world_size: int) -> dict[str, Any]:
    """What decides a pretraining run (a :class:`lesioncl.pretrain.config.PretrainConfig`)."""
    values = cfg.computed_settings()
    values.update(global_batch=global_batch, gpus=world_size)
    return values


def finetune_hparams(
    settings, *, method: str, fraction: float, seed: int, arch: str, n_train: int
) -> dict[str, Any]:
    """What decides a fine-tuning run (method, label fraction, seed and the FinetuneSettings)."""
    values = {
        "method": method,
        "fraction": float(fraction),
        "seed": int(seed),
        "arch": arch,
        "n_train": int(n_train),
    }
    for key, value in dataclasses.asdict(settings).items():
        if isinstance(value, Mapping):  # nested settings (augmentation): flattened
            values.update({f"{key}.{k}": v for k, v in value.items()})
        elif key not in ("workers",):
            values[key] = value
    return values
