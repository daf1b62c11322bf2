"""The anatomy of a synthetic fundus: smooth and sensor noise, vessels, disc and macula."""

from __future__ import annotations

import math

import cv2
import numpy as np

# Darkening of the red lesions and vessels, per RGB channel (pixel *= 1 - alpha * k).
from lesioncl.synthetic.geometry import Geometry
from lesioncl.synthetic.shapes import _clipped_patch, _coverage

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


def _segment(canvas: np.ndarray, x: float, y: float, nx: float, ny: float, width: float) -> None:
    """One anti-aliased vessel segment (1/8-px coordinates); thinner than 1 px: fainter."""
    cv2.line(
        canvas,
        (round(x * 8), round(y * 8)),
        (round(nx * 8), round(ny * 8)),
        int(255 * min(1.0, width)),
        max(1, round(width)),
        cv2.LINE_AA,
        3,
    )


def _draw_vessels(
    rng: np.random.Generator, g: Geometry, small_vessels: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Branching vessel trees from the disc: the four arcades, veins and arteries.

    ``small_vessels``: as many thin, tortuous branches grown from the trees into the
    whole field of view (:func:`_grow_small_vessels`), so that most windows of the retina
    hold some vessel as in a real photograph; 0: the arcades alone. Their draws come from
    a stream spawned from ``rng`` without advancing it, so the rest of an image's look is
    the same either way.
    """
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
                _segment(canvas, x, y, nx, ny, width)
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
    if small_vessels > 0:
        spawned = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
        _grow_small_vessels(spawned, g, canvases, small_vessels)
    sigma = 0.35 + 0.25 * s
    return tuple(cv2.GaussianBlur(c, (0, 0), sigma).astype(np.float32) / 255.0 for c in canvases)


def _grow_small_vessels(
    rng: np.random.Generator, g: Geometry, canvases: tuple[np.ndarray, ...], n: int
) -> None:
    """Grow ``n`` thin branches (1-1.8 px wide at a 512-px field of view) from the vessel
    trees drawn on ``canvases`` (8x sub-pixel coordinates) towards points drawn uniformly in
    the field of view outside the fovea: each starts at the tree pixel nearest its target,
    wanders towards it and may fork once."""
    s = g.scale
    step = max(1.5, 2.5 * s)
    fovea = 0.09 * g.radius
    for kind, tree_canvas in enumerate(canvases):
        ys, xs = np.nonzero(tree_canvas[::4, ::4])
        if len(xs) == 0:
            continue
        canvas = np.zeros_like(tree_canvas)  # joined by maximum: a crossing never lightens
        pick = rng.choice(len(xs), size=min(len(xs), 4000), replace=False)
        tree = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32) * 4
        count = n // 2 + (n % 2 if kind == 0 else 0)
        for _ in range(count):
            while True:  # a target in the field of view, away from the fovea
                a = rng.uniform(0, 2 * math.pi)
                rad = g.radius * 0.97 * math.sqrt(rng.uniform(0, 1))
                tx, ty = g.cx + rad * math.cos(a), g.cy + rad * math.sin(a)
                if math.hypot(tx - g.macula_x, ty - g.macula_y) > fovea:
                    break
            d = (tree[:, 0] - tx) ** 2 + (tree[:, 1] - ty) ** 2
            x, y = (float(v) for v in tree[int(np.argmin(d))])
            width = rng.uniform(1.0, 1.8) * s
            forked = False
            branches = [(x, y, width, tx, ty)]
            while branches:
                x, y, width, tx, ty = branches.pop()
                theta = math.atan2(ty - y, tx - x) + rng.normal(0, 0.5)
                for _ in range(int(80 * s / step) + 1):
                    dist = math.hypot(tx - x, ty - y)
                    if dist < 4 * step or width < 0.4:
                        break
                    pull = math.atan2(ty - y, tx - x) - theta
                    pull = math.atan2(math.sin(pull), math.cos(pull))
                    theta += 0.2 * pull + rng.normal(0, 0.1)
                    nx, ny = x + step * math.cos(theta), y + step * math.sin(theta)
                    if math.hypot(nx - g.cx, ny - g.cy) > 0.99 * g.radius:
                        break
                    _segment(canvas, x, y, nx, ny, width)
                    x, y = nx, ny
                    width *= 0.985
                    if not forked and rng.random() < 0.04:
                        forked = True
                        a = rng.uniform(0, 2 * math.pi)
                        far = rng.uniform(0.15, 0.35) * g.radius
                        fx, fy = x + far * math.cos(a), y + far * math.sin(a)
                        branches.append((x, y, width * 0.8, fx, fy))
        np.maximum(tree_canvas, canvas, out=tree_canvas)


def _paint_disc(rng: np.random.Generator, g: Geometry, albedo: np.ndarray) -> np.ndarray:
    """Brighten the optic disc (yellowish rim, paler cup, soft glow); return its mask."""
    r = g.disc_radius
    ys, xs, dx, dy = _clipped_patch(g.disc_x, g.disc_y, 2.2 * r, albedo.shape)
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
    mask = np.zeros(albedo.shape[:2], bool)
    mask[ys, xs] = disc >= 0.5
    return mask


def _paint_macula(rng: np.random.Generator, g: Geometry, albedo: np.ndarray) -> None:
    sigma = g.disc_radius * rng.uniform(1.2, 1.8)
    ys, xs, dx, dy = _clipped_patch(g.macula_x, g.macula_y, 3 * sigma, albedo.shape)
    d2 = dx * dx + dy * dy
    dark = np.exp(-d2 / (2 * sigma * sigma)) * rng.uniform(0.25, 0.45)
    region = albedo[ys, xs]
    region *= 1 - dark[..., None] * np.array([0.9, 1.0, 1.0], np.float32)
    if rng.random() < 0.6:  # foveal reflex
        reflex = np.exp(-d2 / (2 * (0.12 * g.disc_radius) ** 2)) * rng.uniform(0.15, 0.35)
        region += reflex[..., None] * (np.float32(0.95) - region)
