"""From restored features to anomaly maps and scores (SPEC.md, "Scoring").

Residual per modality = L2 norm over channels of (restored - input) at each grid position; the
maps are brought to the network's input resolution, fused (a product by default: high only where
both modalities fail to restore), zeroed where no 3D data exists, box-smoothed, and the image
score is ``max(map) / sqrt(mean of its non-zero values)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

FusionMode = Literal["product", "sum", "max", "rgb", "xyz"]


def residual_map(target: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` pair -> ``(B, H, W)`` L2 norm of the restoration error."""
    return (restored - target).norm(dim=-1)


def fuse(map_2d: torch.Tensor, map_3d: torch.Tensor, mode: FusionMode = "product") -> torch.Tensor:
    if mode == "product":
        return map_2d * map_3d
    if mode == "sum":
        return map_2d + map_3d
    if mode == "max":
        return torch.maximum(map_2d, map_3d)
    if mode == "rgb":
        return map_2d.clone()
    if mode == "xyz":
        return map_3d.clone()
    raise ValueError(f"unknown fusion mode {mode!r}; expected one of product, sum, max, rgb, xyz")


def box_smooth(maps: torch.Tensor, box5_passes: int = 5, box7_passes: int = 3) -> torch.Tensor:
    """Repeated box filters on ``(B, H, W)`` maps (edges use the mean of the pixels inside)."""
    x = maps.unsqueeze(1)
    for k, passes in ((5, box5_passes), (7, box7_passes)):
        for _ in range(passes):
            x = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    return x.squeeze(1)


def image_score(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B,)``: peak over the RMS-like level of the non-zero part of the map,
    so a sharp local peak stands out whatever the overall error level of the part."""
    flat = maps.flatten(1)
    nonzero = flat != 0
    count = nonzero.sum(dim=1).clamp(min=1)
    mean_nz = (flat * nonzero).sum(dim=1) / count
    peak = flat.amax(dim=1)
    return torch.where(mean_nz > 0, peak / mean_nz.clamp(min=1e-12).sqrt(), torch.zeros_like(peak))


def score_maps(
    res_2d: torch.Tensor,
    res_3d: torch.Tensor,
    valid_pixels: torch.Tensor,
    *,
    mode: FusionMode = "product",
    box5_passes: int = 5,
    box7_passes: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid residuals ``(B, g, g)`` + pixel validity ``(B, S, S)`` -> fused map, 2D map, 3D map
    (each ``(B, S, S)``, smoothed) and image scores ``(B,)``.

    Validity is dilated by one pixel, matching the 3 x 3 pooling that spreads 3D features.
    """
    size = valid_pixels.shape[-1]
    up = F.interpolate(torch.stack([res_2d, res_3d], 1), size=(size, size), mode="bilinear", align_corners=False)
    m2d, m3d = up[:, 0], up[:, 1]
    valid = F.max_pool2d(valid_pixels.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0
    m3d = m3d * valid
    fused = fuse(m2d, m3d, mode) * valid
    fused = box_smooth(fused, box5_passes, box7_passes)
    # Smoothing bleeds into invalid pixels; the score keeps SPEC's "no 3D -> 0" rule.
    fused = fused * valid
    scores = image_score(fused)
    return fused, box_smooth(m2d, box5_passes, box7_passes), box_smooth(m3d, box5_passes, box7_passes) * valid, scores
