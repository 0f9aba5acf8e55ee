"""The composite restoration loss (SPEC.md, "Loss"): similarity (ZNSSD), edge-aware smoothness
and census, per modality, on channels-last feature grids ``(B, H, W, C)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6


def _zero_normalise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=-1, keepdim=True)
    return x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + _EPS)


def znssd(target: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """Zero-normalised SSD per position (over channels), averaged over positions and channels.

    Averaging over channels (instead of summing) keeps it on the same scale as the other terms
    whatever the feature width; it is 0 for any positive affine copy ``a * x + b``.
    """
    return (_zero_normalise(target) - _zero_normalise(restored)).pow(2).mean()


def smoothness(target: torch.Tensor, restored: torch.Tensor, first_two_channels: bool = False) -> torch.Tensor:
    """First-order smoothness of the residual, down-weighted across edges of the input:
    ``mean(|d residual| * exp(-|d mean_c(input)|))`` along both grid axes.

    ``first_two_channels`` reproduces the reference, which treats the residual like a flow field.
    """
    residual = restored - target
    if first_two_channels:
        residual = residual[..., :2]
    guide = target.mean(dim=-1)
    loss = residual.new_zeros(())
    for axis in (1, 2):
        d_res = residual.diff(dim=axis).abs().mean(dim=-1)
        weight = torch.exp(-guide.diff(dim=axis).abs())
        loss = loss + (d_res * weight).mean()
    return loss


def census(target: torch.Tensor, restored: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """L1 between ``kernel x kernel`` average-pooled input and restored grids (the reference's
    "census" term: it compares local neighbourhoods, not single positions)."""

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.permute(0, 3, 1, 2), kernel, stride=1, padding=kernel // 2, count_include_pad=False)

    return (pool(target) - pool(restored)).abs().mean()


def restoration_loss(
    target: torch.Tensor,
    restored: torch.Tensor,
    *,
    w_similarity: float = 1.0,
    w_smoothness: float = 1.0,
    w_census: float = 1.0,
    census_kernel: int = 7,
    smoothness_first_two_channels: bool = False,
) -> torch.Tensor:
    """Weighted sum of the three terms for one modality."""
    loss = target.new_zeros(())
    if w_similarity:
        loss = loss + w_similarity * znssd(target, restored)
    if w_smoothness:
        loss = loss + w_smoothness * smoothness(target, restored, smoothness_first_two_channels)
    if w_census:
        loss = loss + w_census * census(target, restored, census_kernel)
    return loss
