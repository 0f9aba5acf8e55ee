"""Calibration: what good parts look like through a fitted detector (docs/concepts.md, section 8).

The fourth stage of :class:`mafr.MAFRDetector` (docs/architecture.md). From held-out good parts'
residuals: the levels that put each modality's residual in units of "normal" (per distance from
the part's edge, per channel, per bin of the restored value), the level each fused map reaches
(:func:`levels`); the image threshold (:func:`threshold_from`) and the pixel threshold behind
``defect_mask`` (:func:`defect_mask`). "Where is the threshold set?": here.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import ScoringConfig
from .errors import TrainingDivergedError
from .scoring import (Residuals, binned_edge_scales, box_smooth, edge_normalised, edge_scales, modality_levels,
                      peak_score, position_level, position_normalised, upsampled_maps)


def levels(res: Residuals, sc: ScoringConfig, context_channels: int = 0) -> dict[str, torch.Tensor]:
    """Calibrated fusion's levels from good parts' residuals: ``edge_2d`` / ``edge_3d`` (and
    ``bins_2d`` / ``bins_3d`` with ``sc.level_bins``) and ``modality``, on the CPU."""
    err2, err3, valid_pixels, valid_grid = res.err2, res.err3, res.valid_pixels, res.valid_grid
    out: dict[str, torch.Tensor] = {}
    if sc.level_bins:
        for key, err, restored in (("2d", err2, res.restored2), ("3d", err3, res.restored3)):
            lv, edges = binned_edge_scales(err, restored, valid_grid, sc.edge_cap, sc.level_quantile, sc.level_bins)
            out.update({f"edge_{key}": lv.cpu(), f"bins_{key}": edges.cpu()})
    else:
        out.update(edge_2d=edge_scales(err2, valid_grid, sc.edge_cap, sc.level_quantile).cpu(),
                   edge_3d=edge_scales(err3, valid_grid, sc.edge_cap, sc.level_quantile).cpu())
    r2, r3 = edge_normalised(res, out, sc.channel_reduce_2d, context_channels)
    values_2d, values_3d = [], []
    # A few parts at a time: an update with a full replay store calibrates on hundreds,
    # whose maps at the network's resolution would otherwise all be held at once.
    for start in range(0, r2.shape[0], 16):
        part = slice(start, start + 16)
        m2, m3, valid = upsampled_maps(r2[part], r3[part], valid_pixels[part])
        values_2d.append(box_smooth(m2, sc.box5_passes, sc.box7_passes)[valid])
        values_3d.append((box_smooth(m3, sc.box5_passes, sc.box7_passes) * valid)[valid])
    out["modality"] = modality_levels(torch.cat(values_2d), torch.cat(values_3d)).cpu()
    return out


def uses_position_levels(sc: ScoringConfig, modalities: str) -> bool:
    """Whether calibration sets a level per position (``sc.position_levels``; ``"auto"``: on
    images alone, where no 3D part mask says where the part's edges are)."""
    return sc.position_levels == "on" or (sc.position_levels == "auto" and modalities == "rgb")


def threshold_from(scores: Sequence[float], sc: ScoringConfig) -> float:
    """The image threshold from good parts' scores, by ``sc.threshold_rule`` (docs/concepts.md, section 8)."""
    arr = np.asarray(scores, dtype=np.float64)
    if sc.threshold_rule == "false_alarm_rate":
        from statistics import NormalDist

        logs = np.log(np.clip(arr, 1e-12, None))
        spread = max(float(logs.std(ddof=1)) if logs.size > 1 else 0.0, sc.log_spread_floor)
        z = NormalDist().inv_cdf(1.0 - sc.target_false_alarm_rate)
        return float(np.exp(logs.mean() + z * spread))
    mean = float(arr.mean())
    # A floor on the spread: one or two calibration parts give no usable std.
    std = max(float(arr.std()), 0.1 * abs(mean))
    threshold = mean + sc.threshold_sigma * std
    if sc.threshold_at_least_max:
        threshold = max(threshold, float(arr.max()))
    return threshold


def defect_mask(fused: np.ndarray, is_anomalous: Optional[bool], calibration: dict[str, torch.Tensor],
                sc: ScoringConfig) -> tuple[Optional[float], Optional[np.ndarray]]:
    """Pixel threshold and mask of ``fused`` (input resolution); see ``ScoringConfig.mask_level``.
    No mask without an image decision (``is_anomalous=None``): an empty one would read as "good"."""
    if "pixel_threshold" not in calibration or is_anomalous is None:
        return None, None
    level = float(calibration["pixel_threshold"][0]) * sc.mask_level
    if not is_anomalous:
        return level, np.zeros(fused.shape, dtype=bool)
    return level, fused > max(level, sc.mask_relative * float(fused.max()))


def calibrate(held_out: Sequence, training: Sequence, sc: ScoringConfig, residuals_of: Callable[[Sequence], Residuals],
              maps_of: Callable[[Residuals, dict], tuple], context_channels: int = 0, modalities: str = "rgb+xyz",
              ) -> tuple[dict[str, torch.Tensor], float, list[float]]:
    """Everything that depends on what good parts look like through a fitted autoencoder, from
    ``held_out`` good parts' features: calibrated fusion's levels, the pixel threshold of
    ``defect_mask`` and the image threshold. Returns ``(calibration, threshold, held-out scores)``.

    ``residuals_of(feats)`` restores features (:func:`mafr.scoring.restore`), ``maps_of(res,
    calibration)`` turns residuals into maps and scores (:func:`mafr.scoring.maps_from_residuals`).
    With ``sc.threshold_parts="all"`` the ``training`` parts' scores join the threshold's, with
    ``sc.levels_parts="all"`` their restoration errors join the levels."""
    held_out, training = list(held_out), list(training)
    if not held_out:
        raise ValueError("calibration needs at least one good part; got none")
    calibration: dict[str, torch.Tensor] = {}
    res = residuals_of(held_out + training if sc.levels_parts == "all" else held_out)
    if sc.fusion == "calibrated":
        calibration.update(levels(res, sc, context_channels))
    n_held = len(held_out)
    if uses_position_levels(sc, modalities):
        # Each part is judged by the level of the others: its own map in the level would pull
        # its score down and set the threshold below what an unseen good part reaches.
        raw = torch.cat([maps_of(Residuals(*(t[start : start + 16] for t in res)), calibration)[0].cpu()
                         for start in range(0, res.err2.shape[0], 16)])  # 16 at a time, as above
        total, n = raw.sum(0), raw.shape[0]
        calibration["position"] = position_level(total, n)
        judged = n if sc.threshold_parts == "all" else n_held  # whose scores the threshold reads
        own = [position_normalised(raw[i : i + 1], position_level(total - raw[i], n - 1) if n > 1
                                   else calibration["position"]) for i in range(judged)]
        fused = torch.cat(own[:n_held])
        scores = peak_score(fused, sc.score)
        judged_training = [float(v) for v in peak_score(torch.cat(own[n_held:]), sc.score)] if judged > n_held else None
    else:
        # The held-out parts come first in the residuals: their maps set the thresholds below.
        fused, _, _, scores = maps_of(res.head(n_held), calibration)
        judged_training = None
    if not bool(torch.isfinite(scores).all()) or not bool(torch.isfinite(fused).all()):
        raise TrainingDivergedError(
            "the fitted autoencoder gives non-finite scores on good parts: it cannot judge a part, "
            "so it is not kept. Try precision='fp32' or a lower train.lr"
        )
    calibration["pixel_threshold"] = fused.amax().reshape(1).double().cpu()
    scores = [float(v) for v in scores]
    pooled = list(scores)
    if sc.threshold_parts == "all" and training:
        if judged_training is not None:  # the training parts are in the level: judged without their own map
            pooled += judged_training
        else:
            for start in range(0, len(training), 16):  # bounded memory for a large replay store
                pooled += [float(v) for v in maps_of(residuals_of(training[start : start + 16]), calibration)[3]]
    return calibration, threshold_from(pooled, sc), scores
