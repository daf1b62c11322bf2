"""Narrow run-time fixes for MMDetection 3.3 / mmengine 0.10.7 on current torch, and
the check that mmcv has CUDA ops before the detector runs on a GPU.

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


def mmcv_cuda_ops_version() -> str:
    """The CUDA version mmcv's compiled ops were built with ('not available': CPU ops only)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError as exc:  # mmcv without its compiled ops at all
        return f"not available (mmcv.ops does not import: {exc})"
    try:
        return str(get_compiling_cuda_version())
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable CUDA ops
        return f"not available ({exc})"


def check_mmcv_cuda_ops(device: str, ops_version: str | None = None) -> None:
    """Stop before training/inference on a GPU when mmcv was built without CUDA ops.

    Faster R-CNN's RoIAlign and NMS run in mmcv's compiled ops; a CPU-only build
    fails only when the first batch reaches them on the GPU. ``ops_version``: what
    :func:`mmcv_cuda_ops_version` returns (tests pass it).
    """
    if not str(device).startswith("cuda"):
        return
    version = mmcv_cuda_ops_version() if ops_version is None else ops_version
    if version and not version.startswith("not available"):
        log.info("mmcv CUDA ops built with CUDA %s", version)
        return
    try:
        import torch

        torch_cuda = torch.version.cuda
    except ImportError:  # pragma: no cover - the detector needs torch anyway
        torch_cuda = None
    raise RuntimeError(
        f"the detector runs on {device} but mmcv was built without its CUDA ops "
        f"(mmcv.ops.get_compiling_cuda_version(): {version}), so RoIAlign/NMS would fail "
        "on the first batch. Rebuild it in this environment on a machine with nvcc "
        f'matching torch\'s CUDA {torch_cuda}: FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" '
        "bash envs/torch.post-deploy.sh (with --use-conda: add cuda-nvcc and "
        "cuda-cudart-dev to envs/torch.yaml and recreate the env; the build caches a "
        "'-cuda' wheel under ${XDG_CACHE_HOME:-~/.cache}/lesioncl/wheels). Or run the "
        "detector on the CPU with device: cpu."
    )
