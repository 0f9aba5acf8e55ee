"""Judging: network-resolution maps -> the :class:`mafr.AnomalyResult` a user gets.

The last step of ``predict`` (docs/architecture.md): maps back at the input's size and place,
the fail-closed checks on what came out, the decision against the threshold, and the defect
mask. "Where is a part called good?": here, and only with a finite threshold: without one the
decision is ``None`` (flag ``no_threshold``), never a "good" nobody judged.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import _integrity
from . import calibration as _calibration
from . import errors as _errors
from . import framing as _framing
from .config import MAFRConfig
from .preparation import Prepared
from .types import AnomalyResult


def decision(score: float, threshold: Optional[float]) -> Optional[bool]:
    """``score > threshold``; ``None`` without a finite threshold: no decision, never a "good"
    nobody judged (fail closed)."""
    return bool(score > threshold) if threshold is not None and math.isfinite(threshold) else None


def to_input_resolution(maps: torch.Tensor, prep: Prepared) -> np.ndarray:
    """``(k, S, S)`` network-resolution maps -> ``(k, H, W)`` float32 at the input RGB's size."""
    if prep.turn is not None:  # a turned part: its window's maps turned back onto the input
        return _framing.turned_back(maps, prep.window, prep.turn, prep.height, prep.width)
    side = prep.window[2]
    up = F.interpolate(maps.unsqueeze(0), size=(side, side), mode="bilinear", align_corners=False)[0]
    return _framing.paste(up.cpu().numpy().astype(np.float32), prep.window, prep.height, prep.width)


def judge(preps: Sequence[Prepared], fused: torch.Tensor, m2d: torch.Tensor, m3d: torch.Tensor, scores: torch.Tensor,
          threshold: float, calibration: Mapping[str, torch.Tensor], config: MAFRConfig,
          model_tensors: Callable[[], Mapping[str, torch.Tensor]]) -> list[AnomalyResult]:
    """One result per prepared part from its fused, 2D and 3D maps and score. ``model_tensors``
    is called only when a result is non-finite, to tell a corrupt detector from a bad input."""
    results = []
    for i, prep in enumerate(preps):
        maps = to_input_resolution(torch.stack([fused[i], m2d[i], m3d[i]]), prep)
        score = float(scores[i])
        # Fail closed: a result that cannot be trusted is an error, never is_anomalous=False.
        _integrity.check_result(maps, score, float(threshold), model_tensors)
        if not bool(fused[i].any()):
            raise _errors.InvalidInputError(
                "the fused anomaly map is zero everywhere: no position has both usable image and 3D "
                "content, so the part cannot be judged"
            )
        flags = list(prep.flags)
        is_anomalous = decision(score, threshold)
        if is_anomalous is None:
            flags.append("no_threshold")
        pixel_threshold, defect_mask = _calibration.defect_mask(maps[0], is_anomalous, dict(calibration), config.scoring)
        results.append(
            AnomalyResult(
                score=score,
                is_anomalous=is_anomalous,
                threshold=float(threshold),
                defect_mask=defect_mask,
                pixel_threshold=pixel_threshold,
                anomaly_map=np.clip(maps[0], 0, None),
                map_2d=np.clip(maps[1], 0, None) if config.modalities != "xyz" else np.zeros_like(maps[1]),
                map_3d=np.clip(maps[2], 0, None) if config.modalities != "rgb" else np.zeros_like(maps[2]),
                valid_mask=prep.valid_input,
                rgb=prep.rgb,
                depth=prep.depth,
                flags=tuple(flags),
            )
        )
    return results
