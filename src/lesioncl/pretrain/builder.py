"""The contrastive model: a torchvision ResNet backbone and an MLP projection head."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lesioncl.backbones import backbone_state_dict, build_resnet, feature_dim


class ContrastiveModel(nn.Module):
    """ResNet -> pooled feature -> Linear-ReLU-Linear -> L2-normalised embedding.

    With resnet50: 2048 -> 2048 -> 128, the paper's head. The backbone keeps
    torchvision's parameter names, so :meth:`backbone_state_dict` is the released
    weights' format (``resnet50().load_state_dict(sd, strict=False)``).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        init: str = "imagenet",
        weights: str | os.PathLike | None = None,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
    ):
        super().__init__()
        self.backbone = build_resnet(arch, init=init, weights=weights)  # fc = Identity
        dim = feature_dim(arch)
        self.projector = nn.Sequential(
            nn.Linear(dim, proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(proj_hidden, proj_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) views -> (N, proj_dim) unit-norm embeddings (float32)."""
        return self.project(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, feature_dim) pooled backbone features."""
        return self.backbone(x)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) -> (N, proj_dim), L2-normalised in float32 (also under bf16)."""
        return F.normalize(self.projector(h).float(), dim=1)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone as a plain torchvision state_dict without ``fc`` (CPU tensors)."""
        return backbone_state_dict(self.backbone)
