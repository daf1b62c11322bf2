"""SupCon loss (Khosla et al., 2020); without labels it is SimCLR's NT-Xent.

Also :func:`gather_with_grad`, the all-gather used to compute the loss over the
global batch under DDP with gradients equal to a single-process run's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class SupConLoss(nn.Module):
    """Supervised contrastive loss over N samples x V views.

    ``forward(features, labels=None, anchors=None)``:

    * ``features``: (N, V, D) L2-normalised embeddings; V >= 2 without labels.
    * ``labels``: (N,) class of each sample; ``None`` = every sample its own class, i.e.
      the positives of a view are the other views of the same sample (SimCLR mode,
      NT-Xent over the N·V views).
    * ``anchors``: the samples whose views are anchors (a slice or index tensor);
      default all. Every view is always in the contrast set. Under DDP each rank takes
      its own samples as anchors against the gathered global batch; the mean of the
      ranks' losses is then the global loss.

    For an anchor view i with positives P(i) and all other views A(i):
    ``loss_i = -(T / T_base) / |P(i)| * sum_{p in P(i)} log(exp(z_i.z_p / T) /
    sum_{a in A(i)} exp(z_i.z_a / T))``, averaged over the anchor views.
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float | None = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.base_temperature = float(
            base_temperature if base_temperature is not None else temperature
        )

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        anchors: slice | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features.ndim != 3:
            raise ValueError(f"features must be (N, V, D), got {tuple(features.shape)}")
        n, v, d = features.shape
        if labels is None and v < 2:
            raise ValueError("SimCLR mode (no labels) needs at least two views per sample")
        device = features.device
        features = features.float()
        labels = torch.arange(n, device=device) if labels is None else labels.to(device).view(-1)
        anchor_ids = torch.arange(n, device=device)
        if anchors is not None:
            anchor_ids = anchor_ids[anchors]
        a = anchor_ids.numel()

        contrast = features.transpose(0, 1).reshape(v * n, d)  # view-major: row v*n + i
        anchor = features[anchor_ids].transpose(0, 1).reshape(v * a, d)  # row v*a + k
        logits = anchor @ contrast.T / self.temperature  # (V·A, V·N)

        self_col = (torch.arange(v, device=device).view(v, 1) * n + anchor_ids.view(1, a)).flatten()
        not_self = torch.ones_like(logits, dtype=torch.bool)
        not_self[torch.arange(v * a, device=device), self_col] = False
        positive = (
            labels[anchor_ids].repeat(v).view(-1, 1) == labels.repeat(v).view(1, -1)
        ) & not_self

        logits = logits.masked_fill(~not_self, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        log_prob = log_prob.masked_fill(~not_self, 0.0)  # -inf * 0 would be nan
        n_pos = positive.sum(dim=1)
        if (n_pos == 0).any():
            raise ValueError(
                "an anchor has no positive; every class needs two views or two samples"
            )
        mean_log_prob_pos = (log_prob * positive).sum(dim=1) / n_pos
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()

    def global_loss(self, features: torch.Tensor) -> torch.Tensor:
        """Loss of this rank's samples against the views of all ranks (SimCLR mode).

        ``features``: this rank's (n, V, D), the same n on every rank. The gathered
        (W·n, V, D) batch is the contrast set, this rank's block the anchors. With DDP
        averaging the parameter gradients, the update equals that of the loss over the
        global batch in one process. Without a process group it is ``forward(features)``.
        """
        gathered = gather_with_grad(features)
        if gathered is features:
            return self(features)
        rank, n = dist.get_rank(), features.shape[0]
        return self(gathered, anchors=slice(rank * n, (rank + 1) * n))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient back to the tensor's owner.

    Backward: the incoming gradient (w.r.t. the gathered tensor, from this rank's loss)
    is summed over ranks with all_reduce, and each rank keeps its own rows, i.e. the
    gradient of the sum of all ranks' losses. DDP then averages the parameter
    gradients, which gives exactly the gradient of the mean of the ranks' losses = the
    single-process global loss. (all_reduce instead of reduce_scatter so that gloo on
    CPU works too; the embeddings are small.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks in rank order, with gradients.

    Without an initialised process group (or with one rank) it returns ``x``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
