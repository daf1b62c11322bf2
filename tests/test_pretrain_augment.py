"""The batched view augmentation against torchvision and against known geometry."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from lesioncl.pretrain.augment import (
    EYEPACS_MEAN,
    EYEPACS_STD,
    AugmentParams,
    ViewAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    denormalize,
)


def _images(n=6, size=12, seed=0):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[0, :, :3] = 0.5  # grey pixels: zero chroma
    x[1, 0] = x[1, 1]  # ties between channels
    return x


@pytest.mark.parametrize(
    "ours, ref, factors",
    [
        (adjust_brightness, TF.adjust_brightness, [0.6, 0.8, 1.0, 1.2, 1.4, 0.7]),
        (adjust_contrast, TF.adjust_contrast, [0.6, 0.8, 1.0, 1.2, 1.4, 0.7]),
        (adjust_saturation, TF.adjust_saturation, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (adjust_hue, TF.adjust_hue, [-0.1, -0.05, 0.0, 0.05, 0.1, 0.5]),
    ],
)
def test_colour_ops_match_torchvision_per_view(ours, ref, factors):
    x = _images()
    f = torch.tensor(factors)
    expected = torch.stack([ref(x[i], float(f[i])) for i in range(len(f))])
    torch.testing.assert_close(ours(x, f), expected, atol=2e-6, rtol=0)


def _identity(n, size):
    return AugmentParams(
        hflip=torch.zeros(n, dtype=torch.bool), vflip=torch.zeros(n, dtype=torch.bool),
        jitter_order=torch.arange(4).repeat(n, 1), jitter=torch.tensor([[1.0, 1.0, 1.0, 0.0]] * n),
        crop=torch.tensor([[0.0, 0.0, size, size]] * n), angle=torch.zeros(n),
        translate=torch.zeros(n, 2), gray=torch.zeros(n, dtype=torch.bool),
    )


def test_geometry_is_exact_for_known_parameters():
    size = 12
    aug = ViewAugment(size)
    x = _images(4, size)
    run = lambda p: denormalize(aug.apply(x.clone(), p))  # noqa: E731
    p = _identity(4, size)
    torch.testing.assert_close(run(p), x, atol=1e-6, rtol=0)
    p = _identity(4, size); p.hflip[:] = True; p.vflip[:] = True  # noqa: E702
    torch.testing.assert_close(run(p), x.flip(-1).flip(-2), atol=1e-6, rtol=0)
    p = _identity(4, size); p.angle[:] = 90  # noqa: E702
    out = run(p)
    assert min((out - torch.rot90(x, k, (-2, -1))).abs().max() for k in (1, -1)) < 1e-5
    p = _identity(4, size); p.translate[:] = torch.tensor([3.0, -2.0])  # noqa: E702
    out = run(p)
    torch.testing.assert_close(out[..., : size - 2, 3:], x[..., 2:, : size - 3], atol=1e-6, rtol=0)
    assert out[..., :3].abs().max() < 1e-6 and out[..., size - 2 :, :].abs().max() < 1e-6  # black fill
    # a resized crop at integer coordinates with the output size is a plain crop
    aug8 = ViewAugment(8)
    p = _identity(4, size); p.crop[:] = torch.tensor([2.0, 3.0, 8.0, 8.0])  # noqa: E702
    torch.testing.assert_close(denormalize(aug8.apply(x.clone(), p)), x[..., 2:10, 3:11], atol=1e-6, rtol=0)
    p = _identity(4, size); p.gray[:2] = True  # noqa: E702
    out = run(p)
    torch.testing.assert_close(out[2:], x[2:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:2], TF.rgb_to_grayscale(x[:2], num_output_channels=3), atol=1e-6, rtol=0)


def test_normalisation_uses_the_eyepacs_statistics():
    aug = ViewAugment(4)
    x = torch.tensor(EYEPACS_MEAN).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    out = aug.apply(x, _identity(1, 4))
    assert out.abs().max() < 1e-5
    x = x + torch.tensor(EYEPACS_STD).view(1, 3, 1, 1)
    assert (aug.apply(x, _identity(1, 4)) - 1).abs().max() < 1e-5


def test_sampled_parameters_follow_the_reference_ranges():
    aug = ViewAugment(32)
    p = aug.sample(4000, (32, 32), torch.Generator().manual_seed(0))
    top, left, h, w = p.crop.unbind(1)
    area = h * w / 32**2
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert area.min() >= 0.75 and (w / h).min() >= 0.75 and (w / h).max() <= 1.3
    assert p.angle.abs().max() <= 180 and p.angle.abs().max() > 170
    assert p.translate.abs().max() <= round(0.2 * 32)
    assert 0.17 < p.gray.float().mean() < 0.23
    assert 0.45 < p.hflip.float().mean() < 0.55 and 0.45 < p.vflip.float().mean() < 0.55
    b, c, s, hue = p.jitter.unbind(1)
    for f in (b, c, s):
        assert 0.6 <= f.min() < 0.62 and 1.38 < f.max() <= 1.4
    assert hue.abs().max() <= 0.1
    orders = {tuple(o) for o in p.jitter_order.tolist()}
    assert len(orders) == 24 and all(sorted(o) == [0, 1, 2, 3] for o in orders)


def test_batches_give_two_distinct_views_of_the_right_shape():
    batch = torch.randint(0, 256, (3, 2, 16, 16, 3), dtype=torch.uint8)
    out = ViewAugment(16)(batch, torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 3, 16, 16) and out.dtype == torch.float32
    whole = torch.randint(0, 256, (3, 1, 40, 40, 3), dtype=torch.uint8)
    out = ViewAugment(16)(whole, torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 3, 16, 16)
    assert not torch.allclose(out[:, 0], out[:, 1])
    with pytest.raises(ValueError, match="uint8"):
        ViewAugment(16)(batch.float())


def test_a_rank_gets_the_same_views_as_in_the_global_batch():
    batch = torch.randint(0, 256, (6, 2, 16, 16, 3), dtype=torch.uint8)
    aug = ViewAugment(16)
    full = aug(batch, torch.Generator().manual_seed(7))
    positions = torch.tensor([1, 3, 5])  # rank 1 of 2
    part = aug(batch[positions], torch.Generator().manual_seed(7), positions=positions, total=6)
    torch.testing.assert_close(part, full[positions])


def test_strength_shrinks_every_range_and_keeps_the_random_stream():
    aug = ViewAugment(32)
    full = aug.sample(4000, (32, 32), torch.Generator().manual_seed(3))
    same = aug.sample(4000, (32, 32), torch.Generator().manual_seed(3), strength=1.0)
    names = ("hflip", "vflip", "jitter_order", "jitter", "crop", "angle", "translate", "gray")
    for name in names:
        torch.testing.assert_close(getattr(same, name), getattr(full, name), rtol=0, atol=0)
    half = aug.sample(4000, (32, 32), torch.Generator().manual_seed(3), strength=0.5)
    torch.testing.assert_close(half.jitter_order, full.jitter_order, rtol=0, atol=0)  # same draws
    b, c, s, hue = half.jitter.unbind(1)
    for f in (b, c, s):
        assert 0.8 <= f.min() < 0.82 and 1.18 < f.max() <= 1.2
    assert 0.04 < hue.abs().max() <= 0.05
    assert 0.07 < half.gray.float().mean() < 0.13 and 0.2 < half.hflip.float().mean() < 0.3
    assert 80 < half.angle.abs().max() <= 90 and half.translate.abs().max() <= round(0.1 * 32)
    area = half.crop[:, 2] * half.crop[:, 3] / 32**2
    assert area.min() >= 0.85 and area.max() <= 1.0
    none = aug.sample(100, (32, 32), torch.Generator().manual_seed(3), strength=0.0)
    assert (none.jitter[:, :3] == 1).all() and (none.jitter[:, 3] == 0).all()
    assert not (none.gray.any() or none.hflip.any() or none.vflip.any())
    assert (none.angle == 0).all() and (none.translate == 0).all()
    assert (none.crop == torch.tensor([0.0, 0.0, 32.0, 32.0])).all()
    with pytest.raises(ValueError, match="strength"):
        aug.sample(4, (32, 32), strength=1.5)


def test_views_at_strength_zero_are_the_inputs():
    batch = torch.randint(0, 256, (4, 2, 16, 16, 3), dtype=torch.uint8)
    out = denormalize(ViewAugment(16)(batch, torch.Generator().manual_seed(0), strength=0.0).flatten(0, 1))
    expected = batch.permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 255
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-3)
