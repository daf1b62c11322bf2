"""Lesion shapes, their placement on the field of view and their painting into the albedo."""

from __future__ import annotations

import math

import cv2
import numpy as np

# Darkening of the red lesions and vessels, per RGB channel (pixel *= 1 - alpha * k).
from lesioncl.synthetic.geometry import _BRIGHT, _DARKEN, Geometry, Lesion
from lesioncl.synthetic.grading import (
    HAEMORRHAGE,
    HARD_EXUDATE,
    MICROANEURYSM,
    NEOVASCULARISATION,
    PRERETINAL_HAEMORRHAGE,
    SIZES_AT_512,
    SOFT_EXUDATE,
)

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


def _clipped_patch(cx: float, cy: float, half: float, shape: tuple[int, ...]):
    """:func:`_patch` clipped to an image of ``shape`` (H, W, ...): the slices of the
    image it covers and the offsets of those pixels from (cx, cy)."""
    x0, y0, dx, dy = _patch(cx, cy, half)
    h, w = shape[:2]
    ys = slice(max(y0, 0), min(y0 + dy.shape[0], h))
    xs = slice(max(x0, 0), min(x0 + dx.shape[1], w))
    return ys, xs, dx[:, xs.start - x0 : xs.stop - x0], dy[ys.start - y0 : ys.stop - y0]


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
    lesion_scale: float = 1.0,
) -> list[Lesion]:
    """Shapes and places the lesions of ``counts`` (their alpha patches, not painted).

    ``spread_haemorrhages`` puts the first haemorrhages in the four quadrants in
    turn, so that every quadrant holds at least one (grade 3). ``lesion_scale``
    multiplies every lesion's size (:data:`SIZES_AT_512` at 1).
    """
    s = geom.scale * float(lesion_scale)
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
