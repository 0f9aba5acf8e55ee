"""Framing: which square of the input image the network sees (docs/concepts.md, "Framing").

``framing="image"`` shows the whole image (square-padded at the bottom and right), as the paper
and the reference code do. ``framing="part"`` shows a square window around the part: its side
is fixed when the detector is fitted (the largest fit part's extent plus a margin, as a
fraction of the image's longer side) and each part is centred in it by the bounding box of its
valid 3D points. A part that fills a third of the frame then gets about 1.5x the network pixels
per millimetre, so a defect a few pixels wide at 224 px becomes one that cells can resolve.

The side is the same for every part (not each part's own extent): a part that is larger than
the ones it was fitted on must look larger, not be rescaled into looking normal. A part that
would not fit the window widens it (never cropped off). The window is never wider than the
image's longer side, so a scan whose valid points fill the frame is shown whole. It may reach
past the image border, where it is filled with zeros (no colour, no 3D point), like the square
padding.

A window is ``(top, left, side)`` in input pixels.

Turning (``align="axis"``, docs/concepts.md, "Framing"): parts on a line lie at angles that ten
fit parts cannot all cover, and a part turned past every fit part is new to the autoencoder (an
edge at an unseen orientation restores badly). When every fit part's outline has a clear long
axis, the fit sets their common axis and each part, in ``fit`` and ``predict``, is turned about its
own centre until its long axis lies there, before it is framed: colour and geometry move
together, and each point's x, y turn about the vertical through the part's centre (as on a
turntable), so a surface still faces the way its pixels show it. Maps are turned back, so a
result is always in the input's pixels. Round parts (no clear axis) are never turned.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .io import measured_pixels

#: Extra width, as a fraction of the side, so a part's edge never touches the window's.
FIT_MARGIN = 0.1
#: A part larger than the fitted window widens it to its own extent times this.
OWN_MARGIN = 0.02

#: A fit set is turned only if every part's outline is at least this much longer than wide (the
#: square root of its second moments' ratio). Generated shapes: lying cylinders 3.65, shafts
#: 4.75, blocks 1.57, plates 1.47, round ones 1.00; the 43 real cable glands' support-free
#: outlines 1.19-1.36 (axes anywhere: noise to turn by). On the tuning set turning the shaft
#: gains and turning the plate loses (docs/ablations.md, "Turning parts to a common axis").
MIN_ELONGATION = 2.0
#: Fewer measured pixels than this have no axis worth turning to.
MIN_AXIS_PIXELS = 16

Window = tuple[int, int, int]


class Framing(NamedTuple):
    """How a fitted detector puts each part into the network's square (``MAFRDetector.framing_``)."""

    #: The window side as a fraction of the image's longer side; ``None``: the whole image.
    side: Optional[float] = None
    #: The long axis every part is turned to, in degrees counter-clockwise from the image rows as
    #: the image is shown; ``None``: parts are judged as they lie.
    axis: Optional[float] = None


class Turn(NamedTuple):
    """One part's turn: ``degrees`` counter-clockwise as shown, about pixel ``(row, col)``."""

    degrees: float
    row: float
    col: float


def part_extent(valid: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Bounding box ``(top, bottom, left, right)`` (bottom/right exclusive) of ``valid``; None if empty."""
    rows, cols = np.any(valid, axis=1), np.any(valid, axis=0)
    if not rows.any():
        return None
    top, bottom = int(np.argmax(rows)), int(len(rows) - np.argmax(rows[::-1]))
    left, right = int(np.argmax(cols)), int(len(cols) - np.argmax(cols[::-1]))
    return top, bottom, left, right


def fit_side(valid_masks: Iterable[np.ndarray]) -> float:
    """The window side for a fit set, as a fraction of each image's longer side: the largest
    part extent (its bounding box's longer side) times ``1 + FIT_MARGIN``."""
    fractions = []
    for valid in valid_masks:
        box = part_extent(valid)
        if box is not None:
            fractions.append(max(box[1] - box[0], box[3] - box[2]) / max(valid.shape))
    if not fractions:
        raise ValueError("no fit part has a valid 3D point, so there is no part to frame")
    return max(fractions) * (1.0 + FIT_MARGIN)


def window(valid: np.ndarray, side_fraction: Optional[float]) -> Window:
    """The square the network sees for one part. ``side_fraction=None`` (``framing="image"``)
    or a part with no valid 3D point: the whole image, square-padded at the bottom and right."""
    return _window_of_box(part_extent(valid) if side_fraction is not None else None, valid.shape, side_fraction)


def _window_of_box(box: Optional[tuple[int, int, int, int]], shape: tuple[int, int],
                   side_fraction: Optional[float]) -> Window:
    h, w = shape
    if box is None:
        return 0, 0, max(h, w)
    top, bottom, left, right = box
    extent = max(bottom - top, right - left)
    side = max(math.ceil(side_fraction * max(h, w)), math.ceil(extent * (1.0 + OWN_MARGIN)))
    # Never wider than the image: a part (or a scan with its background still measured) that
    # fills the frame is shown whole, not shrunk inside a black border.
    side = max(min(side, max(h, w)), extent)
    return (top + bottom) // 2 - side // 2, (left + right) // 2 - side // 2, side


def _overlap(win: Window, height: int, width: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the part of the window inside a ``height x width`` image, in image
    coordinates (empty when ``y1 <= y0`` or ``x1 <= x0``)."""
    top, left, side = win
    return max(top, 0), min(top + side, height), max(left, 0), min(left + side, width)


def crop(array: np.ndarray, win: Window) -> np.ndarray:
    """The window's pixels of ``array`` (``H x W [x C]``), zero where it leaves the image. A new
    array: the input is never modified."""
    top, left, side = win
    out = np.zeros((side, side) + array.shape[2:], dtype=array.dtype)
    y0, y1, x0, x1 = _overlap(win, array.shape[0], array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def paste(maps: "np.ndarray", win: Window, height: int, width: int) -> np.ndarray:
    """``(k, side, side)`` maps of the window -> ``(k, height, width)`` at the input's place;
    zero outside the window (no part there to judge)."""
    top, left, _ = win
    out = np.zeros((maps.shape[0], height, width), dtype=maps.dtype)
    y0, y1, x0, x1 = _overlap(win, height, width)
    if y1 > y0 and x1 > x0:
        out[:, y0:y1, x0:x1] = maps[:, y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def long_axis(valid: np.ndarray) -> Optional[tuple[float, float, float, float]]:
    """``(angle, elongation, row, col)`` of the ``valid`` pixels' outline: its long axis in degrees
    counter-clockwise from the rows as shown (in [-90, 90)), how much longer than wide it is,
    and its centre; None with fewer than :data:`MIN_AXIS_PIXELS` pixels."""
    # Second moments from the mask's row and column sums: no list of pixel coordinates (a
    # per-predict cost), and elementwise sums rather than BLAS (slow beside busy torch threads).
    box = part_extent(valid)
    if box is None:
        return None
    m = np.asarray(valid[box[0]:box[1], box[2]:box[3]], dtype=np.float32)  # the part's box: a quarter of a scan
    n = float(m.sum())
    if n < MIN_AXIS_PIXELS:
        return None
    r, c = np.arange(box[0], box[1], dtype=np.float64), np.arange(box[2], box[3], dtype=np.float64)
    per_row, per_col = m.sum(axis=1, dtype=np.float64), m.sum(axis=0, dtype=np.float64)
    row, col = float((per_row * r).sum()) / n, float((per_col * c).sum()) / n
    cyy = float((per_row * r * r).sum()) / n - row * row
    cxx = float((per_col * c * c).sum()) / n - col * col
    cxy = -(float(((m * c.astype(np.float32)).sum(axis=1, dtype=np.float64) * r).sum()) / n - row * col)  # y up
    half, spread = (cxx + cyy) / 2, math.hypot((cxx - cyy) / 2, cxy)
    elongation = math.sqrt((half + spread) / max(half - spread, 1e-12))
    return _wrap(0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy))), elongation, row, col


def fit_axis(valid_masks: Sequence[np.ndarray]) -> Optional[float]:
    """The axis a fit set's parts are turned to: the mean of their long axes (as lines, so
    -89 and 89 degrees agree), or None unless every part has one (:data:`MIN_ELONGATION`)."""
    axes = [long_axis(v) for v in valid_masks]
    if not axes or any(a is None or a[1] < MIN_ELONGATION for a in axes):
        return None
    doubled = np.radians([2 * a[0] for a in axes])
    return _wrap(0.5 * math.degrees(math.atan2(float(np.sin(doubled).mean()), float(np.cos(doubled).mean()))))


def turn_for(valid: np.ndarray, axis: Optional[float]) -> Optional[Turn]:
    """The turn that brings this part's long axis to ``axis`` (the smaller way round, under 90
    degrees); None when nothing is turned (no axis, or too few pixels to find the part's)."""
    own = long_axis(valid) if axis is not None else None
    return None if own is None else Turn(_wrap(axis - own[0]), own[2], own[3])


def turned_window(rgb: np.ndarray, xyz: np.ndarray, valid: np.ndarray, turn: Turn,
                  side_fraction: Optional[float]) -> tuple[Window, np.ndarray, np.ndarray]:
    """``(window, rgb, xyz)``: the square the network sees of the part turned by ``turn`` (a
    :func:`window` of the turned part, in the turned image's pixels) and its colour and geometry,
    sampled from the input in one step (turning the whole image first costs as much again as
    the rest of the preparation). Colour bilinearly, the image's border repeated; geometry by
    nearest neighbour, unmeasured where nothing was (no point invented between surfaces); each
    point's x, y turned about the centre of the part's points in the window (all of them, unless
    the part is wider than the image). Zero outside the image, as :func:`crop`."""
    h, w = valid.shape
    box, extent = None, part_extent(valid) if side_fraction is not None else None
    if extent is not None:
        # A linear function of the pixel position is extreme at a row's first or last pixel, so
        # those bound the turned part (no list of every pixel).
        top, bottom, left, right = extent
        inner = valid[top:bottom, left:right]
        rows = np.flatnonzero(inner.any(axis=1))
        first, last = inner[rows].argmax(axis=1) + left, right - 1 - inner[rows, ::-1].argmax(axis=1)
        ends_r = np.concatenate([rows, rows]).astype(np.float64) + top
        ends_c = np.concatenate([first, last]).astype(np.float64)
        moved_rows, moved_cols = _moved(ends_r - turn.row, ends_c - turn.col, turn, +1)
        box = (int(np.rint(moved_rows.min())), int(np.rint(moved_rows.max())) + 1,
               int(np.rint(moved_cols.min())), int(np.rint(moved_cols.max())) + 1)
    win = _window_of_box(box, (h, w), side_fraction)
    top, left, side = win
    # Only the input pixels the window reads are converted and sampled (about half the image).
    r0, r1, c0, c1 = _reach((top, left, side, side), turn, -1, h, w)
    if r1 <= r0 or c1 <= c0:  # the window lies wholly off the image
        return win, np.zeros((side, side, 3), dtype=np.uint8), np.zeros((side, side, 3), dtype=np.float32)
    grid = _grid((side, side), (top, left), turn, -1, (r0, c0), (r1 - r0, c1 - c0))
    planes = torch.from_numpy(np.ascontiguousarray(rgb[r0:r1, c0:c1], dtype=np.float32)).permute(2, 0, 1)[None]
    colour = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    y0, y1, x0, x1 = _overlap(win, h, w)
    if (y0, y1, x0, x1) != (top, top + side, left, left + side):  # the window leaves the image: black there
        inside = torch.zeros(side, side, dtype=torch.bool)
        inside[max(y0 - top, 0):max(y1 - top, 0), max(x0 - left, 0):max(x1 - left, 0)] = True
        colour = torch.where(inside, colour, torch.zeros(()))
    out_rgb = colour.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    # Nearest neighbour moves whole measurements: a pixel is measured where its source was.
    planes = torch.from_numpy(np.ascontiguousarray(xyz[r0:r1, c0:c1], dtype=np.float32)).permute(2, 0, 1)[None]
    moved = F.grid_sample(planes, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0].numpy()
    measured = measured_pixels(moved.transpose(1, 2, 0))
    points = np.zeros((side, side, 3), dtype=np.float32)
    if measured.any():
        kept = moved[:, measured]
        centre = kept[:2].mean(axis=1, dtype=np.float64).astype(np.float32)
        points[measured] = np.stack([*turned_points(kept[0], kept[1], turn.degrees, centre), kept[2]], axis=-1)
    return win, np.ascontiguousarray(out_rgb), points


def turned_points(x, y, degrees: float, centre=(0.0, 0.0)):
    """Points' camera ``x, y`` (NumPy or torch) turned as their pixels were turned by ``degrees``
    (counter-clockwise as shown) about ``centre``: camera x, y point along the image's columns
    and rows, so both turn the same way. One rule for parts turned to an axis and for the turned
    copies of :mod:`mafr.augment`."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    dx, dy = x - centre[0], y - centre[1]
    return c * dx + s * dy + centre[0], -s * dx + c * dy + centre[1]


def turned_back(maps: torch.Tensor, win: Window, turn: Turn, height: int, width: int) -> np.ndarray:
    """``(k, S, S)`` network-resolution maps of a turned part's window -> ``(k, height, width)``
    at the input's size and place, as :func:`paste` after a bilinear resize gives them for a
    part as it lies (zero where the window does not reach)."""
    top, left, side = win
    r0, r1, c0, c1 = _reach((top, left, side, side), turn, -1, height, width)  # the input pixels it covers
    out = torch.zeros((maps.shape[0], height, width), dtype=torch.float32)
    if r1 > r0 and c1 > c0:
        grid = _grid((r1 - r0, c1 - c0), (r0, c0), turn, +1, (top, left), (side, side))
        sampled = F.grid_sample(maps[None].float().cpu(), grid, mode="bilinear", padding_mode="border",
                                align_corners=False)[0]
        # Outside the window's own pixels nothing was judged: zero, as paste leaves it.
        sampled.mul_(((grid >= -1) & (grid < 1)).all(dim=-1))
        out[:, r0:r1, c0:c1] = sampled
    return out.numpy()


def _reach(box: tuple[int, int, int, int], turn: Turn, way: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: the pixels of a ``height x width`` image that the ``(top, left,
    rows, cols)`` box reaches when turned by ``turn`` (``way`` as in :func:`_moved`): its corners
    turned, as a bounding box with a pixel to spare for interpolation, clipped to the image."""
    top, left, rows, cols = box
    r, c = _moved(np.array([top, top, top + rows, top + rows], dtype=np.float64) - turn.row,
                  np.array([left, left + cols, left, left + cols], dtype=np.float64) - turn.col, turn, way)
    return (max(int(np.floor(r.min())) - 1, 0), min(int(np.ceil(r.max())) + 2, height),
            max(int(np.floor(c.min())) - 1, 0), min(int(np.ceil(c.max())) + 2, width))


def _grid(shape: tuple[int, int], origin: tuple[int, int], turn: Turn, way: int, source_origin: tuple[int, int],
          source_shape: tuple[int, int]) -> torch.Tensor:
    """The ``grid_sample`` grid for a ``shape`` output whose first pixel sits at image pixel
    ``origin``: each output pixel reads the place ``turn`` (``way`` as in :func:`_moved`) takes
    it to, in a source of ``source_shape`` whose first pixel sits at ``source_origin``. The map
    is affine, so three points fix it (a per-pixel computation in NumPy cost as much as the rest
    of the preparation)."""
    (h, w), (sh, sw) = shape, source_shape

    def source_at(x: float, y: float) -> tuple[float, float]:  # normalised output -> normalised source
        row, col = origin[0] + ((y + 1) * h - 1) / 2, origin[1] + ((x + 1) * w - 1) / 2
        r, c = _moved(np.array(row - turn.row), np.array(col - turn.col), turn, way)
        return (2 * (float(c) - source_origin[1]) + 1) / sw - 1, (2 * (float(r) - source_origin[0]) + 1) / sh - 1

    o, ex, ey = source_at(0, 0), source_at(1, 0), source_at(0, 1)
    # affine_grid's normalised output coordinates, combined by broadcasting: affine_grid's own
    # matrix product took 0.7 ms of a 4 ms turn on 2 CPU cores.
    xs = (2 * torch.arange(w, dtype=torch.float32) + 1) / w - 1
    ys = (2 * torch.arange(h, dtype=torch.float32) + 1) / h - 1
    gx = (ex[0] - o[0]) * xs[None, :] + (ey[0] - o[0]) * ys[:, None] + o[0]
    gy = (ex[1] - o[1]) * xs[None, :] + (ey[1] - o[1]) * ys[:, None] + o[1]
    return torch.stack([gx, gy], dim=-1)[None]


def _moved(rows: np.ndarray, cols: np.ndarray, turn: Turn, way: int) -> tuple[np.ndarray, np.ndarray]:
    """Where pixels at ``(rows, cols)`` from the turn's centre go when the content turns by
    ``turn`` (``way=+1``) or back (``-1``), in image pixels."""
    t = math.radians(way * turn.degrees)
    c, s = math.cos(t), math.sin(t)
    # Counter-clockwise as shown, with rows growing downwards.
    return turn.row - s * cols + c * rows, turn.col + c * cols + s * rows


def _wrap(degrees: float) -> float:
    """``degrees`` as the same line's angle in [-90, 90)."""
    return (degrees + 90.0) % 180.0 - 90.0
