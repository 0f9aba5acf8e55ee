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
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np

#: Extra width, as a fraction of the side, so a part's edge never touches the window's.
FIT_MARGIN = 0.1
#: A part larger than the fitted window widens it to its own extent times this.
OWN_MARGIN = 0.02

Window = tuple[int, int, int]


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
    h, w = valid.shape
    box = part_extent(valid) if side_fraction is not None else None
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
