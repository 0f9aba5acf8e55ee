"""Synthetic multimodal parts with defects, written in the MVTec 3D-AD layout.

A top-down pinhole camera (:func:`camera_intrinsics`) looks at a part lying on a table about
0.5 m away. Each sample has an organized xyz map in metres in the camera frame (X right, Y down,
Z forward = depth; zeros = no measurement) and an RGB image rendered with Lambertian shading from
the normals of the same geometry, so shape shows in the image as it does on a real part.

Nine categories differ in shape and surface (:data:`CATEGORY_INFO`): round, ring-shaped,
rectangular, a flat plate with through-holes, a lying cylinder, a thin grooved shaft; matte,
speckled, brushed (straight, circular and turned) and multi-coloured (checkered tile, labelled
cylinder) surfaces. Parts
vary in pose, size, colour, texture and lighting; the sensor adds depth noise, camera noise and
dropouts. They are split into a *tuning* set and a *report* set (:data:`BENCHMARK_SPLITS`, different
categories and seeds): defaults are chosen on the first, figures are reported on the second
(docs/ablations.md).

Defects (:data:`DEFECTS`) change colour only, shape only or both; how hard they are is set by
:class:`DefectSpec` (area, height or depth, colour contrast), with defaults in
:data:`DEFECT_SPECS` that go down to a few tenths of a millimetre and a faint stain, and a harder
set :data:`HARD_DEFECT_SPECS` (``write_benchmark(..., difficulty="hard")``) for when the default
one no longer separates settings.

Randomness is split in two independent streams derived from ``(seed, category)``: a *nuisance*
stream (pose, size, colour jitter, texture, lighting, sensor noise, dropouts, camera noise) and a
*defect* stream (location, size and shape of the defect). The nuisance stream does not depend on
the defect, so ``generate_sample(c, None, seed=s)`` and ``generate_sample(c, "bump", seed=s)`` show
the same part and differ only inside the defect mask. Every geometric defect's mask is dilated by
one pixel because the shading uses central differences, so the rgb change never leaks past the
mask.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import tifffile
from PIL import Image

from ..types import Sample

PathLike = Union[str, Path]

#: Shape and surface of each category.
CATEGORY_INFO: dict[str, str] = {
    "dome": "round dome, matte",
    "puck": "round puck with a crowned top, matte",
    "ring": "torus-like ring, matte",
    "block": "rounded rectangular block, speckled (granular two-tone) surface",
    "plate": "flat plate with four through-holes, brushed metal",
    "cylinder": "cylinder lying on its side, multi-coloured label bands",
    "tile": "square tile, multi-coloured checker pattern with speckle",
    "disc": "round disc with a shallow centre recess, circular-brushed metal",
    "shaft": "thin turned shaft lying on its side, two shallow grooves, lathe-turned metal",
}
#: Object shapes the generator knows.
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_INFO)

#: Tuning categories (choose defaults here) and report categories (publish these), each with the
#: base seed :func:`write_dataset` uses for it. No category or seed is shared.
BENCHMARK_SPLITS: dict[str, tuple[tuple[str, ...], int]] = {
    "tuning": (("dome", "ring", "plate", "tile", "shaft"), 1000),
    "report": (("puck", "block", "cylinder", "disc"), 0),
}
TUNING_CATEGORIES, REPORT_CATEGORIES = BENCHMARK_SPLITS["tuning"][0], BENCHMARK_SPLITS["report"][0]

#: Defect types and the modality each one changes.
DEFECTS: dict[str, str] = {
    "bump": "geometry",
    "dent": "geometry",
    "stain": "colour",
    "crack": "both",
    "hole": "both",
}


@dataclass(frozen=True)
class DefectSpec:
    """How hard a defect is; each field is a ``(low, high)`` range drawn uniformly per part.

    ``area``: footprint as a fraction of the part's footprint (bump, dent, stain, hole).
    ``height``: metres; bump height, dent / crack / hole depth. ``contrast``: 0..1, how far the
    albedo moves towards the defect's colour (stain, crack, hole).
    """

    area: tuple[float, float] = (0.0, 0.0)
    height: tuple[float, float] = (0.0, 0.0)
    contrast: tuple[float, float] = (0.0, 0.0)


#: Default difficulty: shallow shape defects (0.3-1.0 mm against 0.15-0.3 mm depth noise) and
#: faint stains, as found on real lines; pass ``defect_spec=`` to make them easier or harder.
DEFECT_SPECS: dict[str, DefectSpec] = {
    "bump": DefectSpec(area=(0.012, 0.03), height=(0.0003, 0.001)),
    "dent": DefectSpec(area=(0.012, 0.03), height=(0.0003, 0.001)),
    "stain": DefectSpec(area=(0.012, 0.03), contrast=(0.25, 0.5)),
    "crack": DefectSpec(height=(0.0005, 0.0015), contrast=(0.3, 0.6)),
    "hole": DefectSpec(area=(0.006, 0.015), height=(0.003, 0.006), contrast=(0.5, 0.8)),
}

#: Smaller, shallower and fainter than :data:`DEFECT_SPECS` (about two thirds of the area and
#: height, two thirds of the contrast): the benchmark's ``difficulty="hard"``. Once the default
#: tuning set scored 0.99 for every candidate setting, it stopped telling settings apart; on these
#: defects the same settings spread over several hundredths (docs/ablations.md).
HARD_DEFECT_SPECS: dict[str, DefectSpec] = {
    "bump": DefectSpec(area=(0.008, 0.02), height=(0.0002, 0.0006)),
    "dent": DefectSpec(area=(0.008, 0.02), height=(0.0002, 0.0006)),
    "stain": DefectSpec(area=(0.008, 0.02), contrast=(0.15, 0.35)),
    "crack": DefectSpec(height=(0.0003, 0.001), contrast=(0.2, 0.4)),
    "hole": DefectSpec(area=(0.004, 0.01), height=(0.002, 0.004), contrast=(0.3, 0.6)),
}

#: Per benchmark difficulty: defect specs, offset added to the split's data seed (so no part is
#: shared with the other difficulty), and good / per-type test parts per category (more for the
#: hard set: with 6 defective parts per type one part moves a type's I-AUROC by up to 0.17).
BENCHMARK_DIFFICULTIES: dict[str, tuple[dict[str, DefectSpec], int, int, int]] = {
    "standard": (DEFECT_SPECS, 0, 12, 6),
    "hard": (HARD_DEFECT_SPECS, 5000, 30, 15),
}

#: Image side used unless told otherwise (real scans: MVTec 3D-AD is 800 x 800).
DEFAULT_SIZE = 400
#: Distance from the camera centre to the table along the optical axis, in metres.
CAMERA_HEIGHT = 0.5
#: fx = fy = FOCAL_FACTOR * size: a 0.1 m part at 0.5 m spans 60% of the image width.
FOCAL_FACTOR = 3.0
#: Range of the per-part standard deviation of the depth noise, in metres.
DEPTH_NOISE = (0.00015, 0.0003)

_BACKGROUNDS = ("none", "plane")
# Unit vector from the surface towards the light (up-left, from the camera side: negative Z).
_LIGHT = np.array([-0.35, -0.45, -1.0]) / np.linalg.norm([-0.35, -0.45, -1.0])
_AMBIENT, _DIFFUSE = 0.3, 0.75
_TABLE_ALBEDO = 0.2
_BASE_ALBEDO = {
    "dome": (0.78, 0.62, 0.42),
    "puck": (0.55, 0.58, 0.62),
    "ring": (0.80, 0.47, 0.27),
    "block": (0.45, 0.63, 0.40),
    "plate": (0.62, 0.63, 0.66),
    "cylinder": (0.30, 0.42, 0.68),
    "tile": (0.72, 0.32, 0.24),
    "disc": (0.70, 0.70, 0.73),
    "shaft": (0.64, 0.62, 0.58),
}
# Round parts may lie at any angle; the others are roughly aligned by a fixture.
_ROUND = {"dome", "puck", "disc"}


def camera_intrinsics(size: int = DEFAULT_SIZE) -> np.ndarray:
    """The 3 x 3 pinhole matrix of the synthetic camera for a ``size`` x ``size`` image.

    fx = fy = 3 * size and the principal point is the image centre ((size - 1) / 2, pixel
    centres at integer coordinates), so the field of view is the same at every size.
    """
    f = FOCAL_FACTOR * size
    c = (size - 1) / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# Shapes: signed distance of the footprint (negative inside, metres) and height above the table,
# both in object coordinates. Every shape has side walls of at least 8 mm so that removing points
# within 5 mm of the table plane (the reference's fixed rule) keeps the whole visible top;
# generate_sample(thickness=...) makes thin ones.


@dataclass(frozen=True)
class _Shape:
    sdf: Callable[[np.ndarray, np.ndarray], np.ndarray]
    height: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x, y, sdf) -> h
    extent: float  # typical length across the part in m (for crack lengths)

    @functools.cached_property
    def area(self) -> float:
        """Footprint area in m^2 (numerically, on a 0.1 mm grid)."""
        g = np.arange(-0.06, 0.06, 0.0001)
        inside = self.sdf(g[None, :], g[:, None]) < 0
        return float(inside.sum()) * 1e-8

    @functools.cached_property
    def top(self) -> float:
        """Greatest height above the table in m (numerically, on a 0.5 mm grid)."""
        g = np.arange(-0.06, 0.06, 0.0005)
        x, y = np.meshgrid(g, g)
        return float(self.height(x, y, self.sdf(x, y)).max())


def _fillet(d_in: np.ndarray, top: float, radius: float) -> np.ndarray:
    """Height of a flat-topped solid with a rounded top edge, ``d_in`` metres inside its rim."""
    inner = np.clip(radius - d_in, 0.0, radius)
    return np.where(d_in > 0, top - radius + np.sqrt(radius**2 - inner**2), 0.0)


def _round_rect_sdf(x: np.ndarray, y: np.ndarray, hx: float, hy: float, corner: float) -> np.ndarray:
    qx = np.abs(x) - (hx - corner)
    qy = np.abs(y) - (hy - corner)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - corner


def _dome_sdf(x, y):
    return np.hypot(x, y) - 0.05


def _dome_h(x, y, sdf):
    r2 = (x * x + y * y) / 0.05**2
    return np.where(sdf < 0, 0.008 + 0.022 * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)), 0.0)


def _puck_sdf(x, y):
    return np.hypot(x, y) - 0.048


def _puck_h(x, y, sdf):
    crown = 0.0015 * np.clip(1.0 - (x * x + y * y) / 0.048**2, 0.0, 1.0)
    return _fillet(-sdf, 0.016, 0.005) + np.where(sdf < 0, crown, 0.0)


def _ring_sdf(x, y):
    return np.abs(np.hypot(x, y) - 0.034) - 0.016


def _ring_h(x, y, sdf):
    t = (np.hypot(x, y) - 0.034) / 0.016
    return np.where(sdf < 0, 0.008 + 0.008 * np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0)), 0.0)


def _block_sdf(x, y):
    return _round_rect_sdf(x, y, 0.050, 0.032, 0.006)


def _block_h(x, y, sdf):
    return _fillet(-sdf, 0.020, 0.004)


_PLATE_HOLES = ((-0.028, -0.016), (0.028, -0.016), (-0.028, 0.016), (0.028, 0.016))


def _plate_sdf(x, y):
    holes = np.min([np.hypot(x - hx, y - hy) - 0.005 for hx, hy in _PLATE_HOLES], axis=0)
    return np.maximum(_round_rect_sdf(x, y, 0.046, 0.031, 0.004), -holes)


def _plate_h(x, y, sdf):
    return _fillet(-sdf, 0.008, 0.0012)


_CYL_R = 0.014


def _cylinder_sdf(x, y):
    return _round_rect_sdf(x, y, 0.050, _CYL_R, 0.002)


def _cylinder_h(x, y, sdf):
    return np.where(sdf < 0, _CYL_R + np.sqrt(np.clip(_CYL_R**2 - y * y, 0.0, None)), 0.0)


_SHAFT_R = 0.010


def _shaft_sdf(x, y):
    return _round_rect_sdf(x, y, 0.046, _SHAFT_R, 0.0015)


def _shaft_h(x, y, sdf):
    # Two turned grooves 0.6 mm deep, 3 mm wide, 30 mm either side of the middle.
    groove = 0.0006 * np.clip(1.0 - np.abs(np.abs(x) - 0.030) / 0.0015, 0.0, 1.0)
    return np.where(sdf < 0, _SHAFT_R + np.sqrt(np.clip(_SHAFT_R**2 - y * y, 0.0, None)) - groove, 0.0)


def _tile_sdf(x, y):
    return _round_rect_sdf(x, y, 0.040, 0.040, 0.003)


def _tile_h(x, y, sdf):
    return _fillet(-sdf, 0.010, 0.002)


def _disc_sdf(x, y):
    return np.hypot(x, y) - 0.048


def _disc_h(x, y, sdf):
    r = np.hypot(x, y)
    recess = 0.001 * np.clip((0.016 - r) / 0.0015, 0.0, 1.0)  # 1 mm deep, 1.5 mm chamfer
    return _fillet(-sdf, 0.010, 0.003) - np.where(sdf < 0, recess, 0.0)


_SHAPES: dict[str, _Shape] = {
    "dome": _Shape(_dome_sdf, _dome_h, 0.10),
    "puck": _Shape(_puck_sdf, _puck_h, 0.096),
    "ring": _Shape(_ring_sdf, _ring_h, 0.10),
    "block": _Shape(_block_sdf, _block_h, 0.10),
    "plate": _Shape(_plate_sdf, _plate_h, 0.09),
    "cylinder": _Shape(_cylinder_sdf, _cylinder_h, 0.10),
    "tile": _Shape(_tile_sdf, _tile_h, 0.08),
    "disc": _Shape(_disc_sdf, _disc_h, 0.096),
    "shaft": _Shape(_shaft_sdf, _shaft_h, 0.08),
}


# --------------------------------------------------------------------------------------------
# Small numpy helpers.


def _stream(seed: int, category: str, *tags: int) -> np.random.Generator:
    """An independent generator for ``(seed, category, *tags)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(category.encode()), *tags]))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 binary dilation (pixels outside the image count as False)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _value_noise(rng: np.random.Generator, cells: int, x: np.ndarray, y: np.ndarray,
                 half_extent: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random ``cells`` x ``cells`` grid over the square
    [-half_extent, half_extent]^2 of object coordinates, bilinearly interpolated at (x, y)."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    gx = np.clip((x / half_extent + 1.0) * 0.5 * cells, 0.0, cells - 1e-6)
    gy = np.clip((y / half_extent + 1.0) * 0.5 * cells, 0.0, cells - 1e-6)
    ix, iy = gx.astype(np.int64), gy.astype(np.int64)
    fx, fy = gx - ix, gy - iy
    top = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
    bottom = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _normals(xyz: np.ndarray) -> np.ndarray:
    """Unit normals of an organized, hole-free point map, facing the camera (n_z < 0)."""
    du = np.zeros_like(xyz)
    dv = np.zeros_like(xyz)
    du[:, 1:-1] = xyz[:, 2:] - xyz[:, :-2]
    du[:, 0], du[:, -1] = xyz[:, 1] - xyz[:, 0], xyz[:, -1] - xyz[:, -2]
    dv[1:-1] = xyz[2:] - xyz[:-2]
    dv[0], dv[-1] = xyz[1] - xyz[0], xyz[-1] - xyz[-2]
    n = np.cross(dv, du)  # (0, +, 0) x (+, 0, 0) points to -Z, towards the camera
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _segment_distance(px: np.ndarray, py: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance from points (px, py) to the polyline ``pts`` (K x 2)."""
    best = np.full(px.shape, np.inf)
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        vx, vy = bx - ax, by - ay
        t = np.clip(((px - ax) * vx + (py - ay) * vy) / max(vx * vx + vy * vy, 1e-18), 0.0, 1.0)
        best = np.minimum(best, np.hypot(px - ax - t * vx, py - ay - t * vy))
    return best


# --------------------------------------------------------------------------------------------
# Surfaces: albedo (H x W x 3) of the part from nuisance draws, in a fixed order per category.


def _streaks(rng: np.random.Generator, t: np.ndarray, pitch: float, span: float) -> np.ndarray:
    """1-D value noise in [-1, 1] along ``t`` (metres, within [-span, span]) with a new random
    value every ``pitch`` metres: the fine parallel streaks of a brushed finish."""
    cells = int(np.ceil(2 * span / pitch))
    values = rng.uniform(-1.0, 1.0, size=cells + 2)
    g = np.clip((t + span) / pitch, 0.0, cells)
    i = g.astype(np.int64)
    f = g - i
    return values[i] * (1 - f) + values[i + 1] * f


def _surface(category: str, nuis: np.random.Generator, xo: np.ndarray, yo: np.ndarray,
             size: int) -> np.ndarray:
    tint = np.asarray(_BASE_ALBEDO[category]) * nuis.uniform(0.94, 1.06, size=3)
    low = _value_noise(nuis, 6, xo, yo, 0.06)
    grain = nuis.normal(0.0, 1.0, size=(size, size))
    shade = 1.0 + 0.06 * low + 0.02 * grain
    albedo = tint[None, None, :] * shade[..., None]
    if category == "block":  # speckle: small random dark and light grains
        speck = _value_noise(nuis, 90, xo, yo, 0.06)
        albedo = albedo * (1.0 + 0.18 * np.sign(speck) * np.abs(speck) ** 0.5)[..., None]
    elif category == "plate":  # brushed along the object's x axis
        albedo = albedo * (1.0 + 0.10 * _streaks(nuis, yo, 0.0003, 0.07))[..., None]
    elif category == "shaft":  # turned on a lathe: fine rings around the axis
        albedo = albedo * (1.0 + 0.10 * _streaks(nuis, xo, 0.0003, 0.07))[..., None]
    elif category == "disc":  # circular brushing
        albedo = albedo * (1.0 + 0.10 * _streaks(nuis, np.hypot(xo, yo), 0.0003, 0.07))[..., None]
    elif category == "tile":  # 4 x 4 checker of two colours, plus speckle
        second = np.asarray((0.86, 0.83, 0.74)) * nuis.uniform(0.95, 1.05, size=3)
        checker = ((np.floor(xo / 0.02) + np.floor(yo / 0.02)) % 2).astype(bool)
        albedo = np.where(checker[..., None], second[None, None, :] * shade[..., None], albedo)
        speck = _value_noise(nuis, 90, xo, yo, 0.06)
        albedo = albedo * (1.0 + 0.08 * speck)[..., None]
    elif category == "cylinder":  # a printed label band with a red stripe
        label = np.asarray((0.88, 0.80, 0.30)) * nuis.uniform(0.95, 1.05, size=3)
        stripe = np.asarray((0.75, 0.18, 0.16)) * nuis.uniform(0.95, 1.05, size=3)
        lo = nuis.uniform(-0.02, -0.012)
        in_label = (xo > lo) & (xo < lo + 0.035)
        in_stripe = in_label & (np.abs(xo - (lo + 0.0175)) < 0.003)
        albedo = np.where(in_label[..., None], label[None, None, :] * shade[..., None], albedo)
        albedo = np.where(in_stripe[..., None], stripe[None, None, :] * shade[..., None], albedo)
    return albedo, grain


# --------------------------------------------------------------------------------------------
# Defects. Each returns (height change, albedo factor (H x W x 3) or None, no-measurement map or
# None, mask) evaluated at the object coordinates of every pixel.


def _pick_centre(rng: np.random.Generator, shape: _Shape, radius: float,
                 margin: float) -> tuple[np.ndarray, float]:
    """A random point of the part whose disc of ``radius`` stays ``margin`` inside the rim.

    The radius shrinks when no such point is found (thin parts such as the ring, or very
    small images whose pixel-based margin is large)."""
    for _ in range(12):
        cand = rng.uniform(-0.055, 0.055, size=(512, 2))
        depth = -shape.sdf(cand[:, 0], cand[:, 1])
        ok = depth > radius + margin
        if ok.any():
            return cand[int(np.argmax(ok))], radius
        radius *= 0.85
    best = int(np.argmax(depth))  # deepest candidate, radius cut to fit
    return cand[best], max(float(depth[best] - margin), 0.25 * radius)


def _defect(kind: str, spec: DefectSpec, rng: np.random.Generator, shape: _Shape, xo: np.ndarray,
            yo: np.ndarray, part: np.ndarray, pixel: float):
    # Keeps the 3 x 3 dilated mask (and so every pixel whose shading changes) on the part.
    margin = max(0.001, 1.6 * pixel)
    h_delta = np.zeros(xo.shape)
    albedo = None
    missing = None
    height = rng.uniform(*spec.height)
    contrast = rng.uniform(*spec.contrast)

    if kind == "crack":
        half_width = max(0.0006, 0.9 * pixel)
        safe = half_width + margin
        step = rng.uniform(0.45, 0.65) * shape.extent / 12
        # Random walks from random safe points, stopped where they would leave the safe zone;
        # the first full-length one (or the longest) is the crack.
        pts = None
        for _ in range(100):
            start, _ = _pick_centre(rng, shape, half_width, margin)
            heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.2, size=12))
            walk = [start]
            for angle in heading:
                nxt = walk[-1] + step * np.array([np.cos(angle), np.sin(angle)])
                if shape.sdf(nxt[:1], nxt[1:])[0] > -safe:
                    break
                walk.append(nxt)
            if pts is None or len(walk) > len(pts):
                pts = np.array(walk)
            if len(pts) == 13:
                break
        if len(pts) == 1:  # a dot-sized crack on a tiny image: still a visible groove
            pts = np.vstack([pts, pts + 1e-6])
        dist = _segment_distance(xo, yo, pts)
        inside = (dist < half_width) & part
        h_delta = np.where(inside, -height * (1.0 - dist / half_width), 0.0)
        albedo = np.where(inside[..., None], 1.0 - contrast, 1.0)
        return h_delta, albedo, missing, _dilate(inside) & part

    radius = float(np.sqrt(rng.uniform(*spec.area) * shape.area / np.pi))
    centre, radius = _pick_centre(rng, shape, radius, margin)
    dx, dy = xo - centre[0], yo - centre[1]
    d = np.hypot(dx, dy)

    if kind in ("bump", "dent"):
        amplitude = height * (1.0 if kind == "bump" else -1.0)
        s2 = np.clip(1.0 - (d / radius) ** 2, 0.0, 1.0)
        inside = (d < radius) & part
        h_delta = np.where(inside, amplitude * s2 * s2, 0.0)
        return h_delta, albedo, missing, _dilate(inside) & part

    if kind == "stain":
        phi = np.arctan2(dy, dx)
        rim = np.ones_like(phi)
        for k in (2, 3, 4):
            rim += rng.uniform(0.05, 0.15) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        rim *= radius
        inside = (d < rim) & part
        alpha = contrast * np.where(inside, np.clip((rim - d) / (0.2 * radius), 0.0, 1.0), 0.0)
        # Rust, oil or paint: a hue of its own, not only a darker shade of the part.
        tints = np.array([[0.42, 0.33, 0.26], [0.25, 0.30, 0.22], [0.55, 0.25, 0.45], [0.20, 0.25, 0.45]])
        tint = tints[rng.integers(len(tints))] * rng.uniform(0.9, 1.1, size=3)
        albedo = 1.0 - alpha[..., None] * (1.0 - tint)
        return h_delta, albedo, missing, inside  # albedo only: no shading leak, no dilation

    if kind == "hole":
        wall = np.clip((radius - d) / (0.25 * radius), 0.0, 1.0)  # steep wall, flat floor
        inside = (d < radius) & part
        h_delta = np.where(inside, -height * wall, 0.0)
        albedo = np.where(inside[..., None], 1.0 - contrast * wall[..., None], 1.0)
        missing = (d < 0.55 * radius) & part  # the sensor cannot see the bottom of the hole
        return h_delta, albedo, missing, _dilate(inside) & part

    raise ValueError(f"unknown defect {kind!r}")  # guarded by the caller


def _defect_spec(kind: str, given: Union[None, DefectSpec, Mapping]) -> DefectSpec:
    base = DEFECT_SPECS[kind]
    if given is None:
        return base
    if isinstance(given, DefectSpec):
        return given
    if not isinstance(given, Mapping):
        raise TypeError(f"defect_spec must be a DefectSpec or a dict, got {type(given).__name__}")
    unknown = set(given) - {"area", "height", "contrast"}
    if unknown:
        raise ValueError(f"defect_spec keys must be among area, height, contrast; got {sorted(unknown)}")
    clean = {}
    for key, value in given.items():
        lo, hi = (float(v) for v in value)
        if not (0 <= lo <= hi) or not np.isfinite(hi):
            raise ValueError(f"defect_spec[{key!r}] must be a range 0 <= low <= high, got {value!r}")
        clean[key] = (lo, hi)
    return replace(base, **clean)


# --------------------------------------------------------------------------------------------


def generate_sample(
    category: str,
    defect: Optional[str] = None,
    *,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    background: str = "none",
    defect_spec: Union[None, DefectSpec, Mapping] = None,
    return_layers: bool = False,
    thickness: Optional[float] = None,
) -> Union[Sample, tuple[Sample, dict[str, np.ndarray]]]:
    """Render one synthetic part, good (``defect=None`` or ``"good"``) or with a defect.

    Args:
        category: one of :data:`CATEGORIES`.
        defect: ``None``/``"good"`` or one of :data:`DEFECTS`.
        seed: non-negative integer; the same seed gives identical arrays, and the same seed with
            and without a defect gives the same part (pose, texture, lighting, noise).
        size: side of the square image in pixels (>= 32; default 400, below ~64 px a defect
            covers only a few pixels and its mask is relatively large).
        background: ``"none"``: table points are zero in xyz (as after plane removal);
            ``"plane"``: the table is measured too.
        defect_spec: difficulty of the defect, a :class:`DefectSpec` or a dict with some of
            its fields (e.g. ``{"height": (0.0002, 0.0004)}``); default :data:`DEFECT_SPECS`.
        thickness: the part's top this many metres above the table, its height profile scaled
            (a 1 mm gasket, a 2 mm sheet); default the shape's own (8 to 30 mm). A defect never
            goes deeper than 0.3 x the thickness above the table (1 mm on the default shapes).
        return_layers: also return a dict of noise-free layers: ``albedo`` (H x W x 3 float),
            ``height`` (m above the table), ``part`` (bool footprint), ``normals`` and
            ``intrinsics``.

    Returns:
        A :class:`mafr.types.Sample` with ``rgb`` (uint8 H x W x 3), ``xyz`` (float32
        H x W x 3, metres), ``label``, ``mask`` (bool H x W), ``defect_type`` and ``name``;
        or ``(sample, layers)`` when ``return_layers``.
    """
    if category not in _SHAPES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    kind = "good" if defect is None else defect
    if kind != "good" and kind not in DEFECTS:
        raise ValueError(f"defect must be None, 'good' or one of {tuple(DEFECTS)}, got {defect!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if background not in _BACKGROUNDS:
        raise ValueError(f"background must be one of {_BACKGROUNDS}, got {background!r}")
    if thickness is not None and not (isinstance(thickness, (int, float, np.floating)) and 0 < thickness <= 0.05):
        raise ValueError(f"thickness must be None or a number of metres in (0, 0.05], got {thickness!r}")
    spec = _defect_spec(kind, defect_spec) if kind != "good" else None
    size, seed = int(size), int(seed)
    shape = _SHAPES[category]
    nuis = _stream(seed, category, 0)

    # Nuisance draws, always in the same order whatever the defect.
    z0 = CAMERA_HEIGHT + nuis.uniform(-0.005, 0.005)
    tilt_x, tilt_y = np.tan(np.deg2rad(nuis.uniform(-2.0, 2.0, size=2)))
    theta = nuis.uniform(-np.pi, np.pi) if category in _ROUND else nuis.uniform(-0.3, 0.3)
    shift = nuis.uniform(-0.006, 0.006, size=2)
    scale = nuis.uniform(0.97, 1.03)
    # Lighting: direction within ~12 degrees, ambient and diffuse strength within 15%.
    azimuth, elevation = nuis.uniform(-0.2, 0.2, size=2)
    ambient, diffuse = _AMBIENT * nuis.uniform(0.85, 1.15), _DIFFUSE * nuis.uniform(0.85, 1.15)
    depth_sigma = nuis.uniform(*DEPTH_NOISE)
    camera_sigma = nuis.uniform(0.8, 2.0)

    k = camera_intrinsics(size)
    f, c = k[0, 0], k[0, 2]
    u = np.arange(size, dtype=np.float64)
    xn = np.broadcast_to((u[None, :] - c) / f, (size, size))
    yn = np.broadcast_to((u[:, None] - c) / f, (size, size))
    z_table = z0 / (1.0 - tilt_x * xn - tilt_y * yn)  # ray hits the tilted table
    xt, yt = xn * z_table - shift[0], yn * z_table - shift[1]
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    xo = (cos_t * xt + sin_t * yt) / scale
    yo = (-sin_t * xt + cos_t * yt) / scale

    sdf = shape.sdf(xo, yo)
    part = sdf < 0
    height = scale * shape.height(xo, yo, sdf)
    if thickness is not None:
        height = height * (float(thickness) / shape.top)

    albedo, grain = _surface(category, nuis, xo, yo, size)
    albedo = np.where(part[..., None], albedo, _TABLE_ALBEDO * (1.0 + 0.04 * grain)[..., None])
    depth_noise = nuis.normal(0.0, depth_sigma, size=(size, size))
    camera_noise = nuis.normal(0.0, camera_sigma, size=(size, size, 3))
    dropout = np.zeros((size, size), dtype=bool)
    vv, uu = np.mgrid[0:size, 0:size]
    px_scale = size / 224  # dropout sizes are set at 224 px and scale with the image
    for _ in range(int(nuis.integers(3, 9))):
        cu, cv = nuis.uniform(0, size, size=2)
        dropout |= (uu - cu) ** 2 + (vv - cv) ** 2 < (px_scale * nuis.uniform(1.0, 2.5)) ** 2

    mask = np.zeros((size, size), dtype=bool)
    missing = np.zeros((size, size), dtype=bool)
    if kind != "good":
        rng = _stream(seed, category, 1, zlib.crc32(kind.encode()))
        pixel = z0 / f  # metres per pixel on the table
        h_delta, factor, hole, mask = _defect(kind, spec, rng, shape, xo, yo, part, pixel / scale)
        floor = 0.001 if thickness is None else min(0.001, 0.3 * float(thickness))
        height = np.maximum(height + scale * h_delta, np.where(part, floor, 0.0))
        if factor is not None:
            albedo = albedo * factor
        if hole is not None:
            missing = hole

    ca, sa, ce, se = np.cos(azimuth), np.sin(azimuth), np.cos(elevation), np.sin(elevation)
    light = np.array([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]]) @ (
        np.array([[1.0, 0.0, 0.0], [0.0, ce, -se], [0.0, se, ce]]) @ _LIGHT)
    z_clean = z_table - height
    clean = np.stack([xn * z_clean, yn * z_clean, z_clean], axis=-1)
    normals = _normals(clean)
    shade = ambient + diffuse * np.clip(normals @ light, 0.0, None)
    rgb = np.clip(np.rint(255.0 * albedo * shade[..., None] + camera_noise), 0, 255).astype(np.uint8)

    grazing = np.abs(normals[..., 2]) < 0.15  # no return at grazing angles (part outline)
    valid = ~(dropout | grazing | missing)
    if background == "none":
        valid &= part
    z = z_clean + depth_noise
    xyz = np.where(valid[..., None], np.stack([xn * z, yn * z, z], axis=-1), 0.0).astype(np.float32)

    sample = Sample(
        rgb=rgb,
        xyz=xyz,
        label=int(kind != "good"),
        mask=mask,
        defect_type=kind,
        name=f"{category}/{kind}/{seed}",
    )
    if not return_layers:
        return sample
    layers = {
        "albedo": albedo.astype(np.float32),
        "height": height.astype(np.float32),
        "part": part,
        "normals": normals.astype(np.float32),
        "intrinsics": k,
    }
    return sample, layers


def sample_seed(seed: int, category: str, split: str, defect: str, index: int) -> int:
    """The seed :func:`write_dataset` gives sample ``index`` of ``<category>/<split>/<defect>``,
    so ``generate_sample(category, defect, seed=sample_seed(...))`` regenerates a written file."""
    parts = [seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()),
             zlib.crc32(defect.encode()), index]
    return int(np.random.SeedSequence(parts).generate_state(1, dtype=np.uint32)[0])


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def write_dataset(
    root: PathLike,
    categories: Optional[Iterable[str]] = None,
    *,
    n_train: int = 10,
    n_validation: int = 4,
    n_test_good: int = 8,
    n_test_per_defect: int = 4,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    background: str = "none",
    defect_specs: Optional[Mapping[str, Union[DefectSpec, Mapping]]] = None,
    thickness: Optional[float] = None,
) -> Path:
    """Write synthetic parts in the MVTec 3D-AD layout and return ``root``.

    ``root/<category>/{train,validation}/good/{rgb/000.png, xyz/000.tiff}`` and
    ``root/<category>/test/{good,<defect>}/{rgb,xyz,gt}/000.*`` (gt: 8-bit PNG, 0/255, all zero
    for good parts). Each sample's seed is derived from ``(seed, category, split, defect,
    index)``, so the same arguments give byte-identical files. ``defect_specs`` overrides the
    difficulty per defect type (see :class:`DefectSpec`). For the benchmark's tuning and report
    sets use :func:`write_benchmark`.
    """
    cats = list(CATEGORIES) if categories is None else list(categories)
    unknown = [c for c in cats if c not in _SHAPES]
    if unknown or not cats:
        raise ValueError(f"categories must be a non-empty subset of {CATEGORIES}, got {cats!r}")
    counts = {
        "n_train": _check_count("n_train", n_train),
        "n_validation": _check_count("n_validation", n_validation),
        "n_test_good": _check_count("n_test_good", n_test_good),
        "n_test_per_defect": _check_count("n_test_per_defect", n_test_per_defect),
    }
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(root)

    def emit(folder: Path, index: int, sample: Sample, with_gt: bool) -> None:
        for sub in ("rgb", "xyz") + (("gt",) if with_gt else ()):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.rgb).save(folder / "rgb" / f"{index:03d}.png")
        # Contiguous H x W x 3 float32, as the MVTec 3D-AD files are stored.
        tifffile.imwrite(folder / "xyz" / f"{index:03d}.tiff", sample.xyz, photometric="rgb")
        if with_gt:
            gt = sample.mask.astype(np.uint8) * 255
            Image.fromarray(gt).save(folder / "gt" / f"{index:03d}.png")

    for cat in cats:
        jobs = [("train", "good", counts["n_train"]), ("validation", "good", counts["n_validation"]),
                ("test", "good", counts["n_test_good"])]
        jobs += [("test", d, counts["n_test_per_defect"]) for d in DEFECTS]
        for split, kind, n in jobs:
            for i in range(n):
                s = sample_seed(int(seed), cat, split, kind, i)
                sample = generate_sample(cat, None if kind == "good" else kind, seed=s, size=size,
                                         background=background, thickness=thickness,
                                         defect_spec=(defect_specs or {}).get(kind))
                emit(root / cat / split / kind, i, sample, with_gt=split == "test")
    return root


def write_benchmark(
    root: PathLike,
    split: str = "report",
    *,
    difficulty: str = "standard",
    categories: Optional[Sequence[str]] = None,
    n_train: int = 10,
    n_test_good: Optional[int] = None,
    n_test_per_defect: Optional[int] = None,
    size: int = DEFAULT_SIZE,
    background: str = "none",
    thickness: Optional[float] = None,
) -> Path:
    """Write the *tuning* or *report* set of the generated benchmark (:data:`BENCHMARK_SPLITS`)
    under ``root`` in the MVTec 3D-AD layout: its categories, each with ``n_train`` good parts to
    fit, ``n_test_good`` good and ``n_test_per_defect`` parts of every defect type to test.
    ``difficulty`` (:data:`BENCHMARK_DIFFICULTIES`): ``"standard"`` (:data:`DEFECT_SPECS`, 12 good
    and 6 per type by default) or ``"hard"`` (:data:`HARD_DEFECT_SPECS`, other parts, 30 and 15).
    ``categories``: these instead of the split's, with its data seed (a split category's parts are
    the same as in the whole set). ``background="plane"``: raw scans, the table measured (the
    same parts as without it); ``thickness``: thin versions of the parts (see :func:`generate_sample`)."""
    if split not in BENCHMARK_SPLITS:
        raise ValueError(f"split must be one of {tuple(BENCHMARK_SPLITS)}, got {split!r}")
    if difficulty not in BENCHMARK_DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {tuple(BENCHMARK_DIFFICULTIES)}, got {difficulty!r}")
    split_categories, seed = BENCHMARK_SPLITS[split]
    specs, offset, good, per_defect = BENCHMARK_DIFFICULTIES[difficulty]
    return write_dataset(root, list(split_categories if categories is None else categories), n_train=n_train, n_validation=0,
                         n_test_good=good if n_test_good is None else n_test_good,
                         n_test_per_defect=per_defect if n_test_per_defect is None else n_test_per_defect,
                         size=size, seed=seed + offset, defect_specs=specs, background=background,
                         thickness=thickness)
