"""The composite restoration loss (docs/method.md, "Loss"): similarity (ZNSSD), edge-aware
smoothness and census, per modality, on channels-last feature grids ``(B, H, W, C)``.

Two forms share the three terms (docs/method.md lists each difference with its source):

- ``"mafr"`` (preset ``paper``): epsilon outside the ZNSSD square root,
  smoothness averaged over residual channels on the full difference grids, census pooling that
  averages only the positions inside the grid.
- ``"reference"`` (presets ``reference`` and ``offline``): the reference code's formulas, number for number:
  epsilon 1e-8 inside the square root, smoothness *summed* over residual channels 0 and 1 on the
  ``(H-1) x (W-1)`` crop of the difference grids, census pooling that counts the zero padding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

_EPS = 1e-6
#: The reference's ZNSSD epsilon, added to the variance inside the square root.
_REFERENCE_EPS = 1e-8

LossForm = Literal["mafr", "reference"]


def _zero_normalise(x: torch.Tensor, form: LossForm = "mafr") -> torch.Tensor:
    x = x - x.mean(dim=-1, keepdim=True)
    if form == "reference":
        return x / (x.pow(2).mean(dim=-1, keepdim=True) + _REFERENCE_EPS).sqrt()
    # sqrt has an infinite slope at 0: a position whose restored channels are exactly equal (bf16
    # rounding makes that happen) would turn the whole gradient into NaN. The floor changes
    # nothing for any variance above 1e-30, forward or backward.
    return x / (x.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-30).sqrt() + _EPS)


def znssd(target: torch.Tensor, restored: torch.Tensor, form: LossForm = "mafr") -> torch.Tensor:
    """Zero-normalised SSD per position (over channels), averaged over positions and channels.

    Averaging over channels (instead of summing) keeps it on the same scale as the other terms
    whatever the feature width; it is 0 for any positive affine copy ``a * x + b``. The two forms
    differ only for a position whose channels are nearly constant: ``"mafr"`` divides by
    ``std + 1e-6``, ``"reference"`` by ``sqrt(var + 1e-8)``.
    """
    return (_zero_normalise(target, form) - _zero_normalise(restored, form)).pow(2).mean()


def smoothness(
    target: torch.Tensor,
    restored: torch.Tensor,
    first_two_channels: bool = False,
    form: LossForm = "mafr",
) -> torch.Tensor:
    """First-order smoothness of the residual, down-weighted across edges of the input:
    ``mean(|d residual| * exp(-|d mean_c(input)|))`` along both grid axes.

    ``first_two_channels`` keeps residual channels 0 and 1 only, as the reference does (it treats
    the residual like a flow field). ``form="reference"`` is the reference's exact value: those
    two channels, their terms *summed* (not averaged), each difference grid cropped to the common
    ``(H-1) x (W-1)`` corner, so that at equal inputs it is twice the ``"mafr"`` two-channel value
    up to the crop.
    """
    residual = restored - target
    guide = target.mean(dim=-1)
    if form == "reference":
        if residual.shape[-1] < 2:
            raise ValueError(
                f"the reference smoothness term needs at least 2 residual channels, got {residual.shape[-1]}"
            )
        h, w = residual.shape[1] - 1, residual.shape[2] - 1
        res = residual[..., :2]
        # |d/dx| (along the width) and |d/dy| (along the height), each on the top-left crop
        dx = res.diff(dim=2).abs()[:, :h, :w].sum(dim=-1)
        dy = res.diff(dim=1).abs()[:, :h, :w].sum(dim=-1)
        wx = torch.exp(-guide.diff(dim=2).abs()[:, :h, :w])
        wy = torch.exp(-guide.diff(dim=1).abs()[:, :h, :w])
        return (dx * wx + dy * wy).mean()
    if first_two_channels:
        residual = residual[..., :2]
    loss = residual.new_zeros(())
    for axis in (1, 2):
        d_res = residual.diff(dim=axis).abs().mean(dim=-1)
        weight = torch.exp(-guide.diff(dim=axis).abs())
        loss = loss + (d_res * weight).mean()
    return loss


def census(target: torch.Tensor, restored: torch.Tensor, kernel: int = 7, form: LossForm = "mafr") -> torch.Tensor:
    """L1 between ``kernel x kernel`` average-pooled input and restored grids (the reference's
    "census" term: it compares local neighbourhoods, not single positions).

    Near the border the window holds fewer grid positions: ``"mafr"`` averages those it holds,
    ``"reference"`` divides by ``kernel**2`` as if the zero padding were data (torch's default
    ``count_include_pad=True``), which shrinks border differences.
    """
    include_pad = form == "reference"

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(
            x.permute(0, 3, 1, 2), kernel, stride=1, padding=kernel // 2, count_include_pad=include_pad
        )

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
    form: LossForm = "mafr",
) -> torch.Tensor:
    """Weighted sum of the three terms for one modality; ``form`` picks the formulas (see the
    module docstring). With unit weights and ``form="reference"`` this is the reference's
    per-modality loss; the training loss adds the RGB and the 3D values."""
    if form not in ("mafr", "reference"):
        raise ValueError(f"unknown loss form {form!r}; expected 'mafr' or 'reference'")
    loss = target.new_zeros(())
    if w_similarity:
        loss = loss + w_similarity * znssd(target, restored, form)
    if w_smoothness:
        loss = loss + w_smoothness * smoothness(target, restored, smoothness_first_two_channels, form)
    if w_census:
        loss = loss + w_census * census(target, restored, census_kernel, form)
    return loss
