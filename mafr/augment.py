"""Rotated copies of training parts: poses a handful of fit parts do not show.

Parts on a line lie at angles that ten fit parts cannot all cover; a part turned a few degrees
past every fit part is then new to the autoencoder (an edge at an unseen orientation restores
badly), and a good part is flagged. ``config.train.rotations`` adds, for each *training* part,
copies turned by those angles about the network square's centre: the image, the organized
geometry and its validity move together, and each point's x, y are turned about the camera
axis so that the surface faces the way the moved pixels show it (docs/concepts.md, "Rotated
copies"). The copies only teach the autoencoder and its normalisation; levels and the
threshold are measured on the real parts alone, so they describe what the line gives.

A detector with levels per position (``scoring.position_levels``; by default, images alone)
assumes parts sit in one place and pose in the frame, which turned copies contradict: it makes
none (on the shared real tyres, turned copies took I-AUROC 0.757 -> 0.608; docs/ablations.md).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from . import errors as _errors
from . import framing as _framing
from . import preparation as _preparation
from . import runtime as _runtime
from . import training as _training
from .calibration import uses_position_levels
from .preparation import Prepared


def rotated(prep: Prepared, degrees: float) -> Prepared:
    """``prep`` turned by ``degrees`` (counter-clockwise as the image is shown) about the
    centre of the network square; a new :class:`Prepared`, ``prep`` is not modified. Colour
    is sampled bilinearly with the border repeated (no black corners that no part shows);
    geometry by nearest neighbour (no point invented between surfaces) and unmeasured outside."""
    size = prep.valid.shape[-1]
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # affine_grid maps each output pixel to where it samples the input: the inverse turn.
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=torch.float32, device=prep.image.device)
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    image = F.grid_sample(prep.image[None].float(), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)[0].to(prep.image.dtype)
    stacked = torch.cat([prep.xyz.permute(2, 0, 1), prep.valid[None].to(prep.xyz.dtype)])[None].float()
    moved = F.grid_sample(stacked, grid.to(stacked.device), mode="nearest", padding_mode="zeros", align_corners=False)[0]
    valid = moved[3] > 0.5
    # Content moved by the turn above: about the camera axis.
    xyz = torch.stack([*_framing.turned_points(moved[0], moved[1], degrees), moved[2]], dim=-1) * valid[..., None]
    return Prepared(image, xyz.to(prep.xyz.dtype), valid, prep.height, prep.width, prep.rgb, prep.depth,
                    prep.valid_input, prep.flags, prep.window, prep.framing, prep.turn)


def rotated_features(det, items: Sequence[Any], framing: Optional[float], progress: bool = False) -> list:
    """Features of each item's copies at ``det.config.train.rotations`` (none when it is empty or
    the detector sets levels per position), in item order, the angles of one item together.
    Items were checked and warned about when their own features were extracted; their copies do
    not warn again."""
    angles = tuple(det.config.train.rotations)
    out: list = []
    if not angles or uses_position_levels(det.config.scoring, det.config.modalities):
        return out
    for i, item in enumerate(_runtime.progress(items, desc="mafr: extracting rotated copies", enable=progress)):
        with _preparation.naming_part(i, len(items), item), warnings.catch_warnings():
            warnings.simplefilter("ignore", _errors.DegenerateInputWarning)
            prep = _preparation.prepare(item, det.config, det.device, framing)
        out.extend(det.extractors.extract([rotated(prep, a) for a in angles]))
    return out


def fit_copies(det, items: Sequence[Any], feats: Sequence, seed: int, progress: bool = False) -> list:
    """The copies a fit with ``seed`` trains on: those of the training parts its held-out split
    (:func:`mafr.training.fit_split`) leaves, framed as ``feats`` are."""
    _, train_idx, _ = _training.fit_split(len(feats), det.config.train.calibration_fraction, seed)
    return rotated_features(det, [items[i] for i in train_idx], _training.common_framing(feats), progress)
