"""ResNet backbones in torchvision's format, and their initialisation.

Every stage that needs a backbone (detector, pretraining, evaluation) builds it
here so that the three initialisations behave the same everywhere:

* ``imagenet`` – torchvision's ImageNet weights, read from ``weights`` when given,
  else from the torch hub cache (``$TORCH_HOME/hub/checkpoints``). Nothing is
  downloaded: offline without the file is a clear error that says where to put it.
* ``random`` – torchvision's default initialisation (seeded by the caller).
* ``path`` – a state_dict file: a plain torchvision ResNet state_dict (``fc`` may be
  missing, as in the authors' released ``resnet50_128_08.pt``), or one of our
  checkpoints holding it under ``"state_dict"`` / ``"backbone"``, with or without a
  ``module.`` / ``backbone.`` / ``encoder.`` prefix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}

# File names of torchvision's ImageNet checkpoints (what torch.hub caches).
IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def feature_dim(arch: str) -> int:
    """Width of the pooled feature of ``arch`` (2048 for resnet50)."""
    _check_arch(arch)
    return FEATURE_DIMS[arch]


def imagenet_weights_path(arch: str, weights: str | os.PathLike | None = None) -> Path:
    """Locate torchvision's ImageNet checkpoint for ``arch`` without downloading it."""
    _check_arch(arch)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights file not found: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[arch]
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        f"ImageNet weights for {arch} are not available offline: expected {cached}. "
        f"Put torchvision's {IMAGENET_FILES[arch]} there once, on a machine with internet access "
        f'and the same TORCH_HOME: python -c "import torchvision.models as m; '
        f"m.{arch}(weights='IMAGENET1K_V1')\" (README, 'Running on real data'); or name the "
        "file in the config's `weights`, or use init: random."
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ResNet state_dict from ``path`` safely (``weights_only=True``).

    Unwraps ``{"state_dict": ...}`` / ``{"backbone": ...}`` / ``{"model": ...}``
    containers and strips DDP/wrapper prefixes; drops ``fc.*`` and projection-head keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state_dict file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusing non-tensor objects, corrupt file, ...
        raise ValueError(
            f"{path}: cannot be read as a plain state_dict with weights_only=True ({err}). "
            "Save the backbone with torch.save(model.state_dict(), path)."
        ) from err
    for key in ("backbone", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state_dict (expected a dict of tensors)")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith(("fc.", "head.", "projector.", "projection.")):
            continue
        cleaned[key] = value
    return cleaned


def build_resnet(
    arch: str, init: str = "random", weights: str | os.PathLike | None = None
) -> nn.Module:
    """A torchvision ResNet with ``fc`` replaced by identity (forward gives pooled features)."""
    _check_arch(arch)
    model = getattr(torchvision.models, arch)(weights=None)
    if init == "imagenet":
        _load_into(
            model, load_state_dict(imagenet_weights_path(arch, weights)), source=f"ImageNet {arch}"
        )
    elif init == "path":
        if not weights:
            raise ValueError("init: path needs `weights` (a state_dict file)")
        _load_into(model, load_state_dict(weights), source=str(weights))
    elif init != "random":
        raise ValueError(f"unknown init {init!r}: use imagenet, random or path")
    model.fc = nn.Identity()
    return model


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights in the authors' release format: torchvision keys, no ``fc``."""
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("fc.")
    }


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: does not match torchvision's {type(model).__name__} layout "
            f"(missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}); "
            "is it the right architecture?"
        )
    log.info("loaded backbone weights from %s", source)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
