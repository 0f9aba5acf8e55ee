"""The measured support of a raw scan: finding the table (fixture, conveyor) a part lies on and
setting it aside (docs/concepts.md, "Raw scans and the support surface").

A sensor measures the table as well as the part. Left in, the table fills the point map: a
detector frames the whole scan instead of the part, and the part's relief is a small share of
what the 3D features describe. MVTec 3D-AD's preprocessing removes it with a fixed 5 mm plane
tolerance, which also removes any part thinner than that (a gasket, a sheet, a label).

Here the support is the dominant plane of the scan's border frame, and how far from that plane a
point may lie and still be support follows what the frame itself measured: the spread of the
frame's distances to the plane after a 3 x 3 (separable) median (which keeps a part's edge where it is and
takes most of the sensor's noise out), times a margin. A 1 mm part on a support measured to
within a few tenths of a millimetre survives; on a support whose own unevenness is larger, the
tolerance grows with it, and what it would take with it is reported (:class:`SupportReport`).

The detector's preparation and :mod:`mafr.datasets.preprocess` share this one rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .framing import part_extent
from .io import measured_pixels

#: The frame is this share of the longer image side wide (10 px at 400 px, as the reference's).
BORDER_FRACTION = 0.025
#: A frame with fewer measured pixels than this share has no support in it (a preprocessed scan).
MIN_FRAME_MEASURED = 0.3
#: A plane that explains fewer of the measured frame pixels than this is no support: the frame
#: holds clutter or the part itself, and nothing is set aside (the caller warns).
MIN_INLIER_SHARE = 0.6
#: The tolerance is this many times the 99th percentile of the frame's median-filtered distances.
TOLERANCE_MARGIN = 2.0
#: ... and never less than this (metres): the median still leaves quantisation steps.
MIN_TOLERANCE = 0.0002
#: ... and never more than the reference's fixed distance (metres).
MAX_TOLERANCE = 0.005
#: A pixel left above the support with fewer than _SPECK_MIN such pixels within _SPECK_RADIUS
#: pixels of it is a speck of support noise, not part.
_SPECK_RADIUS, _SPECK_MIN = 2, 6
#: ... and so is one joined (within _JOIN_STEP metres of height, or _JOIN_PITCHES times the
#: scan's pixel pitch if more) to fewer than _JOINED_MIN of its 8 neighbours above the support:
#: a part's surface is joined to its own.
_JOIN_STEP, _JOIN_PITCHES, _JOINED_MIN = 0.002, 4.0, 2
#: Hypotheses of the RANSAC plane (three frame points each) and at most this many frame points.
_ITERATIONS, _MAX_POINTS = 100, 2000
#: A hypothesis counts a frame point within this distance (metres) of it as an inlier.
_INLIER_DISTANCE = 0.003


@dataclass(frozen=True)
class SupportReport:
    """What was found under the part, and what setting it aside did.

    ``status``: ``"none"`` (the frame is not measured: no support in the scan, nothing done),
    ``"removed"`` (the support was set aside), ``"unclear"`` (the frame is measured but holds no
    dominant plane, or nothing stands above the plane: nothing was set aside, since part and
    support cannot be told apart). Distances in metres; shares of the measured pixels.
    """

    status: str
    plane: Optional[tuple[float, float, float, float]] = None
    noise: float = 0.0
    tolerance: float = 0.0
    kept_share: float = 1.0
    part_height: float = 0.0
    reason: str = ""

    def describe(self) -> str:
        if self.status == "none":
            return "no measured support in the scan's border"
        numbers = (f"tolerance {1000 * self.tolerance:.2f} mm (support noise {1000 * self.noise:.2f} mm), "
                   f"{100 * self.kept_share:.1f}% of measured pixels kept, part height about "
                   f"{1000 * self.part_height:.1f} mm")
        return f"{self.reason}: {numbers}" if self.reason else numbers


def border_frame(h: int, w: int, border: int) -> np.ndarray:
    """The ``border``-pixel frame of an ``h x w`` image, as a bool mask."""
    frame = np.zeros((h, w), dtype=bool)
    frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    return frame


def _lstsq_plane(pts: np.ndarray) -> np.ndarray:
    centre = pts.mean(axis=0)
    dev = pts - centre
    normal = np.linalg.eigh(np.einsum("ni,nj->ij", dev, dev))[1][:, 0]  # einsum: no BLAS (see _dot)
    return np.array([*normal, -float((normal * centre).sum())])


def _ransac_plane(pts: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The plane through most of ``pts`` and the share of them within ``_INLIER_DISTANCE``."""
    rng = np.random.default_rng(seed)
    if len(pts) > _MAX_POINTS:
        pts = pts[rng.integers(0, len(pts), _MAX_POINTS)]
    origin = pts.mean(axis=0)
    local = pts - origin
    tri = local[rng.integers(0, len(local), size=(_ITERATIONS, 3))]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normal, axis=1)
    ok = norm > 1e-12
    normal, tri = normal[ok] / norm[ok, None], tri[ok]
    if not len(normal):
        return _lstsq_plane(pts), 0.0
    offset = -(normal * tri[:, 0]).sum(axis=1)
    counts = (np.abs(_dot(local[:, None, :], normal[None]) + offset) < _INLIER_DISTANCE).sum(axis=0)
    best = int(np.argmax(counts))
    inliers = local[np.abs(_dot(local, normal[best]) + offset[best]) < _INLIER_DISTANCE]
    plane = (_lstsq_plane(inliers + origin) if len(inliers) >= 3
             else np.array([*normal[best], offset[best] - float((normal[best] * origin).sum())]))
    share = float((np.abs(_dot(pts, plane[:3]) + plane[3]) < _INLIER_DISTANCE).mean())
    return plane, share


def _dot(points: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """``points @ normal`` over the last axis, without BLAS: a multithreaded BLAS call in a
    process whose torch threads are still spinning after a forward pass ran 5-10x slower."""
    return points[..., 0] * normal[..., 0] + points[..., 1] * normal[..., 1] + points[..., 2] * normal[..., 2]


def box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``x`` (H x W) over the (2 radius + 1)-wide square around each pixel, zeros outside
    (an integral image: the cost does not grow with the square). A mask's sum is its count."""
    c = np.pad(x, radius + 1)[:-1, :-1].cumsum(0).cumsum(1)
    k = 2 * radius + 1
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def _joined(height: np.ndarray, mask: np.ndarray, step: float) -> np.ndarray:
    """How many of each pixel's 8 neighbours are in ``mask`` and within ``step`` of its height:
    a surface's pixels are joined to their neighbours, a speck at a wall's foot is not."""
    h, w = mask.shape
    hp = np.pad(height, 1)
    mp = np.pad(mask, 1)
    count = np.zeros((h, w), dtype=np.int8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                nb = (slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
                count += mp[nb] & (np.abs(hp[nb] - height) < step)
    return count


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _pseudo_median(height: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Separable 3 x 3 median (of three along rows, then along columns): keeps a step where it
    is, as a median does, at a fraction of the cost. A missing neighbour takes the pixel's own
    value, so gaps neither pull a pixel up nor down."""
    out = height
    for axis in (1, 0):
        nxt, prev, ok_n, ok_p = (np.roll(out, -1, axis), np.roll(out, 1, axis),
                                 np.roll(valid, -1, axis), np.roll(valid, 1, axis))
        # np.roll wraps around: the image's first and last rows/columns see only themselves.
        edge = [slice(None)] * 2
        edge[axis] = [0, -1]
        ok_n[tuple(edge)] = ok_p[tuple(edge)] = False
        out = _median3(np.where(ok_p, prev, out), out, np.where(ok_n, nxt, out))
    return out


def find_support(xyz: np.ndarray, *, seed: int = 0) -> tuple[SupportReport, Optional[np.ndarray]]:
    """Find the measured support of an organized ``H x W x 3`` scan: ``(report, support_mask)``.

    ``support_mask`` (H x W bool, ``None`` unless ``report.status == "removed"``) marks the
    measured pixels that are support: within the tolerance of the frame's plane, or behind it.
    The input is not modified.
    """
    h, w = xyz.shape[:2]
    border = max(2, round(BORDER_FRACTION * max(h, w)))
    if 2 * border >= min(h, w):
        return SupportReport("none"), None
    valid = measured_pixels(xyz)
    frame = border_frame(h, w, border)
    on_frame = frame & valid
    if on_frame.sum() < max(30, MIN_FRAME_MEASURED * frame.sum()):
        return SupportReport("none"), None
    pts = np.asarray(xyz, dtype=np.float32)
    plane, share = _ransac_plane(pts[on_frame].astype(np.float64), seed)
    if plane[3] < 0:  # the camera (the origin) on the positive side: heights grow towards it
        plane = -plane
    if share < MIN_INLIER_SHARE:
        return SupportReport("unclear", tuple(plane), reason=(
            f"the scan's border is measured but no plane explains it ({100 * share:.0f}% of its points "
            f"within {1000 * _INLIER_DISTANCE:.0f} mm of the best one)")), None
    height = np.where(valid, _dot(pts, plane[:3].astype(np.float32)) + np.float32(plane[3]), np.float32(0))
    smooth = _pseudo_median(height, valid)
    frame_dev = np.abs(smooth[on_frame & (np.abs(height) < _INLIER_DISTANCE)])
    noise = float(np.percentile(frame_dev, 99)) if frame_dev.size else 0.0
    tolerance = float(np.clip(TOLERANCE_MARGIN * noise, MIN_TOLERANCE, MAX_TOLERANCE))
    support = valid & (smooth <= tolerance)
    # A few support pixels in the noise's far tail survive any tolerance, most of them at the
    # foot of a wall, where the median also sees the part; alone in the frame, or beside a wall
    # they are not joined to, they would stretch the part's bounding box (framing) and look
    # like relief to the 3D features.
    above = valid & ~support
    # A slope rises more per pixel on a coarse scan: the step that still joins follows the pitch.
    frame_pts = pts[on_frame]
    pitch = float(np.median(np.linalg.norm(np.diff(frame_pts[: min(len(frame_pts), 2000)], axis=0), axis=1)))
    step = max(_JOIN_STEP, _JOIN_PITCHES * pitch)
    # Only where something stands above the support (plus the box's reach) can a speck be.
    box = part_extent(above)
    if box is not None:
        m = _SPECK_RADIUS + 1
        win = (slice(max(box[0] - m, 0), box[1] + m), slice(max(box[2] - m, 0), box[3] + m))
        a = above[win]
        support[win] |= a & ((box_sum(a.astype(np.int32), _SPECK_RADIUS) < _SPECK_MIN) | (_joined(height[win], a, step) < _JOINED_MIN))
    kept = valid & ~support
    n_kept = int(kept.sum())
    part_height = float(np.percentile(smooth[kept], 99)) if n_kept else 0.0
    report = SupportReport("removed", tuple(plane), noise, tolerance, n_kept / max(int(valid.sum()), 1), part_height)
    if n_kept < 30:
        return replace(report, status="unclear", reason="nothing stands above the measured support (the part is no "
                       "higher than the tolerance, or the scan shows only its support)"), None
    return report, support


def set_aside_support(xyz: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, SupportReport]:
    """``(xyz without its support, report)``: a copy with the support's pixels zeroed (no
    measurement), or ``xyz`` itself when nothing was set aside (``report.status`` says why)."""
    report, support = find_support(xyz, seed=seed)
    if support is None:
        return xyz, report
    return np.where(support[..., None], np.zeros((), dtype=xyz.dtype), xyz), report
