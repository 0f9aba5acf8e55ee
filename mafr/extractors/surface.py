"""Relief of an organized cloud against its own smooth surface: the offline preset's 3D depth cues.

:func:`smoothed_normals` (pose-free normals of a Gaussian-smoothed cloud),
:class:`SurfaceDeviationExtractor` (multi-scale signed deviation from the local surface, with
curvature as context) and :class:`OrganizedGeometryExtractor` (it beside FPFH's angles, the
offline preset's 3D extractor). No parameters.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fpfh import FPFHExtractor

__all__ = ["smoothed_normals", "SurfaceDeviationExtractor", "OrganizedGeometryExtractor"]


@functools.lru_cache(maxsize=8)
def _gaussian_band(n: int, sigma: float, device: str) -> Tensor:
    """The Gaussian of ``sigma`` pixels, truncated at 2.5 widths and normalised to sum 1 over its
    taps, as an ``n x n`` banded matrix (zeros beyond the border): one matrix product per axis
    is about 6x faster on CPU than a grouped 41-tap convolution. Cached: every part of a run
    has the network's size."""
    half = max(1, int(math.ceil(2.5 * sigma)))
    norm = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float32) / sigma) ** 2).sum()
    offset = torch.arange(n, device=device)
    d = (offset.view(-1, 1) - offset.view(1, -1)).float()
    return torch.where(d.abs() <= half, torch.exp(-0.5 * (d / sigma) ** 2), 0.0) / norm.to(device)


def smoothed_normals(xyz: Tensor, valid: Tensor, sigma: float) -> Tensor:
    """Unit surface normals ``(B, 3, H, W)`` of an organized cloud ``(B, H, W, 3)``, oriented
    towards the camera at the origin, 0 where ``valid`` is False. The cloud is first smoothed
    with a Gaussian of ``sigma`` pixels over the valid pixels only (normalised by the smoothed
    mask, so the outline and dropouts are not pulled towards the origin); the normal is the
    cross product of the smoothed cloud's central differences along the two pixel axes, which
    needs no metric pixel size and does not depend on the part's pose."""
    m = valid.unsqueeze(1).to(torch.float32)
    points = xyz.permute(0, 3, 1, 2).to(torch.float32) * m
    device = str(xyz.device)
    x = _gaussian_band(xyz.shape[1], float(sigma), device) @ torch.cat([points, m], 1) @ \
        _gaussian_band(xyz.shape[2], float(sigma), device).T
    smooth = x[:, :3] / x[:, 3:].clamp_min(1e-6)
    sp = F.pad(smooth, (1, 1, 1, 1), mode="replicate")
    du = sp[..., 1:-1, 2:] - sp[..., 1:-1, :-2]
    dv = sp[..., 2:, 1:-1] - sp[..., :-2, 1:-1]
    # The cross product and its length by components: torch.cross and Tensor.norm over the
    # channel axis of these views cost 10x more on CPU.
    (ux, uy, uz), (vx, vy, vz) = du.unbind(1), dv.unbind(1)
    n = torch.stack([uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx], 1)
    n = n / (n * n).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    n = torch.where((n * smooth).sum(1, keepdim=True) > 0, -n, n)
    return n * m


def _running_max(x: Tensor, window: int, dim: int) -> Tensor:
    """Maximum over a centred ``window`` (odd) along ``dim`` (-1 or -2) of ``(B, C, H, W)``; the
    window is clipped at the border, as ``max_pool2d`` with that padding. Taken as ``window - 1``
    element-wise maxima of shifted views: the same values, about 15x faster on CPU than
    ``max_pool2d`` with a 1 x 9 then a 9 x 1 kernel and stride 1 (``benchmarks/bench_filters.py``)."""
    half = window // 2
    if x.device.type != "cpu":  # one pooling kernel there beats window - 1 small ones
        kernel = (1, window) if dim == -1 else (window, 1)
        return F.max_pool2d(x, kernel, stride=1, padding=(0, half) if dim == -1 else (half, 0))
    pad = (half, half, 0, 0) if dim == -1 else (0, 0, half, half)
    xp = F.pad(x, pad, value=-math.inf)
    n = x.shape[dim]
    out = xp.narrow(dim, 0, n).clone()
    for i in range(1, window):
        torch.maximum(out, xp.narrow(dim, i, n), out=out)
    return out


class SurfaceDeviationExtractor(nn.Module):
    """Multi-scale deviation of an organized cloud from its own smooth local surface.

    FPFH sees the *angles* between neighbouring normals inside a 7 x 7 window; a bump or dent a
    few tenths of a millimetre high and a centimetre wide tilts normals by a degree or two, below
    its bins. This descriptor measures the deviation itself. At every valid pixel and for each
    scale ``s`` (pixels), a quadric ``z(u, v)`` is fitted by weighted least squares to the depth of
    the valid pixels around it (Gaussian weights of standard deviation ``s``, truncated at
    ``2.5 s``); the feature is the fitted surface minus the measured depth at that pixel, in
    millimetres, positive towards the camera (a bump) and negative away (a dent). A quadric
    follows domes, cylinders and fillets wider than the window, so on a good part the deviation is
    sensor noise, while any relief narrower than about the window stands out by its height.
    Averaging over the autoencoder's grid cell (8 x 8 pixels) brings 0.2 mm of per-pixel noise to
    a few hundredths of a millimetre, so sub-millimetre defects are well above it. Several scales
    cover defects of several widths (the default ``(3, 6, 12)`` at 224 px, 0.75 mm per pixel, fits
    over about 5, 10 and 20 mm). The local curvature ``d2z/du2 + d2z/dv2`` of the largest scale is
    appended so that the autoencoder knows what shape the deviation sits on.

    ``order`` 3 or 4 fits a cubic or quartic polynomial instead of the quadric (one order for
    every scale, or one per scale): a narrow cylinder's circular cross-section, which a quadric
    over a window as wide as the part cannot follow towards the silhouette, leaves less residual
    (docs/ablations.md, the ``shaft``).

    ``peaks=True`` replaces each scale's deviation by two channels: the highest rise and the
    deepest sink of the deviation, lightly smoothed (Gaussian of ``peak_sigma`` px over the valid
    pixels: one width for every scale, or one per scale), in the ``peak_window`` px square around
    each pixel (:meth:`_peaks`). The
    autoencoder's grid cell averages its 8 x 8 pixels; a bump of 5 px radius (2 % of a small
    part) covers a third of a cell, or a twelfth of each of four, so the mean kept a fraction of
    its height. The local extreme brings the smoothed peak whole into each cell within reach, and
    smoothing first keeps one noisy pixel from doing the same. Rises and sinks are separate
    because a cell holding both a bump and the noise around it would otherwise average them
    away. See docs/ablations.md.

    Output: ``(B, len(scales) + 1, H, W)`` float32 (``2 * len(scales) + 1`` with ``peaks``: the
    rises, then the sinks, then the curvature), zeros where there is no measurement.
    Deterministic on CPU; no parameters. ``stride`` fits on a coarser grid (2: the mean of each
    2 x 2 block of valid pixels), 8x less work for the same windows in millimetres.
    """

    #: Reads the organized (H, W, 3) cloud and a validity mask, not a list of points.
    organized = True
    #: Trailing channels that describe the shape rather than a deviation from it (the curvature):
    #: the autoencoder restores them, calibrated fusion does not count their error as evidence.
    context_channels = 1

    def __init__(self, scales: tuple[float, ...] = (3.0, 6.0, 12.0), *, truncate: float = 2.5,
                 stride: int = 2, peaks: bool = False, peak_sigma: float | tuple[float, ...] = 3.0,
                 peak_window: int = 9, order: int | tuple[int, ...] = 2) -> None:
        super().__init__()
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        if not isinstance(peak_window, int) or peak_window < 1 or peak_window % 2 == 0:
            raise ValueError(f"peak_window must be a positive odd number of pixels, got {peak_window!r}")
        self.stride = stride
        self.peaks = bool(peaks)
        self.peak_window = peak_window
        scales = tuple(float(s) for s in scales)
        if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
            raise ValueError(f"scales must be positive pixel widths, got {scales!r}")
        self.scales = scales
        sigmas = tuple(peak_sigma) if isinstance(peak_sigma, (tuple, list)) else (peak_sigma,)
        if (not sigmas or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
                              for s in sigmas)):
            raise ValueError(f"peak_sigma must be a positive pixel width or one per scale, got {peak_sigma!r}")
        if self.peaks and len(sigmas) not in (1, len(scales)):
            raise ValueError(f"peak_sigma must be one width or one per scale ({len(scales)}), got {len(sigmas)}: {peak_sigma!r}")
        #: The smoothing width of each scale's rises and sinks, in pixels (unused without peaks).
        self.peak_sigma: tuple[float, ...] = tuple(float(s) for s in sigmas) * (len(scales) if len(sigmas) == 1 else 1)
        self.truncate = float(truncate)
        self.out_dim: int = (2 if self.peaks else 1) * len(scales) + 1
        orders = tuple(order) if isinstance(order, (tuple, list)) else (order,)
        if not orders or any(isinstance(o, bool) or not isinstance(o, int) or o not in (2, 3, 4) for o in orders):
            raise ValueError(f"order must be 2 (a quadric), 3 or 4, or one of those per scale, got {order!r}")
        if len(orders) not in (1, len(scales)):
            raise ValueError(f"order must be one value or one per scale ({len(scales)}), got {len(orders)}: {order!r}")
        #: The polynomial order of each scale's fit.
        self.order: tuple[int, ...] = orders * (len(scales) if len(orders) == 1 else 1)
        # Exponents (i, j) of u^i v^j of each scale's polynomial, by degree; the normal equations
        # need window sums up to twice the order in each of u and v.
        self._terms = [[(i, d - i) for d in range(o + 1) for i in range(d, -1, -1)] for o in self.order]

    def extra_repr(self) -> str:
        peaks = f", peaks=(sigma={self.peak_sigma}, window={self.peak_window})" if self.peaks else ""
        order = f", order={self.order}" if set(self.order) != {2} else ""
        return f"scales={self.scales}{order}{peaks}, out_dim={self.out_dim}"

    def _peaks(self, dev: Tensor, valid: Tensor) -> Tensor:
        """``(B, S, H, W)`` deviations -> ``(B, 2 S, H, W)``: the largest rise of each scale, then
        the largest sink (both >= 0), after a Gaussian smoothing of that scale's ``peak_sigma``
        (cut at ``truncate`` widths, like the quadric fits' weights) normalised over valid pixels."""
        m = valid.float().unsqueeze(1)
        smooth = torch.empty_like(dev)
        # Scales that share a width are blurred in one pass (the default: all of them).
        for sigma in set(self.peak_sigma):
            idx = [i for i, s in enumerate(self.peak_sigma) if s == sigma]
            half, (k, *_) = self._kernels(sigma, dev.device)  # the quadric fits' Gaussian
            k = k / k.sum()
            C = len(idx) + 1
            x = torch.cat([dev[:, idx] * m, m], dim=1)
            x = F.conv2d(F.pad(x, (half, half, 0, 0)), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
            x = F.conv2d(F.pad(x, (0, 0, half, half)), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
            # Normalised by the blurred mask: pixels next to a dropout or the outline average
            # only what was measured, so missing depth does not read as a sink.
            smooth[:, idx] = x[:, :-1] / x[:, -1:].clamp_min(1e-6) * m
        signed = torch.cat([smooth.clamp_min(0), (-smooth).clamp_min(0)], dim=1)  # rises, sinks
        # A w x w maximum as a 1 x w then a w x 1 maximum: the same values as one w x w pool.
        peaks = _running_max(_running_max(signed, self.peak_window, -1), self.peak_window, -2)
        # The maximum reaches past the outline; unmeasured pixels must stay exactly zero.
        return peaks * m

    def _kernels(self, scale: float, device, powers: int = 5) -> tuple[int, list[Tensor]]:
        """1-D kernels ``w(t) * t^p`` for p = 0 .. powers - 1, and the half width."""
        half = max(1, int(math.ceil(self.truncate * scale)))
        t = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
        w = torch.exp(-0.5 * (t / scale) ** 2)
        # Coordinates in units of the scale keep the normal equations well conditioned.
        ts = t / scale
        return half, [w * ts**p for p in range(powers)]

    @torch.no_grad()
    def forward(self, xyz: Tensor, valid: Tensor) -> Tensor:
        """``xyz`` ``(B, H, W, 3)`` organized points in metres, ``valid`` ``(B, H, W)`` bool ->
        ``(B, out_dim, H, W)`` deviations (mm) and curvature (1/mm^2 in pixel units, at the
        largest scale)."""
        FPFHExtractor._validate(xyz, valid)
        B, H, W, _ = xyz.shape
        f = self.stride
        # Fitting on a 2x coarser grid (mean of the valid pixels of each 2 x 2 block) is 8x less
        # work for the same windows in millimetres, and the grid cell still averages 16 fits.
        z64 = torch.where(valid, xyz[..., 2].double(), 0.0).unsqueeze(1)
        m64 = valid.double().unsqueeze(1)
        Hp, Wp = -(-H // f) * f, -(-W // f) * f
        zs = F.avg_pool2d(F.pad(z64, (0, Wp - W, 0, Hp - H)), f)
        ms = F.avg_pool2d(F.pad(m64, (0, Wp - W, 0, Hp - H)), f)
        vs = ms > 0
        # Depth relative to each sample's mean, in mm: the window sums then stay within float32's
        # precision (z itself is ~500 mm, the signal a tenth of a millimetre).
        z = torch.where(vs, zs / ms.clamp_min(1e-12), 0.0)
        mean_z = z.sum((2, 3), keepdim=True) / vs.sum((2, 3), keepdim=True).clamp_min(1)
        z = ((z - mean_z) * vs * 1000.0).float()
        m = vs.float()
        out = []
        for scale, terms, order in zip(self.scales, self._terms, self.order):
            P = 2 * order + 1
            half, k = self._kernels(scale / f, xyz.device, P)
            K = 2 * half + 1
            # Separable window sums of u^i v^j * {m, z}: one pass along rows with the P power
            # kernels, one along columns (conv2d correlates: offsets are neighbour - centre).
            row_w = torch.stack(k).view(P, 1, 1, K)
            col_w = torch.stack(k).view(P, 1, K, 1)
            rows = F.conv2d(F.pad(torch.cat([m, z]), (half, half, 0, 0)), row_w)  # (2B, P, h, w)
            h, w = rows.shape[-2:]
            both = F.conv2d(F.pad(rows.reshape(-1, 1, h, w), (0, 0, half, half)), col_w)
            both = both.view(2, B, P, P, h, w)  # [m or z, batch, i (u power), j (v power)]
            mom, zm = both[0], both[1]
            A = torch.stack(
                [torch.stack([mom[:, ip + iq, jp + jq] for iq, jq in terms], dim=-1)
                 for ip, jp in terms], dim=-2)  # (B, h, w, T, T)
            rhs = torch.stack([zm[:, i, j] for i, j in terms], dim=-1)  # (B, h, w, T)
            sel = (vs[:, 0] & (mom[:, 0, 0] > 0)).nonzero(as_tuple=True)
            As, bs = A[sel].double(), rhs[sel].double()
            # A tiny ridge keeps windows with too few or collinear points solvable; their fit
            # degrades to a lower-order one instead of failing.
            ridge = 1e-6 * As.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
            coef = torch.linalg.solve(As + torch.diag_embed(ridge.expand(-1, len(terms))), bs.unsqueeze(-1))[..., 0]
            dev = torch.zeros(B, h, w, dtype=torch.float64, device=xyz.device)
            dev[sel] = coef[:, 0] - z[:, 0][sel].double()  # fitted minus measured: + towards camera
            out.append(dev)
        # Curvature of the largest scale's fit (the loop's last) at the centre, per pixel^2.
        curvature = torch.zeros_like(out[-1])
        u2, v2 = terms.index((2, 0)), terms.index((0, 2))
        curvature[sel] = 2.0 * (coef[:, u2] + coef[:, v2]) / self.scales[-1] ** 2
        out.append(curvature)
        feats = torch.stack(out, dim=1)
        feats = feats.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)[:, :, :H, :W]
        feats = (feats * valid.unsqueeze(1)).float()
        if self.peaks:
            feats = torch.cat([self._peaks(feats[:, :-1], valid), feats[:, -1:]], dim=1)
        return feats.contiguous()


class OrganizedGeometryExtractor(nn.Module):
    """FPFH (angles between normals) and :class:`SurfaceDeviationExtractor` (relief against the
    local surface) side by side: ``points.kind="fpfh"`` with ``deviation_scales``.
    ``(B, 33 + S + 1, H, W)``, or ``(B, 33 + 2 S + 1, H, W)`` with ``peaks``."""

    organized = True
    context_channels = SurfaceDeviationExtractor.context_channels  # the curvature, last

    def __init__(self, deviation_scales: tuple[float, ...] = (3.0, 6.0, 12.0), *, peaks: bool = False,
                 peak_sigma: float | tuple[float, ...] = 3.0, order: int | tuple[int, ...] = 2) -> None:
        super().__init__()
        self.fpfh = FPFHExtractor()
        self.deviation = SurfaceDeviationExtractor(deviation_scales, peaks=peaks, peak_sigma=peak_sigma, order=order)
        self.out_dim: int = self.fpfh.out_dim + self.deviation.out_dim

    @torch.no_grad()
    def forward(self, xyz: Tensor, valid: Tensor) -> Tensor:
        return torch.cat([self.fpfh(xyz, valid), self.deviation(xyz, valid)], dim=1)
