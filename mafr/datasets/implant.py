"""Defects implanted into real good parts at physical sizes (docs/concepts.md, "What a detector can see").

A good scan from the line, a copy of it with one defect: what :meth:`mafr.MAFRDetector.check`
shows a detector, and what ``benchmarks/real_scans.py`` tunes on. Sizes are in millimetres,
measured on the part's own surface from its organized xyz (the pixel pitch at the defect's
place); a part without 3D (``xyz=None``) has no millimetres, so its sizes are read as pixels of
the image. Where on the part: a seeded draw among the pixels with at least ``margin`` pixels of
part around them (halved until some pixel has; the measured support set aside first,
:mod:`mafr.support`).

Kinds (``KINDS``), each changing what a real defect of that kind changes:

- ``"stain"``: the colour 35 % darker in a disc of radius ``size``, soft-edged (dirt, oil).
- ``"patch"``: a disc of radius ``size`` replaced by a disc of the same part from elsewhere,
  rotated, blended at its rim: the part's own colours and texture in the wrong place
  (contamination, a foreign part), the case a colour-outlier test cannot see (after CutPaste,
  Li et al., CVPR 2021).
- ``"scratch"``: a line ``size`` long, 2 px wide, its brightness shifted by 25 % and its
  surface 0.1 mm lower (a cut, a scratch).
- ``"bump"`` / ``"dent"``: the surface moved 0.5 mm towards / away from the camera along the
  viewing ray, a smooth cap of radius ``size`` (a dent, a burr, a bent lip); colours unchanged.
- ``"hole"``: a disc of radius ``size`` with no measurement and its colour 80 % darker.

Nothing passed in is modified: each function returns new arrays.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from ..io import measured_pixels
from ..support import box_sum, set_aside_support

#: Every kind :func:`implant_defect` makes.
KINDS = ("stain", "patch", "scratch", "bump", "dent", "hole")
#: The kinds a detector of images alone, or of scans alone, is checked on by default
#: (:func:`kinds_for`). Never ``"patch"`` by default: on a part of one uniform colour it moves
#: nothing and so is no defect at all; ask for it on textured parts
#: (``det.check(parts, kinds=[..., "patch"])``).
IMAGE_KINDS = ("stain", "scratch", "hole")
SHAPE_KINDS = ("bump", "dent", "scratch", "hole")
#: Kinds that change only the geometry (an image alone cannot show them) or only the colour (a
#: scan alone cannot).
GEOMETRY_ONLY = ("bump", "dent")
COLOUR_ONLY = ("stain", "patch")
#: The default size of each kind: millimetres on a part with 3D, pixels on an image alone
#: (``det.check`` takes these as pixels of the network's input and scales them to the image).
DEFAULT_SIZES_MM = {"stain": 2.0, "patch": 3.0, "scratch": 8.0, "bump": 3.0, "dent": 3.0, "hole": 1.5}
DEFAULT_SIZES_PX = {"stain": 10.0, "patch": 16.0, "scratch": 40.0, "hole": 8.0}
#: How far the surface moves for a bump or a dent, and how deep a scratch is (metres).
RELIEF_M = 0.0005
SCRATCH_DEPTH_M = 0.0001


class Implanted(NamedTuple):
    """A copy of a good part with one defect: ``rgb`` (H x W x 3 uint8), ``xyz`` (H x W x 3
    float32, or ``None``), the defect's ``mask`` (H x W bool), ``kind``, ``size`` and its
    ``unit`` (``"mm"`` or ``"px"``)."""

    rgb: np.ndarray
    xyz: Optional[np.ndarray]
    mask: np.ndarray
    kind: str
    size: float
    unit: str


def kinds_for(modalities: str) -> tuple[str, ...]:
    """The kinds a detector of ``modalities`` is checked on by default (``"rgb"``, ``"xyz"``,
    ``"rgb+xyz"``); ``"patch"`` only when asked for."""
    if modalities == "rgb":
        return IMAGE_KINDS
    if modalities == "xyz":
        return SHAPE_KINDS
    return tuple(k for k in KINDS if k != "patch")


def _inner(part: np.ndarray, margin: int) -> np.ndarray:
    """Pixels with ``margin`` pixels of part all around (an erosion by a square)."""
    return box_sum(part.astype(np.int64), margin) == (2 * margin + 1) ** 2


#: On an image alone, a pixel's neighbourhood belongs to the part when its colour lies this many
#: robust standard deviations from the colour of the image's border (what a camera sees around a
#: part: table, conveyor, backdrop).
STANDS_OUT = 3.0


def _image_part(rgb: np.ndarray) -> np.ndarray:
    """Where the part is in an image alone: pixels whose neighbourhood's mean colour stands out
    (``STANDS_OUT``) from the border's median colour, closed over gaps of about 1/20 of the
    image (a tread's grooves, a part's holes). Every pixel when that finds under 2 % of the
    image or over 95 % (no border to tell a background by: the part fills the frame)."""
    h, w = rgb.shape[:2]
    b = max(2, min(h, w) // 64)
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                             rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]).astype(np.float64)
    median = np.median(border, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(border - median), axis=0), 2.0)  # 2 levels: 8-bit noise
    r = max(1, min(h, w) // 128)
    count = box_sum(np.ones((h, w)), r)
    local = np.stack([box_sum(rgb[..., c].astype(np.float64), r) / count for c in range(3)], axis=-1)
    stands_out = np.sqrt((((local - median) / spread) ** 2).sum(-1)) > STANDS_OUT
    close = max(2, min(h, w) // 40)
    part = _inner(~_inner(~stands_out, close), close)  # closing: dilate, then erode
    return part if 0.02 <= part.mean() <= 0.95 else np.ones((h, w), dtype=bool)


def _pitch_mm(xyz: Optional[np.ndarray], r: int, c: int) -> float:
    """Millimetres per pixel at ``(r, c)`` (1 on an image alone: sizes are pixels there)."""
    if xyz is None:
        return 1.0
    h, w = xyz.shape[:2]
    steps = [np.linalg.norm(xyz[r, c] - xyz[rr, cc]) for rr, cc in ((r, min(c + 1, w - 1)), (min(r + 1, h - 1), c))
             if np.all(xyz[rr, cc] != 0)]
    return 1000.0 * float(np.mean(steps)) if steps and np.mean(steps) > 0 else 0.3


def _along_ray(xyz: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """``xyz`` moved ``dz`` metres away from the camera along each pixel's viewing ray (negative:
    towards it), where measured."""
    z = xyz[..., 2]
    measured = z > 0
    scale = np.where(measured, (z + dz) / np.where(measured, z, 1.0), 1.0)
    return (xyz * scale[..., None]).astype(np.float32)


def part_pixels(rgb: np.ndarray, xyz: Optional[np.ndarray]) -> np.ndarray:
    """Where the part is (H x W bool): measured and not the support; on an image alone, where its
    colour stands out from the image border's (``STANDS_OUT``), or every pixel when nothing does."""
    if xyz is None:
        return _image_part(np.asarray(rgb))
    return measured_pixels(set_aside_support(np.asarray(xyz, dtype=np.float32))[0])


def implant_defect(rgb: np.ndarray, xyz: Optional[np.ndarray], kind: str, *, size: Optional[float] = None,
                   seed: int = 0, margin: int = 12, part: Optional[np.ndarray] = None) -> Implanted:
    """A copy of the good part ``(rgb, xyz)`` with one ``kind`` defect of ``size`` (mm; pixels
    when ``xyz`` is ``None``; default ``DEFAULT_SIZES_MM`` / ``DEFAULT_SIZES_PX``) at a seeded
    place on the part (``part``: its pixels from :func:`part_pixels`, when already known).
    Raises ``ValueError`` for an unknown kind, a shape kind on an image alone, or a part with no
    room for a defect."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an H x W x 3 uint8 array, got {rgb.dtype} {rgb.shape}")
    if xyz is None and kind in GEOMETRY_ONLY:
        raise ValueError(f"a {kind} changes the geometry: this part has no xyz")
    if xyz is not None:
        xyz = np.asarray(xyz, dtype=np.float32)
        if xyz.shape != rgb.shape:
            raise ValueError(f"xyz must be H x W x 3 like rgb {rgb.shape}, got {xyz.shape}")
    unit = "px" if xyz is None else "mm"
    if size is None:
        size = (DEFAULT_SIZES_PX if xyz is None else DEFAULT_SIZES_MM)[kind]
    if not size > 0:
        raise ValueError(f"size must be > 0, got {size}")
    rng = np.random.default_rng(seed)
    part = part_pixels(rgb, xyz) if part is None else np.asarray(part, dtype=bool)
    room = np.argwhere(_inner(part, margin))
    while not len(room) and margin > 1:  # a thin or small part: closer to its outline
        margin //= 2
        room = np.argwhere(_inner(part, margin))
    if not len(room):
        raise ValueError("no pixel has part all around it: the part is too small for an implanted defect")
    r0, c0 = (int(v) for v in room[rng.integers(len(room))])
    radius_px = size / _pitch_mm(xyz, r0, c0)
    vv, uu = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    dist = np.hypot(vv - r0, uu - c0)  # pixels
    out_rgb, out_xyz = rgb.astype(np.float32), None if xyz is None else xyz.copy()
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        along = (vv - r0) * np.sin(angle) + (uu - c0) * np.cos(angle)
        across = -(vv - r0) * np.cos(angle) + (uu - c0) * np.sin(angle)
        mask = (np.abs(along) <= radius_px / 2) & (np.abs(across) <= 1.0) & part
        factor = 1.25 if out_rgb[mask].mean() < 128 else 0.75
        out_rgb[mask] *= factor
        if out_xyz is not None:
            out_xyz = _along_ray(out_xyz, SCRATCH_DEPTH_M * mask)
    elif kind in ("bump", "dent"):
        cap = np.clip(1 - (dist / radius_px) ** 2, 0, None) * part  # smooth, zero at the rim
        sign = -1.0 if kind == "bump" else 1.0
        out_xyz = _along_ray(out_xyz, sign * RELIEF_M * cap)
        mask = cap * RELIEF_M > 0.1 * RELIEF_M
    else:
        disc = (dist <= radius_px) & part
        weight = np.clip(radius_px + 1 - dist, 0, 1)[..., None] * part[..., None]  # a 1 px soft rim
        if kind == "stain":
            out_rgb = out_rgb * (1 - 0.35 * weight)
        elif kind == "hole":
            out_rgb = out_rgb * (1 - 0.8 * weight)
            if out_xyz is not None:
                out_xyz[disc] = 0.0
        else:  # patch: the same part from elsewhere, rotated
            away = np.hypot(room[:, 0] - r0, room[:, 1] - c0)
            donors = room[away > 2 * radius_px]
            if not len(donors):  # a small part: the farthest place it has, if it does not overlap
                if away.max() <= radius_px:
                    raise ValueError("the part is too small to take a patch from elsewhere on it")
                donors = room[[int(away.argmax())]]
            r1, c1 = (int(v) for v in donors[rng.integers(len(donors))])
            theta = rng.uniform(0, 2 * np.pi)
            dv, du = vv - r0, uu - c0
            src_r = np.clip(np.rint(r1 + dv * np.cos(theta) - du * np.sin(theta)), 0, rgb.shape[0] - 1).astype(int)
            src_c = np.clip(np.rint(c1 + dv * np.sin(theta) + du * np.cos(theta)), 0, rgb.shape[1] - 1).astype(int)
            donor = rgb.astype(np.float32)[src_r, src_c]
            out_rgb = out_rgb * (1 - weight) + donor * weight
        mask = disc
    if out_xyz is not None:
        out_xyz = out_xyz.astype(np.float32)
    return Implanted(np.clip(np.rint(out_rgb), 0, 255).astype(np.uint8), out_xyz, mask.astype(bool), kind,
                     float(size), unit)
