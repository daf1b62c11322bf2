"""Drawing one synthetic fundus photograph: field of view, anatomy, lesions, camera.

Everything is drawn at the image's own resolution with sizes expressed relative to
a 512 px wide field of view (``Geometry.scale``), so a lesion has the same size
relative to the eye in a 360 px and in a 2848 px image.

The look of an image (size, aspect, field-of-view cut, colour, illumination, haze,
vessels, disc, macula, noise) comes from one random stream and the lesions from
another, and the look's stream never sees the grade: only the lesions carry it.

The parts: :mod:`.geometry` (the field of view, :class:`Lesion`, :class:`Rendered`),
:mod:`.shapes` (lesion shapes and their placement) and :mod:`.anatomy` (vessels, disc,
macula, noise); this module composes the photograph.
"""

from __future__ import annotations

import math

import numpy as np

# Darkening of the red lesions and vessels, per RGB channel (pixel *= 1 - alpha * k).
from lesioncl.synthetic.anatomy import (
    _draw_vessels,
    _paint_disc,
    _paint_macula,
    _sensor_noise,
    _smooth_noise,
)
from lesioncl.synthetic.geometry import _ARTERY, _VEIN, Geometry, Rendered
from lesioncl.synthetic.shapes import _coverage, draw_lesions, paint_lesions

# --------------------------------------------------------------------------- the photograph


#: Fine fundus texture (choroidal pattern, nerve-fibre sheen): band-limited noise per
#: image, as (feature size in px at a 512-px field of view, relative amplitude).
FINE_TEXTURE = ((3.0, 0.035), (7.0, 0.04))


def _fine_texture(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """1 + band-limited noise at the scales of :data:`FINE_TEXTURE` (float32, H x W).

    Real photographs carry such per-image fine structure, which makes two windows of
    one image recognisable as such; the smooth synthetic background alone does not.
    """
    texture = np.ones((h, w), np.float32)
    for size, amplitude in FINE_TEXTURE:
        cells = (max(4, round(h / (size * s))), max(4, round(w / (size * s))))
        texture += np.float32(amplitude) * _smooth_noise(rng, h, w, cells)
    return texture


def render_fundus(
    geom: Geometry,
    counts: dict[str, int],
    look_rng: np.random.Generator,
    lesion_rng: np.random.Generator,
    spread_haemorrhages: bool = False,
    texture: bool = True,
    lesion_scale: float = 1.0,
    small_vessels: int = 0,
) -> Rendered:
    """Draw one fundus photograph with the given lesions.

    ``look_rng`` decides everything but the lesions (it must not depend on the
    grade); ``lesion_rng`` shapes and places the lesions. ``texture``: add the fine
    per-image texture (:data:`FINE_TEXTURE`); its draws come last from ``look_rng``,
    so the rest of an image's look is the same either way. ``lesion_scale`` multiplies
    every lesion's size relative to the field of view (1: :data:`SIZES_AT_512`).
    ``small_vessels``: thin branches grown from the vessel trees into the whole field of
    view (:func:`~lesioncl.synthetic.anatomy._draw_vessels`; 0: the arcades alone).
    """
    H, W = geom.height, geom.width
    s = geom.scale
    yy = np.arange(H, dtype=np.float32)[:, None] - np.float32(geom.cy)
    xx = np.arange(W, dtype=np.float32)[None, :] - np.float32(geom.cx)
    r = np.sqrt(xx * xx + yy * yy)
    rn = r / np.float32(geom.radius)

    # albedo: an orange-red retina with low-frequency texture
    red = look_rng.uniform(0.55, 0.85)
    base = np.array(
        [red, red * look_rng.uniform(0.3, 0.5), red * look_rng.uniform(0.08, 0.22)], np.float32
    )
    lum = 1.0 + 0.10 * _smooth_noise(look_rng, H, W, (4, 6))
    mid_cells = (max(4, round(H / (24 * s))), max(4, round(W / (24 * s))))
    lum += 0.035 * _smooth_noise(look_rng, H, W, mid_cells)
    albedo = lum[..., None] * base

    disc_mask = _paint_disc(look_rng, geom, albedo)
    veins, arteries = _draw_vessels(look_rng, geom, small_vessels)
    contrast = look_rng.uniform(0.7, 1.0)
    dark = np.stack([veins, arteries], axis=-1) @ (
        np.float32(contrast) * np.stack([_VEIN, _ARTERY])
    )
    np.subtract(np.float32(1.0), dark, out=dark)
    albedo *= dark
    del dark
    _paint_macula(look_rng, geom, albedo)

    # camera: illumination fall-off, a tilt, exposure, haze, noise
    gain = look_rng.uniform(0.6, 1.25)
    vignette = look_rng.uniform(0.35, 0.6)
    power = look_rng.uniform(2.0, 4.0)
    tilt = look_rng.uniform(0, 0.2)
    tilt_dir = look_rng.uniform(0, 2 * math.pi)
    haze = look_rng.uniform(0.05, 0.2) if look_rng.random() < 0.3 else 0.0
    haze_col = np.array([0.8, 0.6, 0.45], np.float32) * gain
    noise_in = look_rng.uniform(1.0, 3.5)
    noise_bg = look_rng.uniform(0.5, 1.5)
    noise = _sensor_noise(look_rng, (H, W, 3))
    if texture:
        albedo *= _fine_texture(look_rng, H, W, s)[..., None]

    lesions = draw_lesions(geom, counts, lesion_rng, spread_haemorrhages, lesion_scale)
    paint_lesions(albedo, lesions)

    illum = gain * (1 - vignette * np.power(np.minimum(rn, 1.0), power))
    illum *= 1 + tilt * (xx * math.cos(tilt_dir) + yy * math.sin(tilt_dir)) / np.float32(
        geom.radius
    )
    fov = _coverage(np.float32(geom.radius) - r)
    img = albedo
    img *= (illum * np.float32((1 - haze) * 255.0) * fov)[..., None]
    if haze:
        img += (np.float32(haze * 255.0) * fov)[..., None] * haze_col
    noise *= (np.float32(noise_bg) + np.float32(noise_in - noise_bg) * fov)[..., None]
    img += noise
    img += np.float32(0.5)  # rounding by truncation below
    np.clip(img, 0, 255, out=img)
    image = img.astype(np.uint8)
    return Rendered(image, geom, lesions, disc_mask)
