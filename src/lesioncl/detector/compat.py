"""Narrow run-time fixes for MMDetection 3.3 / mmengine 0.10.7 on current torch.

Each fix is applied by :func:`apply_patches` (idempotent) in our process only; nothing
in site-packages is edited.

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
    _APPLIED = True


def use_device(device: str) -> None:
    """Make mmengine place models and data on ``device`` ('cpu' or 'cuda')."""
    import mmengine.device.utils as dev

    if device not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} for the detector: use cpu or cuda")
    if dev.DEVICE != device:
        log.info("mmengine device: %s (was %s)", device, dev.DEVICE)
        dev.DEVICE = device
