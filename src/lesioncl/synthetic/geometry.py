"""The field of view of a synthetic photograph (:class:`Geometry`), its lesions
(:class:`Lesion`) and the rendered result (:class:`Rendered`), with their colours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesioncl.synthetic.grading import (
    HAEMORRHAGE,
    HARD_EXUDATE,
    LESION_KINDS,
    MICROANEURYSM,
    NEOVASCULARISATION,
    PRERETINAL_HAEMORRHAGE,
    SOFT_EXUDATE,
)

# Darkening of the red lesions and vessels, per RGB channel (pixel *= 1 - alpha * k).


_DARKEN = {
    MICROANEURYSM: np.array([0.55, 0.78, 0.72], np.float32),
    HAEMORRHAGE: np.array([0.52, 0.76, 0.70], np.float32),
    PRERETINAL_HAEMORRHAGE: np.array([0.62, 0.88, 0.82], np.float32),
    NEOVASCULARISATION: np.array([0.42, 0.66, 0.58], np.float32),
}
# Colour the bright lesions are blended towards (albedo units, ~1 = well exposed white).
_BRIGHT = {
    HARD_EXUDATE: np.array([1.0, 0.93, 0.52], np.float32),
    SOFT_EXUDATE: np.array([0.94, 0.88, 0.78], np.float32),
}
_VEIN = np.array([0.40, 0.62, 0.56], np.float32)
_ARTERY = np.array([0.24, 0.44, 0.40], np.float32)


@dataclass(frozen=True)
class Geometry:
    """Where things are in one image (pixels; x to the right, y down)."""

    width: int
    height: int
    cx: float  # centre of the circular field of view
    cy: float
    radius: float  # its radius; may exceed height / 2 (circle cut at top and bottom)
    disc_x: float
    disc_y: float
    disc_radius: float
    macula_x: float
    macula_y: float

    @property
    def scale(self) -> float:
        """Pixels of this image per pixel of a 512 px wide field of view."""
        return 2.0 * self.radius / 512.0

    def quadrant(self, x: float, y: float) -> int:
        """Quadrant (0..3) of the field of view holding (x, y), split at its centre."""
        return int(x >= self.cx) + 2 * int(y >= self.cy)


@dataclass
class Lesion:
    """One drawn lesion: its kind and its alpha patch (drawn pixels = alpha > 0)."""

    kind: str
    x: float  # centre
    y: float
    x0: int  # top-left corner of the patch in the image
    y0: int
    alpha: np.ndarray = field(repr=False)  # float32 (h, w), values in [0, 1]

    @property
    def mask(self) -> np.ndarray:
        return self.alpha > 0

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Tight box (x1, y1, x2, y2) of the drawn pixels, x2/y2 exclusive."""
        ys, xs = np.nonzero(self.alpha > 0)
        return (
            self.x0 + int(xs.min()),
            self.y0 + int(ys.min()),
            self.x0 + int(xs.max()) + 1,
            self.y0 + int(ys.max()) + 1,
        )

    def paste_mask(self, mask: np.ndarray) -> None:
        """OR this lesion's drawn pixels into a full-image boolean mask."""
        h, w = self.alpha.shape
        mask[self.y0 : self.y0 + h, self.x0 : self.x0 + w] |= self.alpha > 0


@dataclass
class Rendered:
    image: np.ndarray  # uint8 (H, W, 3) RGB
    geometry: Geometry
    lesions: list[Lesion]
    disc_mask: np.ndarray  # bool (H, W): the optic disc as drawn

    def counts(self) -> dict[str, int]:
        n = dict.fromkeys(LESION_KINDS, 0)
        for lesion in self.lesions:
            n[lesion.kind] += 1
        return n

    def haemorrhage_quadrants(self) -> int:
        return len(
            {
                self.geometry.quadrant(les.x, les.y)
                for les in self.lesions
                if les.kind == HAEMORRHAGE
            }
        )

    def lesion_mask(self, *kinds: str) -> np.ndarray:
        mask = np.zeros((self.geometry.height, self.geometry.width), bool)
        for lesion in self.lesions:
            if lesion.kind in kinds:
                lesion.paste_mask(mask)
        return mask


# --------------------------------------------------------------------------- geometry


def _anatomy(
    rng: np.random.Generator, width: int, height: int, cx: float, cy: float, radius: float, eye: str
) -> Geometry:
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    # Seen from the camera, a right eye's optic disc (nasal side) is on the right of
    # the photograph; about one Kaggle image in ten is mirrored.
    side = 1.0 if eye == "right" else -1.0
    if rng.random() < 0.1:
        side = -side
    disc_radius = radius * rng.uniform(0.115, 0.14)
    disc_x = cx + side * radius * rng.uniform(0.38, 0.5)
    disc_y = cy + radius * rng.uniform(-0.08, 0.08)
    macula_x = cx - side * radius * rng.uniform(0.05, 0.15)
    macula_y = disc_y + radius * rng.uniform(0.02, 0.1)
    # the disc must lie in the picture even when the circle is cut at top/bottom
    disc_y = float(np.clip(disc_y, disc_radius * 1.3, height - disc_radius * 1.3))
    return Geometry(
        width,
        height,
        float(cx),
        float(cy),
        float(radius),
        float(disc_x),
        float(disc_y),
        float(disc_radius),
        float(macula_x),
        float(macula_y),
    )


def eyepacs_geometry(
    rng: np.random.Generator, min_height: int, max_height: int, eye: str
) -> Geometry:
    """A Kaggle-like frame: mostly wider than tall with black side borders.

    70 %: the whole circle inside a 1.3-1.6 wide frame; 20 %: the circle cut off at
    top and bottom; 10 %: a nearly square frame.
    """
    if not 0 < min_height <= max_height:
        raise ValueError(
            f"synthetic heights need 0 < min_height <= max_height, got {min_height}, {max_height}"
        )
    height = int(rng.integers(min_height, max_height + 1))
    style = rng.random()
    if style < 0.7:
        width = round(height * rng.uniform(1.3, 1.6))
        diameter = height * rng.uniform(0.9, 0.99)
    elif style < 0.9:
        width = round(height * rng.uniform(1.3, 1.6))
        diameter = height * rng.uniform(1.05, 1.18)
    else:
        width = round(height * rng.uniform(1.0, 1.12))
        diameter = height * rng.uniform(0.82, 0.9)
    diameter = min(diameter, 0.86 * width)  # keep black side borders
    radius = diameter / 2
    cx = width / 2 + rng.uniform(-0.015, 0.015) * height
    cy = height / 2 + rng.uniform(-0.015, 0.015) * height
    return _anatomy(rng, width, height, cx, cy, radius, eye)


def idrid_geometry(rng: np.random.Generator, height: int, eye: str) -> Geometry:
    """An IDRiD-like frame: 1.5 : 1 (4288 x 2848), the circle slightly cut at top and bottom."""
    width = round(height * 1.5)
    radius = height * rng.uniform(1.04, 1.1) / 2
    cx = width / 2 + rng.uniform(-0.01, 0.01) * height
    cy = height / 2 + rng.uniform(-0.01, 0.01) * height
    return _anatomy(rng, width, height, cx, cy, radius, eye)
