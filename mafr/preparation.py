"""Preparing inputs: one part as the sensor gave it -> the network's input square.

The first stage of :class:`mafr.MAFRDetector` (docs/architecture.md): read the part as the
config's modalities ask (:func:`load_part`), set a raw scan's measured support aside
(:mod:`mafr.support`), frame it (:mod:`mafr.framing`), resize colour and geometry to the
network's input, fill sensor dropouts, and refuse what cannot be judged before any feature is
computed (:func:`mafr._integrity.judge_input`). Nothing here is learned: the only fitted value it
reads is how parts are framed (window side, axis), which :func:`fit_window` sets from the fit parts.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import _integrity
from . import errors as _errors
from . import framing as _framing
from . import support as _support
from .config import MAFRConfig
from .extractors.rgb import IMAGENET_MEAN, IMAGENET_STD
from .io import as_sample, load_rgb, load_xyz, measured_pixels, resize_nearest
from .projection import fill_small_holes, resize_xyz_mean


class Prepared:
    """One sample in network coordinates plus what is needed to map results back."""

    __slots__ = ("image", "xyz", "valid", "height", "width", "rgb", "depth", "valid_input", "flags", "window",
                 "framing", "turn")

    def __init__(self, image, xyz, valid, height, width, rgb, depth, valid_input, flags=(), window=None, framing=None,
                 turn=None):
        self.image, self.xyz, self.valid = image, xyz, valid
        self.height, self.width, self.rgb, self.depth = height, width, rgb, depth
        self.valid_input = valid_input
        #: Why the result is suspicious (see _integrity.judge_input); empty for ordinary parts.
        self.flags = tuple(flags)
        #: The input square the network saw, ``(top, left, side)`` (mafr.framing).
        self.window = window if window is not None else (0, 0, max(height, width))
        #: The fitted :class:`mafr.framing.Framing` it was framed with (``None``: the whole image as it lies).
        self.framing = framing
        #: How the part was turned before framing (:class:`mafr.framing.Turn`; ``None``: as it lies).
        #: ``window`` is in the turned image's pixels.
        self.turn = turn


def describe(item: Any) -> str:
    """A part's name or file names for error messages; 'arrays' when it has neither."""
    name = getattr(item, "name", None)
    if name:
        return str(name)
    rgb, xyz = (item.rgb, item.xyz) if hasattr(item, "rgb") else (item if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None))
    files = [str(x) for x in (rgb, xyz) if isinstance(x, (str, os.PathLike))]
    return " + ".join(files) if files else "arrays"


@contextlib.contextmanager
def naming_part(i: int, n: int, item: Any):
    """Re-raise a mafr error about one part of a list with which part it is: a long fit set's
    bad part is named, not just what is wrong with it."""
    try:
        yield
    except _errors.MAFRError as err:
        raise type(err)(f"part {i + 1} of {n} ({describe(item)}): {err}", path=err.path) from err


def good_parts(samples: Any, what: str, modalities: str) -> list:
    """``fit``'s, ``update``'s and ``calibrate``'s input: a non-empty iterable of good parts, each
    checked as a sample of the config's modalities (:func:`mafr.io.as_sample`)."""
    if isinstance(samples, (str, bytes)) or not hasattr(samples, "__iter__"):
        raise _errors.InputTypeError(
            f"{what} expects an iterable of good samples (mafr.Sample or (rgb, xyz) tuples), got {type(samples).__name__}"
        )
    items = [as_sample(s, modalities) for s in samples]
    if not items:
        raise _errors.InvalidInputError(f"{what} needs at least one good sample; got none (an empty fit set)")
    return items


def depth_image(xyz: np.ndarray) -> np.ndarray:
    """A grey H x W x 3 uint8 rendering of a scan's depth (near is bright, unmeasured black):
    the picture overlays draw on when a part is judged on 3D alone."""
    z = xyz[..., 2]
    valid = measured_pixels(xyz)
    out = np.zeros(z.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = np.percentile(z[valid], [1, 99])
        out[valid] = np.clip(255 * (hi - z[valid]) / max(hi - lo, 1e-9) * 0.8 + 40, 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1)


def load_modalities(item: Any, modalities: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(rgb, xyz)`` of one part as ``modalities`` reads it: ``xyz`` is ``None`` for ``"rgb"``;
    for ``"xyz"`` the image is a grey rendering of the depth (overlays only)."""
    sample = as_sample(item, modalities)
    missing = [name for name in ("rgb", "xyz") if name in modalities.split("+") and getattr(sample, name) is None]
    if missing:
        given = {"rgb": "3D alone (modalities='xyz')", "xyz": "images alone (modalities='rgb')"}[missing[0]]
        raise _errors.InvalidInputError(
            f"this detector judges modalities={modalities!r} and needs {' and '.join(missing)} for every part, but "
            f"{describe(item)} has no {missing[0]}; a detector for {given} is fitted with "
            f"MAFRConfig(..., modalities={'xyz' if missing[0] == 'rgb' else 'rgb'!r})")
    if modalities == "rgb":
        return load_rgb(sample.rgb), None
    if modalities == "xyz":
        xyz = load_xyz(sample.xyz, None)
        return depth_image(xyz), xyz
    rgb = load_rgb(sample.rgb)
    return rgb, load_xyz(sample.xyz, rgb.shape[:2])


def load_part(item: Any, config: MAFRConfig, warn: bool = True) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """``(rgb, xyz, flags)`` of one part, its measured support set aside (``config.support``;
    :mod:`mafr.support`). Where part and support cannot be told apart the scan is kept as it
    came, with a warning and the flag ``"support_unclear"``: judged, but never silently."""
    rgb, xyz = load_modalities(item, config.modalities)
    if xyz is None or config.support == "keep":
        return rgb, xyz, []
    xyz, report = _support.set_aside_support(xyz)
    if report.status != "unclear":
        return rgb, xyz, []
    if warn:
        warnings.warn(f"mafr: {describe(item)}: cannot tell the part from its support, so the scan is judged "
                      f"with its support in it ({report.describe()}); see result.flags",
                      _errors.DegenerateInputWarning, stacklevel=5)
    return rgb, xyz, ["support_unclear"]


def fit_window(items: Sequence[Any], config: MAFRConfig) -> _framing.Framing:
    """How a fit on ``items`` frames parts: the window side (None: ``framing="image"``) and the
    axis parts are turned to (None: ``align="none"``, images alone, or a fit part with no clear
    long axis)."""
    aligns = config.align == "axis" and config.modalities != "rgb"
    if config.framing == "image" and not aligns:
        return _framing.Framing()
    masks = []
    for i, item in enumerate(items):
        with naming_part(i, len(items), item):
            rgb, xyz, _ = load_part(item, config, warn=False)  # extraction warns, once per part
        masks.append(measured_pixels(xyz) if xyz is not None else np.ones(rgb.shape[:2], dtype=bool))
    axis = _framing.fit_axis(masks) if aligns else None
    if config.framing == "image":
        return _framing.Framing(None, axis)
    try:
        return _framing.Framing(_framing.fit_side(masks), axis)
    except ValueError as err:
        raise _errors.InvalidInputError(f"{err}: every fit part's 3D map is empty") from None


def prepare(item: Any, config: MAFRConfig, device: torch.device, framing: Optional[_framing.Framing] = None) -> Prepared:
    """One sample in network coordinates on ``device``, turned and framed as ``framing`` says (from
    :func:`fit_window`; ``None``: the whole image, as it lies)."""
    rgb, xyz, support_flags = load_part(item, config)
    h, w = rgb.shape[:2]
    size = config.rgb.image_size
    framing = framing if framing is not None else _framing.Framing()
    # Judged on the image alone, every pixel is content (nothing was not measured).
    valid_input = measured_pixels(xyz) if xyz is not None else np.ones((h, w), dtype=bool)
    turn = _framing.turn_for(valid_input, framing.axis) if xyz is not None else None
    # The window's colour and geometry, zero outside the image (square padding or a window past
    # the border); a turned part's window is in the turned image's pixels, and the result keeps
    # the input's own (rgb, depth, valid_input).
    if turn is None:
        win = _framing.window(valid_input, framing.side)
        seen_rgb = _framing.crop(rgb, win)
        seen_xyz = None if xyz is None else _framing.crop(np.asarray(xyz, dtype=np.float32), win)
    else:
        win, seen_rgb, seen_xyz = _framing.turned_window(rgb, xyz, valid_input, turn, framing.side)
    # Resize: bicubic for colour, nearest or mean for geometry so no point is invented between surfaces.
    from PIL import Image

    framed = Image.fromarray(seen_rgb)
    img = np.asarray(framed.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    image = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1).copy())
    if xyz is None:
        xyz_s, valid = torch.zeros(size, size, 3), torch.ones(size, size, dtype=torch.bool)
    elif config.points.resize == "mean":
        xyz_s, valid = resize_xyz_mean(seen_xyz, size)
    else:
        xyz_s = torch.from_numpy(np.ascontiguousarray(resize_nearest(seen_xyz, size, size)))
        valid = (xyz_s != 0).any(dim=-1)
    # On the detector's device from here: the hole filling is the costliest step left on a
    # CPU, and a GPU does it in a fraction of that.
    xyz_s, valid = xyz_s.to(device), valid.to(device)
    # Fail closed before any feature is computed: judged on what was measured, not filled.
    flags = support_flags + _integrity.judge_input(rgb, valid, image=config.modalities != "xyz")
    if config.points.fill_holes and xyz is not None:
        xyz_s, valid = fill_small_holes(xyz_s, valid, config.points.fill_holes)
    depth = None if xyz is None else xyz[..., 2].copy()
    return Prepared(image.to(device), xyz_s, valid, h, w, rgb, depth, valid_input, flags, win, framing, turn)
