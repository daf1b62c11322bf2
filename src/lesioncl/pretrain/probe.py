"""A weighted kNN probe of the backbone on the DR grades, run while pretraining trains.

The contrastive loss says whether views are matched, not whether the features grade
retinopathy. The probe does, cheaply and without training anything: the pooled
backbone features of labelled training crops are the memory bank, each validation
crop is graded by a similarity-weighted vote of its ``k`` nearest neighbours (cosine
similarity, weights ``exp(sim / T)``, the vote of Wu et al. 2018 used by solo-learn's
online kNN), and the quadratic kappa of those grades against the validation grades is
recorded per validated epoch (``history.csv`` column ``knn_kappa``, TensorBoard
``epoch/knn_kappa``, the log line, the report's pretraining curve). A plateau shows
there long before the evaluation stage runs.

Inputs are the crop caches (uint8 memmaps, :mod:`.cache`) at the evaluation's input
size, normalised as in :mod:`lesioncl.evaluation.features`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesioncl.crop.cache import csv_path_of
from lesioncl.evaluation.features import autocast, load_crop_cache, normalize, to_float
from lesioncl.evaluation.metrics import N_LEVELS, quadratic_kappa


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Grades of ``queries`` (Q, D): a weighted vote of their ``k`` nearest rows of ``bank`` (B, D).

    Rows are L2-normalised here; ``bank_labels`` (B,) are grades 0-4. Returns (Q,) int64.
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank (B, D) and queries (Q, D) expected, got {tuple(bank.shape)}, "
            f"{tuple(queries.shape)}"
        )
    if len(bank) == 0:
        raise ValueError("kNN probe: the memory bank is empty")
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    k = min(int(k), len(bank))
    sim, idx = (queries @ bank.T).topk(k, dim=1)  # (Q, k)
    weights = (sim / temperature).exp()
    votes = torch.zeros(len(queries), N_LEVELS, dtype=weights.dtype)
    votes.scatter_add_(1, bank_labels[idx], weights)
    return votes.argmax(1)


class KNNProbe:
    """kNN grading of the validation crops by the training crops' features.

    ``max_train`` caps the memory bank (a fixed, evenly spaced subset of the training
    cache, so every probe uses the same images); ``size`` is the input side the
    backbone sees (the evaluation's ``input_size``).
    """

    def __init__(
        self,
        train_cache: str | os.PathLike,
        val_cache: str | os.PathLike,
        size: int = 256,
        k: int = 20,
        temperature: float = 0.07,
        max_train: int = 5000,
        batch_size: int = 64,
    ):
        # read as the evaluation stage reads them (levels checked to be grades 0-4)
        self.train_images, train_rows = load_crop_cache(train_cache, csv_path_of(train_cache))
        self.val_images, val_rows = load_crop_cache(val_cache, csv_path_of(val_cache))
        n = len(self.train_images)
        self.train_rows = np.unique(
            np.linspace(0, n - 1, min(n, int(max_train))).round().astype(np.int64)
        )
        self.train_levels = torch.from_numpy(
            train_rows["level"].to_numpy()[self.train_rows].astype(np.int64)
        )
        self.val_levels = val_rows["level"].to_numpy().astype(np.int64)
        self.size, self.k, self.temperature, self.batch_size = (
            int(size),
            int(k),
            float(temperature),
            int(batch_size),
        )
        if len(self.train_rows) == 0 or len(self.val_levels) == 0:
            raise ValueError(
                f"kNN probe needs labelled train and val crops ({train_cache}, {val_cache})"
            )

    @torch.no_grad()
    def features(
        self,
        backbone: nn.Module,
        images: np.ndarray,
        rows: np.ndarray,
        device: torch.device,
        amp: bool = False,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """Pooled features (N, D) of ``images[rows]`` on the CPU (float32)."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = torch.from_numpy(
                np.ascontiguousarray(images[rows[start : start + self.batch_size]])
            )
            x = normalize(to_float(batch.to(device), self.size), channels_last)
            with autocast(str(device), amp):
                out.append(backbone(x).float().cpu())
        return torch.cat(out)

    def __call__(
        self,
        backbone: nn.Module,
        device: torch.device,
        amp: bool = False,
        channels_last: bool = False,
    ) -> dict[str, float]:
        """Run the probe with ``backbone`` in eval mode (mode restored); kappa and accuracy."""
        was_training = backbone.training
        backbone.eval()
        try:
            bank = self.features(
                backbone, self.train_images, self.train_rows, device, amp, channels_last
            )
            val_rows = np.arange(len(self.val_levels))
            queries = self.features(backbone, self.val_images, val_rows, device, amp, channels_last)
        finally:
            backbone.train(was_training)
        pred = knn_predict(bank, self.train_levels, queries, self.k, self.temperature).numpy()
        kappa = quadratic_kappa(self.val_levels, pred)
        return {"knn_kappa": float(kappa), "knn_accuracy": float(np.mean(pred == self.val_levels))}
