"""Batched inference with the trained lesion detector.

:class:`LesionDetector` builds the model from the generated ``mmdet_config.py`` and
loads the plain state_dict with ``torch.load(weights_only=True)`` (no pickled objects
are trusted). :meth:`LesionDetector.predict` runs real batches: a DataLoader applies
the config's test pipeline in worker processes, and ``model.test_step`` predicts a
whole batch at once; boxes come back in the coordinates of the image file read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from lesioncl.utils import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Detections:
    """Detections of one image, in the pixel coordinates of the file read."""

    path: str
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,)
    labels: np.ndarray  # (n,) 0-based class index


def load_plain_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A detector state_dict saved by :func:`lesioncl.detector.train.train_detector`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path}; run the detector_train rule")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({err}); it must be the "
            "plain state_dict written by detector_train (rerun that rule)"
        ) from err
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(
            f"{path}: not a plain state_dict (a dict of tensors); rerun detector_train"
        )
    return state


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str], pipeline) -> None:
        self.paths = list(paths)
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        data = self.pipeline(dict(img_path=self.paths[i], img_id=i))
        if data is None:
            raise ValueError(f"{self.paths[i]}: the test pipeline could not read this image")
        return data


class LesionDetector:
    """The trained detector, ready for batched inference."""

    def __init__(
        self, config_path: str | os.PathLike, weights_path: str | os.PathLike, device: str = "auto"
    ) -> None:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config

        from lesioncl.detector.compat import apply_patches, check_mmcv_cuda_ops

        apply_patches()
        register_all_modules(init_default_scope=True)
        config_path = Path(config_path)
        if not config_path.is_file():
            raise FileNotFoundError(
                f"detector config not found: {config_path}; run the detector_train rule"
            )
        self.cfg = Config.fromfile(str(config_path))
        self.device = resolve_device(device)
        check_mmcv_cuda_ops(self.device)
        model_cfg = self.cfg.model.copy()
        model_cfg.backbone.init_cfg = None  # all weights come from the state_dict
        model = MODELS.build(model_cfg)
        state = load_plain_state_dict(weights_path)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights_path}: does not match the model of {config_path} (missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); retrain the "
                "detector"
            )
        self.classes = tuple(self.cfg.metainfo["classes"])
        model.dataset_meta = {"classes": self.classes}
        self.model = model.to(self.device).eval()
        log.info(
            "detector %s (%d classes) loaded from %s on %s",
            type(model).__name__,
            len(self.classes),
            weights_path,
            self.device,
        )

    def pipeline(self):
        from mmengine.dataset import Compose

        steps = [dict(s) for s in self.cfg.test_pipeline if s["type"] != "LoadAnnotations"]
        return Compose(steps)

    @torch.no_grad()
    def predict(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        batch_size: int = 8,
        workers: int = 0,
        desc: str = "detect",
    ) -> Iterator[Detections]:
        """Detections for every image in ``paths`` (in order), ``batch_size`` at a time."""
        from mmengine.dataset import pseudo_collate

        from lesioncl.progress import progress

        paths = [str(p) for p in paths]
        loader = torch.utils.data.DataLoader(
            _ImageDataset(paths, self.pipeline()),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=pseudo_collate,
        )
        with progress(total=len(paths), desc=desc, unit="img") as bar:
            for batch in loader:
                for sample in self.model.test_step(batch):
                    pred = sample.pred_instances
                    h, w = sample.metainfo["ori_shape"][:2]
                    yield Detections(
                        path=sample.metainfo["img_path"],
                        width=int(w),
                        height=int(h),
                        boxes=pred.bboxes.detach().cpu().numpy().astype(np.float32).reshape(-1, 4),
                        scores=pred.scores.detach().cpu().numpy().astype(np.float32),
                        labels=pred.labels.detach().cpu().numpy().astype(np.int64),
                    )
                    bar.update(1)
