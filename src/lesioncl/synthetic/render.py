"""Drawing one synthetic fundus photograph: field of view, anatomy, lesions, camera.

Everything is drawn at the image's own resolution with sizes expressed relative to
a 512 px wide field of view (``Geometry.scale``), so a lesion has the same size
relative to the eye in a 360 px and in a 2848 px image.

The look of an image (size, aspect, field-of-view cut, colour, illumination, haze,
vessels, disc, macula, noise) comes from one random stream and the lesions from
another, and the look's stream never sees the grade: only the lesions carry it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from lesioncl.synthetic.grading import (
    HAEMORRHAGE,
    HARD_EXUDATE,
    LESION_KINDS,
    MICROANEURYSM,
    NEOVASCULARISATION,
    PRERETINAL_HAEMORRHAGE,
    SIZES_AT_512,
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


# --------------------------------------------------------------------------- lesion shapes


def _patch(cx: float, cy: float, half: float):
    """Integer patch around (cx, cy) covering ``half`` pixels each way, and offsets."""
    x0 = int(math.floor(cx - half - 1))
    y0 = int(math.floor(cy - half - 1))
    x1 = int(math.ceil(cx + half + 2))
    y1 = int(math.ceil(cy + half + 2))
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    return x0, y0, dx, dy


def _coverage(edge_minus_dist: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-ness of a pixel given (edge distance - pixel distance)."""
    return np.clip(edge_minus_dist + 0.5, 0.0, 1.0)


def _polar_shape(rng: np.random.Generator, dx, dy, diameter: float, elong: float, wobble: float):
    """Normalised radius of an irregular blob whose longest extent is ``diameter``.

    Returns (dist, edge): pixel distance from the centre in the blob's stretched frame
    and the boundary distance in the same direction.
    """
    psi = rng.uniform(0, math.pi)
    c, s = math.cos(psi), math.sin(psi)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) * elong
    theta = np.arctan2(v, u)
    ks = np.arange(2, 6)
    amps = rng.uniform(0, wobble, size=ks.size)
    phases = rng.uniform(0, 2 * math.pi, size=ks.size)
    grid = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    rho_grid = 1 + (amps[:, None] * np.cos(ks[:, None] * grid[None] + phases[:, None])).sum(0)
    r0 = (diameter / 2) / rho_grid.max()
    rho = 1 + sum(float(a) * np.cos(k * theta + float(p)) for a, k, p in zip(amps, ks, phases))
    dist = np.sqrt(u * u + v * v)
    return dist, (r0 * rho).astype(np.float32)


def _microaneurysm(rng, x, y, s):
    d = rng.uniform(*SIZES_AT_512[MICROANEURYSM]) * s
    x0, y0, dx, dy = _patch(x, y, d / 2 + 1)
    r = max(d / 2 - 0.25, 0.3)
    alpha = _coverage(r - np.sqrt(dx * dx + dy * dy)) * rng.uniform(0.65, 0.95)
    return x0, y0, alpha


def _mottle(rng, dx, dy, s, amp):
    """A smooth multiplicative texture 1 +- amp over a lesion patch."""
    fx, fy = rng.uniform(0.25, 0.6, size=2) / s
    px, py = rng.uniform(0, 2 * math.pi, size=2)
    return 1 - amp + amp * np.cos(dx * fx + px) * np.cos(dy * fy + py)


def _haemorrhage(rng, x, y, s):
    d = rng.uniform(*SIZES_AT_512[HAEMORRHAGE]) * s
    flame = rng.random() < 0.3
    elong = rng.uniform(1.7, 2.6) if flame else rng.uniform(1.0, 1.5)
    ramp = max(1.0, 0.8 * s)
    x0, y0, dx, dy = _patch(x, y, d / 2 + 1)
    dist, edge = _polar_shape(rng, dx, dy, d - ramp * 0.5, elong, 0.13)
    inside = _coverage((edge - dist) / ramp)
    core = 0.75 + 0.25 * np.clip(1 - dist / np.maximum(edge, 1e-3), 0, 1)
    return x0, y0, inside * core * _mottle(rng, dx, dy, s, 0.12) * rng.uniform(0.75, 0.98)


def _hard_exudate(rng, x, y, s):
    lo, hi = SIZES_AT_512["hard_exudate_cluster"]
    extent = rng.uniform(lo, hi) * s
    x0, y0, dx, dy = _patch(x, y, extent / 2 + 1)
    alpha = np.zeros((dy.shape[0], dx.shape[1]), np.float32)
    n_spots = int(rng.integers(4, 7 + round(extent / s / 3)))
    spot_lo, spot_hi = SIZES_AT_512[HARD_EXUDATE]
    for _ in range(n_spots):
        d = rng.uniform(spot_lo, min(spot_hi, extent / s / 2)) * s
        reach = max(extent / 2 - d / 2 - 0.5, 0.0)
        ox, oy = np.clip(rng.normal(0, extent / 5, size=2), -reach, reach)
        r = max(d / 2 - 0.25, 0.3)
        spot = _coverage(r - np.sqrt((dx - ox) ** 2 + (dy - oy) ** 2)) * rng.uniform(0.75, 1.0)
        np.maximum(alpha, spot, out=alpha)
    return x0, y0, alpha


def _soft_exudate(rng, x, y, s):
    d = rng.uniform(*SIZES_AT_512[SOFT_EXUDATE]) * s
    x0, y0, dx, dy = _patch(x, y, d / 2 + 1)
    dist, edge = _polar_shape(rng, dx, dy, d - 0.5, rng.uniform(1.0, 1.6), 0.1)
    t = np.clip(1 - (dist / np.maximum(edge, 1e-3)) ** 2, 0, 1)
    fluff = _mottle(rng, dx, dy, s, 0.15)
    alpha = (t**1.2) * fluff * rng.uniform(0.6, 0.85)
    return x0, y0, alpha.astype(np.float32)


def _neovascularisation(rng, x, y, s):
    d = rng.uniform(*SIZES_AT_512[NEOVASCULARISATION]) * s
    half = d / 2
    x0, y0, dx, dy = _patch(x, y, half + 1)
    h, w = dy.shape[0], dx.shape[1]
    canvas = np.zeros((h, w), np.uint8)
    ox, oy = x - x0, y - y0  # centre inside the patch
    limit = half - 1.5
    step = max(1.2, 1.6 * s)
    for _ in range(int(rng.integers(8, 17))):
        ang0 = rng.uniform(0, 2 * math.pi)
        rad0 = limit * math.sqrt(rng.uniform(0, 0.5))
        px, py = ox + rad0 * math.cos(ang0), oy + rad0 * math.sin(ang0)
        theta = rng.uniform(0, 2 * math.pi)
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.45)  # curly loops
        points = [(px, py)]
        for _ in range(int(rng.integers(10, 30))):
            theta += turn + rng.normal(0, 0.35)
            nx, ny = px + step * math.cos(theta), py + step * math.sin(theta)
            if math.hypot(nx - ox, ny - oy) > limit:  # turn back inside
                theta = math.atan2(oy - py, ox - px) + rng.normal(0, 0.4)
                nx, ny = px + step * math.cos(theta), py + step * math.sin(theta)
            px, py = nx, ny
            points.append((px, py))
        pts = np.round(np.array(points) * 8).astype(np.int32)[None]
        cv2.polylines(
            canvas, pts, False, 255, thickness=1 if s < 1.6 else 2, lineType=cv2.LINE_AA, shift=3
        )
    alpha = canvas.astype(np.float32) / 255.0 * rng.uniform(0.75, 0.95)
    return x0, y0, alpha


def _preretinal_haemorrhage(rng, x, y, s):
    """Boat-shaped: an ellipse with a flat, horizontal fluid level on top."""
    d = rng.uniform(*SIZES_AT_512[PRERETINAL_HAEMORRHAGE]) * s
    a = d / 2 - 0.25
    b = a * rng.uniform(0.55, 0.8)
    x0, y0, dx, dy = _patch(x, y, d / 2 + 1)
    level = -b * rng.uniform(0.05, 0.35)
    ell = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    inside = _coverage((1 - ell) * min(a, b)) * _coverage(dy - level)
    return x0, y0, inside * rng.uniform(0.82, 0.95)


_SHAPES = {
    MICROANEURYSM: _microaneurysm,
    HAEMORRHAGE: _haemorrhage,
    HARD_EXUDATE: _hard_exudate,
    SOFT_EXUDATE: _soft_exudate,
    NEOVASCULARISATION: _neovascularisation,
    PRERETINAL_HAEMORRHAGE: _preretinal_haemorrhage,
}
# Half extent reserved around a lesion when placing it (pixels at 512).
_RESERVE = {
    MICROANEURYSM: 3.0,
    HAEMORRHAGE: 16.0,
    HARD_EXUDATE: 21.0,
    SOFT_EXUDATE: 18.5,
    NEOVASCULARISATION: 31.0,
    PRERETINAL_HAEMORRHAGE: 46.0,
}
_DRAW_ORDER = (
    PRERETINAL_HAEMORRHAGE,
    NEOVASCULARISATION,
    SOFT_EXUDATE,
    HAEMORRHAGE,
    HARD_EXUDATE,
    MICROANEURYSM,
)


class _Placer:
    """Random lesion centres inside the field of view, off the disc, not overlapping."""

    def __init__(self, geom: Geometry, rng: np.random.Generator):
        self.g = geom
        self.rng = rng
        self.placed: list[tuple[float, float, float]] = []

    def _feasible(self, x: float, y: float, half: float, avoid_disc: bool) -> bool:
        g = self.g
        if math.hypot(x - g.cx, y - g.cy) > 0.9 * g.radius - half:
            return False
        if not (half + 2 <= x <= g.width - half - 3 and half + 2 <= y <= g.height - half - 3):
            return False
        if avoid_disc and math.hypot(x - g.disc_x, y - g.disc_y) < 1.25 * g.disc_radius + half:
            return False
        return True

    def _free(self, x: float, y: float, half: float) -> bool:
        return all(math.hypot(x - px, y - py) >= half + ph + 1 for px, py, ph in self.placed)

    def place(
        self, half: float, quadrant: int | None = None, avoid_disc: bool = True, tries: int = 300
    ) -> tuple[float, float]:
        g, rng = self.g, self.rng
        fallback = None
        for _ in range(tries):
            rmax = max(0.9 * g.radius - half, 1.0)
            r = rmax * math.sqrt(rng.random())
            if quadrant is None:
                phi = rng.uniform(0, 2 * math.pi)
            else:  # quadrant q: x side = q % 2, y side = q // 2
                base = {0: math.pi, 1: 1.5 * math.pi, 2: 0.5 * math.pi, 3: 0.0}[quadrant]
                phi = base + rng.uniform(0.05, math.pi / 2 - 0.05)
            x, y = g.cx + r * math.cos(phi), g.cy + r * math.sin(phi)
            if quadrant is not None and g.quadrant(x, y) != quadrant:
                continue
            if not self._feasible(x, y, half, avoid_disc):
                continue
            if fallback is None:
                fallback = (x, y)
            if self._free(x, y, half):
                self.placed.append((x, y, half))
                return x, y
        if fallback is None:
            raise RuntimeError(
                f"cannot place a lesion of half-size {half:.1f}px in a "
                f"{g.width}x{g.height} image (field-of-view radius {g.radius:.0f}px): "
                "the image is too small; raise the synthetic min_height/height"
            )
        self.placed.append((fallback[0], fallback[1], half))
        return fallback

    def near_disc(self, half: float) -> tuple[float, float]:
        """A centre on the optic disc's rim (new vessels on the disc, NVD)."""
        g, rng = self.g, self.rng
        for _ in range(100):
            ang = rng.uniform(0, 2 * math.pi)
            rad = g.disc_radius * rng.uniform(0.3, 1.0)
            x, y = g.disc_x + rad * math.cos(ang), g.disc_y + rad * math.sin(ang)
            if self._feasible(x, y, half, avoid_disc=False):
                self.placed.append((x, y, half))
                return x, y
        return self.place(half)


def draw_lesions(
    geom: Geometry,
    counts: dict[str, int],
    rng: np.random.Generator,
    spread_haemorrhages: bool = False,
) -> list[Lesion]:
    """Shapes and places the lesions of ``counts`` (their alpha patches, not painted).

    ``spread_haemorrhages`` puts the first haemorrhages in the four quadrants in
    turn, so that every quadrant holds at least one (grade 3).
    """
    s = geom.scale
    placer = _Placer(geom, rng)
    lesions: list[Lesion] = []
    for kind in _DRAW_ORDER:
        for i in range(int(counts.get(kind, 0))):
            half = _RESERVE[kind] * s
            if kind == NEOVASCULARISATION and rng.random() < 0.5:
                x, y = placer.near_disc(half)
            elif kind == HAEMORRHAGE and spread_haemorrhages and i < 8:
                x, y = placer.place(half, quadrant=i % 4)
            else:
                x, y = placer.place(half)
            x0, y0, alpha = _SHAPES[kind](rng, x, y, s)
            alpha = np.ascontiguousarray(alpha, dtype=np.float32)
            # keep the patch inside the image (placement leaves a margin already)
            h, w = alpha.shape
            cx0, cy0 = max(0, -x0), max(0, -y0)
            cx1, cy1 = min(w, geom.width - x0), min(h, geom.height - y0)
            alpha = alpha[cy0:cy1, cx0:cx1]
            lesions.append(Lesion(kind, float(x), float(y), x0 + cx0, y0 + cy0, alpha))
    return lesions


def paint_lesions(albedo: np.ndarray, lesions: list[Lesion]) -> None:
    """Paint the lesions onto the albedo (float32, H x W x 3) in place."""
    for lesion in lesions:
        h, w = lesion.alpha.shape
        region = albedo[lesion.y0 : lesion.y0 + h, lesion.x0 : lesion.x0 + w]
        a = lesion.alpha[..., None]
        if lesion.kind in _DARKEN:
            region *= 1.0 - a * _DARKEN[lesion.kind]
        else:
            region += a * (_BRIGHT[lesion.kind] - region)


# --------------------------------------------------------------------------- anatomy


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    grid = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance triangular noise (the sum of two random bytes).

    Close enough to Gaussian sensor noise and several times faster to draw.
    """
    n = int(np.prod(shape))
    u = np.frombuffer(rng.bytes(2 * n), np.uint8).reshape(2, *shape)
    noise = u[0].astype(np.float32)
    noise += u[1]
    noise -= np.float32(255.0)
    noise *= np.float32(1.0 / math.sqrt(2 * (256**2 - 1) / 12))
    return noise


def _draw_vessels(rng: np.random.Generator, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Branching vessel trees from the disc: the four arcades, veins and arteries."""
    s = g.scale
    canvases = (np.zeros((g.height, g.width), np.uint8), np.zeros((g.height, g.width), np.uint8))
    temporal = 1.0 if g.macula_x >= g.disc_x else -1.0
    step = max(2.0, 3.5 * s)
    for kind, canvas in enumerate(canvases):  # 0 veins, 1 arteries
        w0 = (rng.uniform(4.2, 5.6) if kind == 0 else rng.uniform(3.2, 4.2)) * s
        off = math.radians(rng.uniform(-12, 12))
        stack = []
        for sign in (-1.0, 1.0):  # superior, inferior
            # temporal arcade: leaves the disc steeply, bends around the macula
            theta = sign * math.radians(rng.uniform(55, 80)) + off
            turn = -sign * rng.uniform(1.1, 1.6)
            length = g.radius * rng.uniform(0.9, 1.25)
            stack.append((theta, turn / length, length, w0 * rng.uniform(0.9, 1.0), 0))
            # nasal vessels
            theta = sign * math.radians(rng.uniform(100, 145)) + off
            length = g.radius * rng.uniform(0.6, 0.85)
            stack.append(
                (theta, rng.uniform(-0.4, 0.4) / length, length, w0 * rng.uniform(0.7, 0.85), 0)
            )
        starts = []
        for item in stack:
            ang = rng.uniform(0, 2 * math.pi)
            rad = g.disc_radius * rng.uniform(0, 0.3)
            starts.append((g.disc_x + rad * math.cos(ang), g.disc_y + rad * math.sin(ang)) + item)
        while starts:
            x, y, theta, kappa, length, width, depth = starts.pop()
            travelled = 0.0
            while travelled < length and width > 0.5:
                theta += kappa * step + rng.normal(0, 0.05)
                nx = x + temporal * step * math.cos(theta)
                ny = y + step * math.sin(theta)
                if math.hypot(nx - g.cx, ny - g.cy) > 0.99 * g.radius:
                    break
                cv2.line(
                    canvas,
                    (round(x * 8), round(y * 8)),
                    (round(nx * 8), round(ny * 8)),
                    int(255 * min(1.0, width)),
                    max(1, round(width)),
                    cv2.LINE_AA,
                    3,
                )
                x, y = nx, ny
                travelled += step
                width *= 1 - step / (2.5 * g.radius)
                if depth < 3 and rng.random() < step / (75 * s):
                    child_len = (length - travelled) * rng.uniform(0.3, 0.7) + 15 * s
                    child_theta = theta + rng.choice([-1.0, 1.0]) * rng.uniform(0.35, 0.9)
                    child_kappa = rng.uniform(-1.0, 1.0) / (0.5 * g.radius)
                    starts.append(
                        (
                            x,
                            y,
                            child_theta,
                            child_kappa,
                            child_len,
                            width * rng.uniform(0.5, 0.75),
                            depth + 1,
                        )
                    )
                    width *= 0.92
    sigma = 0.35 + 0.25 * s
    return tuple(cv2.GaussianBlur(c, (0, 0), sigma).astype(np.float32) / 255.0 for c in canvases)


def _paint_disc(rng: np.random.Generator, g: Geometry, albedo: np.ndarray) -> np.ndarray:
    """Brighten the optic disc (yellowish rim, paler cup, soft glow); return its mask."""
    r = g.disc_radius
    x0, y0, dx, dy = _patch(g.disc_x, g.disc_y, 2.2 * r)
    # clip the patch to the image
    h, w = albedo.shape[:2]
    ys, xs = (
        slice(max(y0, 0), min(y0 + dy.shape[0], h)),
        slice(max(x0, 0), min(x0 + dx.shape[1], w)),
    )
    dx = dx[:, xs.start - x0 : xs.stop - x0]
    dy = dy[ys.start - y0 : ys.stop - y0]
    stretch = rng.uniform(1.0, 1.15)  # discs are slightly taller than wide
    dist = np.sqrt(dx * dx + (dy / stretch) ** 2)
    disc = _coverage((r - dist) / (0.15 * r))  # a soft rim; the disc is where >= 0.5
    cup_r = r * rng.uniform(0.3, 0.5)
    cup_dist = np.sqrt((dx - r * rng.uniform(-0.2, 0.2)) ** 2 + (dy / stretch) ** 2)
    cup = np.exp(-((cup_dist / cup_r) ** 2))
    glow = np.exp(-((dist / (1.6 * r)) ** 2)) * rng.uniform(0.08, 0.2)
    region = albedo[ys, xs]
    disc_col = np.array([1.0, 0.74, 0.45], np.float32) * rng.uniform(0.85, 1.0)
    cup_col = np.array([1.0, 0.93, 0.74], np.float32)
    region *= (1 + glow)[..., None]
    region += (disc * rng.uniform(0.55, 0.75))[..., None] * (disc_col - region)
    region += (cup * rng.uniform(0.5, 0.85))[..., None] * (cup_col - region)
    mask = np.zeros((h, w), bool)
    mask[ys, xs] = disc >= 0.5
    return mask


def _paint_macula(rng: np.random.Generator, g: Geometry, albedo: np.ndarray) -> None:
    sigma = g.disc_radius * rng.uniform(1.2, 1.8)
    x0, y0, dx, dy = _patch(g.macula_x, g.macula_y, 3 * sigma)
    h, w = albedo.shape[:2]
    ys, xs = (
        slice(max(y0, 0), min(y0 + dy.shape[0], h)),
        slice(max(x0, 0), min(x0 + dx.shape[1], w)),
    )
    dx = dx[:, xs.start - x0 : xs.stop - x0]
    dy = dy[ys.start - y0 : ys.stop - y0]
    d2 = dx * dx + dy * dy
    dark = np.exp(-d2 / (2 * sigma * sigma)) * rng.uniform(0.25, 0.45)
    region = albedo[ys, xs]
    region *= 1 - dark[..., None] * np.array([0.9, 1.0, 1.0], np.float32)
    if rng.random() < 0.6:  # foveal reflex
        reflex = np.exp(-d2 / (2 * (0.12 * g.disc_radius) ** 2)) * rng.uniform(0.15, 0.35)
        region += reflex[..., None] * (np.float32(0.95) - region)


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
) -> Rendered:
    """Draw one fundus photograph with the given lesions.

    ``look_rng`` decides everything but the lesions (it must not depend on the
    grade); ``lesion_rng`` shapes and places the lesions. ``texture``: add the fine
    per-image texture (:data:`FINE_TEXTURE`); its draws come last from ``look_rng``,
    so the rest of an image's look is the same either way.
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
    veins, arteries = _draw_vessels(look_rng, geom)
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

    lesions = draw_lesions(geom, counts, lesion_rng, spread_haemorrhages)
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
