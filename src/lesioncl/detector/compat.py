"""Narrow run-time fixes for MMDetection 3.3 / mmengine 0.10.7 on current torch.

Each fix is applied by :func:`apply_patches` (idempotent) in our process only; nothing
in site-packages is edited.

* ``pycocotools.coco.COCO.loadRes`` (pycocotools 2.0.10) copies ``dataset['info']``
  and fails with ``KeyError: 'info'`` on COCO files without that optional key (which
  mmdet's ``CocoMetric`` and our evaluation both pass to it). The wrapper adds an
  empty ``info`` first; results are unchanged.
* :func:`use_device` – mmengine moves the model to ``mmengine.device.get_device()``,
  which is CUDA whenever a GPU exists. ``device: cpu`` in the config must win, so the
  module-level ``DEVICE`` that ``get_device`` returns is set explicitly.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_APPLIED = False


def apply_patches() -> None:
    """Apply the fixes below once per process."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_coco_load_res()
    _APPLIED = True


def _patch_coco_load_res() -> None:
    from pycocotools.coco import COCO

    original = COCO.loadRes
    if getattr(original, "_lesioncl_patched", False):
        return

    def load_res(self, res_file):
        self.dataset.setdefault("info", {})
        return original(self, res_file)

    load_res._lesioncl_patched = True
    load_res.__doc__ = original.__doc__
    COCO.loadRes = load_res


def use_device(device: str) -> None:
    """Make mmengine place models and data on ``device`` ('cpu' or 'cuda')."""
    import mmengine.device.utils as dev

    if device not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} for the detector: use cpu or cuda")
    if dev.DEVICE != device:
        log.info("mmengine device: %s (was %s)", device, dev.DEVICE)
        dev.DEVICE = device
