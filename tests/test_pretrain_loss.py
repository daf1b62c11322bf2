"""SupConLoss against the NT-Xent formula written out directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lesioncl.pretrain.loss import SupConLoss, gather_with_grad


def nt_xent_direct(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR's loss, one anchor at a time: -log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))."""
    z = torch.cat([z1, z2]).double()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / t) / denom)
    return total / (2 * n)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_matches_direct_formula(temperature):
    z1, z2 = unit(6, 8, seed=1), unit(6, 8, seed=2)
    ours = SupConLoss(temperature)(torch.stack([z1, z2], dim=1))
    assert ours.item() == pytest.approx(nt_xent_direct(z1, z2, temperature), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_identical_views_of_orthogonal_samples_have_the_closed_form_value(temperature):
    n = 4
    z = torch.eye(8)[:n]  # orthonormal samples, both views identical
    loss = SupConLoss(temperature)(torch.stack([z, z], dim=1)).item()
    # the positive has similarity 1, the 2n - 2 other views 0
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / temperature))
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_identical_views_beat_random_pairs():
    z = unit(16, 32, seed=3)
    loss = SupConLoss(0.07)
    same = loss(torch.stack([z, z], dim=1)).item()
    random_pairs = loss(torch.stack([z, unit(16, 32, seed=4)], dim=1)).item()
    assert same < random_pairs
    # random pairs at T=1 are near chance: log(2N - 1)
    chance = SupConLoss(1.0)(torch.stack([z, unit(16, 32, seed=4)], dim=1)).item()
    assert abs(chance - math.log(31)) < 0.3


def test_anchor_subsets_average_to_the_full_loss_and_gradient():
    feats = unit(8, 2, 16, seed=5).requires_grad_(True)
    loss = SupConLoss(0.1)
    full = loss(feats)
    (g_full,) = torch.autograd.grad(full, feats)
    halves = [loss(feats, anchors=slice(0, 4)), loss(feats, anchors=slice(4, 8))]
    mean = (halves[0] + halves[1]) / 2
    (g_halves,) = torch.autograd.grad(mean, feats)
    assert mean.item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(g_halves, g_full)


def test_supervised_mode_uses_labels_as_positives():
    feats = unit(4, 2, 8, seed=6)
    simclr = SupConLoss(0.2)(feats)
    distinct = SupConLoss(0.2)(feats, labels=torch.arange(4))
    assert distinct.item() == pytest.approx(simclr.item(), rel=1e-6)
    grouped = SupConLoss(0.2)(feats, labels=torch.tensor([0, 0, 1, 1]))
    assert grouped.item() != pytest.approx(simclr.item(), rel=1e-3)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="two views"):
        SupConLoss()(unit(4, 1, 8))
    with pytest.raises(ValueError, match=r"\(N, V, D\)"):
        SupConLoss()(unit(4, 8))
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(0.0)


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(3, 2, 4)
    assert gather_with_grad(x) is x
