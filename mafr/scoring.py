"""From restored features to anomaly maps and scores (docs/method.md, "Scoring").

Residual per modality = L2 norm over channels of (restored - input) at each grid position (with
``fusion="calibrated"``: each channel first divided by its good-part level, :func:`channel_normalised`); the
maps are brought to the network's input resolution, fused (a product by default: high only where
both modalities fail to restore), zeroed where no 3D data exists, box-smoothed, and the image
score is ``max(map) / sqrt(mean of its non-zero values)``.

``reference=True`` in :func:`score_maps` is the reference code's rule: the box filters pad with
zeros that count in the mean, and the image score is taken on the smoothed map *before* it is
masked again, so the blur's halo around the part counts (docs/method.md, "Scoring").
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .errors import NotFittedError

FusionMode = Literal["product", "sum", "max", "rgb", "xyz", "calibrated"]


def residual_map(target: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` pair -> ``(B, H, W)`` L2 norm of the restoration error."""
    return (restored - target).norm(dim=-1)


def fuse(
    map_2d: torch.Tensor,
    map_3d: torch.Tensor,
    mode: FusionMode = "product",
    scales: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Combine the 2D and 3D residual maps (docs/concepts.md, "Fusion").

    ``"calibrated"`` divides each map by ``scales`` (``(2,)``: the level the 2D and the 3D map
    reach on good parts, from :func:`modality_scales`), so both speak in units of "normal", and
    keeps the larger: a strong deviation seen by one modality alone survives (the product drops
    it when the other map is near zero), and one modality's noise is not added to the other's
    evidence. With per-channel calibrated residuals (:func:`channel_normalised`) the maximum beat
    the sum ``a + b`` on the tuning set; docs/ablations.md has the figures.
    """
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
    if mode in ("calibrated", "calibrated_sum"):
        if scales is None:
            raise ValueError("fusion 'calibrated' needs the per-modality scales calibrated on good parts")
        a, b = map_2d / scales[0], map_3d / scales[1]
        # "calibrated_sum": the 0.2 rule, kept for detectors saved with per-distance levels.
        return torch.maximum(a, b) if mode == "calibrated" else a + b
    if mode in ("calibrated_rgb", "calibrated_xyz"):  # one modality (MAFRConfig.modalities)
        if scales is None:
            raise ValueError("fusion 'calibrated' needs the per-modality scales calibrated on good parts")
        return map_2d / scales[0] if mode == "calibrated_rgb" else map_3d / scales[1]
    raise ValueError(f"unknown fusion mode {mode!r}; expected one of product, sum, max, rgb, xyz, calibrated")


def edge_distance(valid_grid: torch.Tensor, cap: int = 3) -> torch.Tensor:
    """``(B, g, g)`` bool -> long: grid cells from each position to the nearest position without
    3D (Chebyshev distance, 0 at the part's edge and outside it), capped at ``cap``."""
    dist = torch.zeros(valid_grid.shape, dtype=torch.long, device=valid_grid.device)
    inside = valid_grid.clone()
    for _ in range(cap):
        inside = -F.max_pool2d(-inside.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0
        dist += inside.long()
    return dist


def edge_scales(residual: torch.Tensor, valid_grid: torch.Tensor, cap: int = 3,
                quantile: float = 0.9) -> torch.Tensor:
    """The ``quantile`` of good parts' grid residuals at each distance from the part's edge
    (:func:`edge_distance`): ``(cap + 1,)`` for residuals ``(B, g, g)``, ``(cap + 1, C)`` per
    channel for ``(B, g, g, C)`` (of absolute values: give signed errors as they are).
    Restoration is hardest along outlines, where pose and background change what a cell sees;
    dividing by these levels makes "unusual for where it is" the unit, so an edge no longer
    outshines a defect in the middle of the part."""
    dist = edge_distance(valid_grid, cap)
    residual = residual.abs()
    out: list[torch.Tensor] = []
    for k in range(cap + 1):
        values = residual[valid_grid & (dist == k)].float()
        if values.shape[0] == 0:  # a thin part has no cell that deep: use the deepest level seen
            values = residual[valid_grid].float() if not out else out[-1].unsqueeze(0)
        if values.shape[0] == 0:
            raise ValueError("no position with 3D data in the calibration parts: cannot calibrate the maps")
        out.append(torch.quantile(values, quantile, dim=0).clamp_min(1e-12))
    return torch.stack(out)


#: Fewest good cells a (distance band, restored-value bin) level is taken from; a bin with fewer
#: keeps its band's level (:func:`binned_edge_scales`): a 97th percentile of a handful of cells is
#: their maximum, noise rather than a level.
MIN_BIN_CELLS = 30


def restored_bins(restored: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` restored values and ``(C, k)`` ascending bin edges -> ``(..., C)`` long: each
    channel's bin, 0 .. k (the number of its edges the value lies above)."""
    return (restored.unsqueeze(-1) > edges.to(restored.dtype)).sum(-1)


def binned_edge_scales(residual: torch.Tensor, restored: torch.Tensor, valid_grid: torch.Tensor, cap: int,
                       quantile: float, bins: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`edge_scales` per bin of what the autoencoder restored, too: good parts' signed
    errors ``residual`` and restored values ``restored`` ``(B, g, g, C)`` -> ``(levels, edges)``,
    ``levels`` ``(cap + 1, len(bins) + 1, C)`` (distance band, bin, channel) and ``edges``
    ``(C, len(bins))``, each channel's restored values at the quantiles ``bins`` over the good
    cells. A part's own structure (a chamfer, a groove, a cylinder's crest) is restored as what it
    is, and restored with a larger error than plain surface at the same distance from the edge;
    one level per band is set by those cells and hides a shallow defect on the plain surface
    around them. The restored value says which kind of cell a cell is without looking at its
    input, which a defect changes. A (band, bin) with fewer than :data:`MIN_BIN_CELLS` good cells
    keeps the band's level (docs/concepts.md, section 7)."""
    band = edge_scales(residual, valid_grid, cap, quantile)  # (cap + 1, C)
    cells = restored[valid_grid].float()
    if cells.shape[0] == 0:
        raise ValueError("no position with 3D data in the calibration parts: cannot calibrate the maps")
    qs = torch.tensor(bins, dtype=cells.dtype, device=cells.device)
    edges = torch.quantile(cells, qs, dim=0).T.contiguous()  # (C, k)
    which = restored_bins(restored.float(), edges)
    dist = edge_distance(valid_grid, cap)
    errors = residual.abs().float()
    levels = band.unsqueeze(1).repeat(1, len(bins) + 1, 1)
    for k in range(cap + 1):
        sel = valid_grid & (dist == k)
        e, b = errors[sel], which[sel]
        for j in range(len(bins) + 1):
            inside = b == j
            enough = inside.sum(0) >= MIN_BIN_CELLS
            if bool(enough.any()):
                # Each channel's own cells of this bin: the others are NaN, which nanquantile skips.
                level = torch.nanquantile(torch.where(inside, e, torch.nan), quantile, dim=0)
                levels[k, j] = torch.where(enough, level.nan_to_num(1.0).clamp_min(1e-12), levels[k, j])
    return levels, edges


def channel_normalised(errors: torch.Tensor, scales: torch.Tensor, dist: torch.Tensor,
                       channels: Optional[int] = None, reduce: Literal["rms", "max"] = "rms",
                       bins: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Signed restoration errors ``(B, g, g, C)`` -> ``(B, g, g)``: each channel divided by its
    good-part level at the cell's distance from the edge (``scales``, ``(cap + 1, C)`` from
    :func:`edge_scales`; ``dist`` from :func:`edge_distance` with the same ``cap``), then the root
    mean square over the first ``channels`` channels (all by default), or with ``reduce="max"``
    the largest of them in absolute value: a defect that moves a few channels out of many (a
    stain: the colour ones) is not averaged with the rest. Dividing per channel first keeps a quiet channel that carries a defect (a few
    tenths of a millimetre of relief) from being drowned by channels that are noisy on every
    part; the L2 norm of :func:`residual_map` weights each channel by its raw spread instead.
    With ``scales`` per bin (``(cap + 1, k + 1, C)`` from :func:`binned_edge_scales`), ``bins``
    ``(B, g, g, C)`` (:func:`restored_bins`) picks each channel's bin at each cell."""
    if scales.dim() == 3:
        if bins is None:
            raise ValueError("levels per restored-value bin need each cell's bins")
        channel = torch.arange(errors.shape[-1], device=errors.device)
        z = errors / scales[dist.unsqueeze(-1), bins, channel]
    else:
        z = errors / scales[dist]
    if channels is not None:
        z = z[..., :channels]
    if reduce == "max":
        return z.abs().amax(-1)
    if reduce != "rms":
        raise ValueError(f"reduce must be 'rms' or 'max', got {reduce!r}")
    return z.pow(2).mean(-1).sqrt()


def modality_scales(map_2d: torch.Tensor, map_3d: torch.Tensor, valid: torch.Tensor,
                    quantile: float = 0.99) -> torch.Tensor:
    """``(2,)``: the ``quantile`` of the smoothed 2D and 3D maps over the valid pixels of good
    parts, the unit in which :func:`fuse` ``"calibrated"`` expresses each modality. Every
    sixteenth pixel is used: neighbouring smoothed pixels carry the same information."""
    return modality_levels(map_2d[valid], map_3d[valid], quantile)


def modality_levels(values_2d: torch.Tensor, values_3d: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """:func:`modality_scales` from the maps' valid pixels already gathered, part after part
    (so that many parts can be gathered a few at a time)."""
    out = []
    for v in (values_2d, values_3d):
        values = v.flatten()[::16].float()
        if values.numel() == 0:
            raise ValueError("no valid pixel in the calibration parts: cannot calibrate the maps")
        out.append(torch.quantile(values, quantile).clamp_min(1e-12))
    return torch.stack(out)


def box_smooth(
    maps: torch.Tensor, box5_passes: int = 5, box7_passes: int = 3, *, count_padding: bool = False
) -> torch.Tensor:
    """Repeated box filters on ``(B, H, W)`` maps. At the edges the window averages the pixels
    inside the map, or with ``count_padding=True`` divides by the full window as a convolution
    with zero padding does (the reference), which darkens a band along the border.

    Each k x k mean is a sum of k shifted rows, then of k shifted columns, divided by the number
    of in-map pixels in the window (separable too): the values of ``avg_pool2d`` to float
    rounding, about 9x faster on CPU (``benchmarks/bench_filters.py``), where a stride-1
    ``avg_pool2d`` took 40 % of an offline predict. Elsewhere (CUDA, MPS) ``avg_pool2d`` is one
    kernel launch per pass against a dozen small ones, and is kept."""
    if maps.device.type != "cpu":
        return _box_smooth_pooled(maps, box5_passes, box7_passes, count_padding)
    x = maps
    H, W = x.shape[-2:]
    for k, passes in ((5, box5_passes), (7, box7_passes)):
        if not passes:
            continue
        norm = (x.new_full((1, 1), float(k * k)) if count_padding
                else _window_sum(torch.ones(H, 1, dtype=x.dtype, device=x.device), k, -2)
                * _window_sum(torch.ones(1, W, dtype=x.dtype, device=x.device), k, -1))
        for _ in range(passes):
            x = _window_sum(_window_sum(x, k, -1), k, -2) / norm
    return x


def _window_sum(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Sum over a centred ``window`` (odd) along ``dim`` (-1 or -2), zeros beyond the border:
    ``window - 1`` additions of shifted views (the shape of ``extractors.surface._running_max``)."""
    half = window // 2
    xp = F.pad(x, (half, half) if dim == -1 else (0, 0, half, half))
    n = x.shape[dim]
    out = xp.narrow(dim, 0, n).clone()
    for i in range(1, window):
        out += xp.narrow(dim, i, n)
    return out


def _box_smooth_pooled(maps: torch.Tensor, box5_passes: int, box7_passes: int, count_padding: bool) -> torch.Tensor:
    x = maps.unsqueeze(1)
    for k, passes in ((5, box5_passes), (7, box7_passes)):
        for _ in range(passes):
            x = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=count_padding)
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


#: The floor under a position's level, as a share of the mean level: where good parts left the
#: map near zero (background, padding), a faint value must not become a large ratio.
POSITION_FLOOR = 0.1


def position_level(fused_sum: torch.Tensor, count: int) -> torch.Tensor:
    """``(S, S)`` level of the fused map at each pixel from the sum of ``count`` good parts' fused
    maps (docs/concepts.md, "Levels per position"): their mean, box-smoothed over about 1/24 of
    the side (9 px at 224) so that a few parts give a level per neighbourhood rather than per
    pixel, plus a floor of ``POSITION_FLOOR`` times its mean over the pixels good parts reach."""
    mean = (fused_sum / max(count, 1)).float()
    k = 2 * (mean.shape[-1] // 48) + 1
    level = F.avg_pool2d(mean[None, None], k, stride=1, padding=k // 2, count_include_pad=False)[0, 0]
    reached = level[level > 0]
    floor = POSITION_FLOOR * (float(reached.mean()) if reached.numel() else 1.0)
    return level + floor


def position_normalised(fused: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """A fused map ``(B, S, S)`` in units of what good parts reach at the same pixel."""
    return fused / position


def peak_score(fused: torch.Tensor, score: str) -> torch.Tensor:
    """Image scores ``(B,)`` of fused maps ``(B, S, S)`` by ``ScoringConfig.score``."""
    return image_score(fused) if score == "ratio" else fused.flatten(1).amax(1)


def upsampled_maps(
    res_2d: torch.Tensor,
    res_3d: torch.Tensor,
    valid_pixels: torch.Tensor,
    *,
    reference: bool = False,
    valid_grid: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid residuals ``(B, g, g)`` -> 2D and 3D maps at the network input's size ``(B, S, S)``
    (bilinear; the 3D map zero where there is no 3D data) and the validity used for that."""
    size = valid_pixels.shape[-1]
    up = F.interpolate(torch.stack([res_2d, res_3d], 1), size=(size, size), mode="bilinear", align_corners=False)
    if reference:
        if valid_grid is None:
            raise ValueError("score_maps(reference=True) needs valid_grid, the (B, g, g) mask of non-zero 3D features")
        # The reference's mask is "3D feature all zero" on its feature grid; its 3 x 3 + adaptive
        # pooling shifts that set by up to a pixel against a plain dilation of the valid pixels.
        valid = F.interpolate(valid_grid.float().unsqueeze(1), size=(size, size), mode="nearest").squeeze(1) > 0
    else:
        valid = F.max_pool2d(valid_pixels.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0
    return up[:, 0], up[:, 1] * valid, valid


def score_maps(
    res_2d: torch.Tensor,
    res_3d: torch.Tensor,
    valid_pixels: torch.Tensor,
    *,
    mode: FusionMode = "product",
    box5_passes: int = 5,
    box7_passes: int = 3,
    reference: bool = False,
    valid_grid: Optional[torch.Tensor] = None,
    scales: Optional[torch.Tensor] = None,
    score: str = "ratio",
    position: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid residuals ``(B, g, g)`` + pixel validity ``(B, S, S)`` -> fused map, 2D map, 3D map
    (each ``(B, S, S)``, smoothed) and image scores ``(B,)``.

    Validity is dilated by one pixel, matching the 3 x 3 pooling that spreads 3D features.
    ``reference=True``: the positions zeroed are those whose 3D feature is all zero
    (``valid_grid``, ``(B, g, g)``, brought to ``S`` by nearest neighbour; required), the box
    filters pad with counted zeros, and the fused map is not masked again after smoothing (the
    reference's maps and scores, docs/method.md). ``scales``: see :func:`fuse`. ``score``:
    ``"ratio"`` (the paper's ``max / sqrt(mean of non-zero)``, :func:`image_score`) or ``"max"``
    (the peak of the fused map; with calibrated fusion it is already in units of "normal").
    ``position``: the level good parts reach at each pixel (:func:`position_level`); the fused map
    is divided by it before the score (:func:`position_normalised`).
    """
    m2d, m3d, valid = upsampled_maps(res_2d, res_3d, valid_pixels, reference=reference, valid_grid=valid_grid)
    fused = fuse(m2d, m3d, mode, scales) * valid
    fused = box_smooth(fused, box5_passes, box7_passes, count_padding=reference)
    if not reference:
        # Smoothing bleeds into invalid pixels; keep the "no 3D -> 0" rule of docs/method.md.
        fused = fused * valid
    if position is not None:
        fused = position_normalised(fused, position.to(fused.device))
    scores = peak_score(fused, score)
    m2d = box_smooth(m2d, box5_passes, box7_passes, count_padding=reference)
    m3d = box_smooth(m3d, box5_passes, box7_passes, count_padding=reference) * valid
    return fused, m2d, m3d, scores


class Residuals(NamedTuple):
    """What the autoencoder made of a batch: signed errors and restored values ``(B, g, g, C)`` of
    each modality (in normalised units), and pixel and grid validity."""

    err2: torch.Tensor
    err3: torch.Tensor
    valid_pixels: torch.Tensor
    valid_grid: torch.Tensor
    restored2: torch.Tensor
    restored3: torch.Tensor

    def head(self, n: int) -> "Residuals":
        """The first ``n`` parts."""
        return Residuals(*(t[:n] for t in self))


def edge_normalised(res: Residuals, calibration: dict[str, torch.Tensor], reduce_2d: str = "rms",
                    context_channels: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, g, g)`` residual of each modality in units of what good held-out parts show at
    the same distance from the part's edge (``calibration["edge_2d"]`` / ``["edge_3d"]``;
    docs/concepts.md, section 7): per channel, then the RMS over the channels that are evidence
    (a 3D extractor's trailing ``context_channels``, such as curvature, are restored but not
    scored). Levels per bin of the restored value too (``scoring.level_bins``) are picked by
    the bin each channel's restored value falls in (``calibration["bins_2d"]`` /
    ``["bins_3d"]``). Detectors saved by mafr 0.2 hold one level per distance: the L2 norm over it."""
    err2, err3 = res.err2, res.err3
    e2, e3 = calibration["edge_2d"].to(err2.device), calibration["edge_3d"].to(err2.device)
    dist = edge_distance(res.valid_grid, e2.shape[0] - 1)  # shared by both modalities
    if e2.dim() == 1:
        return err2.norm(dim=-1) / e2[dist], err3.norm(dim=-1) / e3[dist]
    bins2 = bins3 = None
    if e2.dim() == 3:
        bins2 = restored_bins(res.restored2, calibration["bins_2d"].to(err2.device))
        bins3 = restored_bins(res.restored3, calibration["bins_3d"].to(err2.device))
    context = context_channels
    evidence = err3.shape[-1] - context if 0 < context < err3.shape[-1] else None
    return (channel_normalised(err2, e2, dist, reduce=reduce_2d, bins=bins2),
            channel_normalised(err3, e3, dist, evidence, bins=bins3))


def maps_from_residuals(res: Residuals, calibration: dict[str, torch.Tensor], sc, modalities: str = "rgb+xyz",
                        context_channels: int = 0):
    """Fused, 2D and 3D maps ``(B, S, S)`` and image scores ``(B,)`` of residuals, by the config's
    fusion (``sc``: its ``ScoringConfig``); a detector of one modality scores that one alone."""
    scales, mode = None, sc.fusion
    if sc.fusion == "calibrated":
        if not {"edge_2d", "edge_3d", "modality"} <= set(calibration):
            raise NotFittedError(
                "fusion='calibrated' needs the detector calibrated on good parts: call .fit(), or "
                ".calibrate(good_parts) on a converted detector"
            )
        res2, res3 = edge_normalised(res, calibration, sc.channel_reduce_2d, context_channels)
        scales = calibration["modality"].to(res2.device)
        if calibration["edge_2d"].dim() == 1:  # saved by mafr 0.2: its sum, as it scored then
            mode = "calibrated_sum"
        elif modalities != "rgb+xyz":
            mode = f"calibrated_{modalities}"
    else:
        res2, res3 = res.err2.norm(dim=-1), res.err3.norm(dim=-1)
        if modalities != "rgb+xyz":  # the absent modality's map is no evidence
            mode = modalities
    return score_maps(
        res2,
        res3,
        res.valid_pixels,
        mode=mode,
        box5_passes=sc.box5_passes,
        box7_passes=sc.box7_passes,
        reference=sc.maps == "reference",
        valid_grid=res.valid_grid,
        scales=scales,
        score=sc.score,
        position=calibration.get("position"),
    )


def normalise(feats, stats: dict[str, torch.Tensor], feature_norm: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoencoder's inputs ``(g, g, C)`` of one part's features (:class:`mafr.features.Features`):
    each channel standardised by the fit parts' ``stats`` (``feature_norm="none"``: as extracted).
    Replayed parts live on the CPU (they are saved); extracted ones are already on ``device``."""
    rgb, xyz = feats.rgb.to(device), feats.xyz.to(device)
    valid = feats.valid_grid.to(device).unsqueeze(-1)
    if feature_norm == "none":
        # The reference feeds raw features; its 3D map is already zero where no point lies.
        return rgb, xyz * valid
    # Positions without 3D stay exactly zero: "no measurement" must not look like a feature.
    return (rgb - stats["rgb_mean"]) / stats["rgb_std"], (xyz - stats["xyz_mean"]) / stats["xyz_std"] * valid


@torch.inference_mode()
def restore(autoencoder: torch.nn.Module, inputs: list[tuple[torch.Tensor, torch.Tensor]], feats,
            device: torch.device, autocast) -> Residuals:
    """Run the fitted autoencoder on normalised ``inputs`` (:func:`normalise`, one pair per part of
    ``feats``): signed restoration errors and restored values ``(B, g, g, C)`` of each modality,
    with pixel and grid validity. ``autocast``: the detector's precision context."""
    rgb = torch.stack([p[0] for p in inputs])
    xyz = torch.stack([p[1] for p in inputs])
    with autocast:
        out_rgb, out_xyz = autoencoder(rgb, xyz)
    # Replayed parts (update) live on the CPU, new ones on the device: move each, then stack.
    valid_pixels = torch.stack([f.valid_pixels.to(device) for f in feats])
    valid_grid = torch.stack([f.valid_grid.to(device) for f in feats])
    out_rgb, out_xyz = out_rgb.float(), out_xyz.float()
    return Residuals(out_rgb - rgb, out_xyz - xyz, valid_pixels, valid_grid, out_rgb, out_xyz)
