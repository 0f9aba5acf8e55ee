"""Bringing 3D onto the image grid.

Two steps live here:

1. Geometry -> organized map: an unorganized :class:`~mafr.types.PointCloud` is projected onto
   the RGB pixel grid with a z-buffer (the paper's point-to-pixel projection); a depth map is
   back-projected through the pinhole intrinsics.
2. Features -> grid (docs/method.md, "Aligning 3D features to pixels"): each valid point takes the
   inverse-distance-weighted features of its 3 nearest PointMAE centres, is scattered to its
   pixel, and the map is 3 x 3 average pooled and adaptively pooled back, then to the
   autoencoder's grid.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def project_points(
    points: np.ndarray,
    intrinsics: np.ndarray,
    height: int,
    width: int,
    extrinsics: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Organized ``height x width x 3`` float32 map of camera-frame points; zeros where no point
    lands. Where several points land on one pixel the nearest (smallest z) wins."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"PointCloud.points must be N x 3, got shape {pts.shape}")
    if pts.shape[0] == 0:
        raise ValueError("PointCloud.points is empty: no 3D point to project")
    if not np.all(np.isfinite(pts)):
        raise ValueError("PointCloud.points contains NaN or inf")
    if extrinsics is not None:
        pts = pts @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    z = pts[:, 2]
    in_front = z > 0
    pts, z = pts[in_front], z[in_front]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intrinsics[0, 0] * pts[:, 0] / z + intrinsics[0, 1] * pts[:, 1] / z + intrinsics[0, 2]
        v = intrinsics[1, 1] * pts[:, 1] / z + intrinsics[1, 2]
    # Pixel (r, c) covers [c - 0.5, c + 0.5): the principal point is in pixel-centre coordinates.
    col = np.floor(u + 0.5).astype(np.int64)
    row = np.floor(v + 0.5).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    pts, z, lin = pts[inside], z[inside], row[inside] * width + col[inside]
    out = np.zeros((height * width, 3), dtype=np.float32)
    if lin.size:
        order = np.lexsort((z, lin))  # by pixel, nearest first
        lin_sorted = lin[order]
        first = np.ones(lin_sorted.shape, dtype=bool)
        first[1:] = lin_sorted[1:] != lin_sorted[:-1]
        winners = order[first]
        out[lin[winners]] = pts[winners]
    return out.reshape(height, width, 3)


def depth_to_xyz(depth: np.ndarray, intrinsics: np.ndarray, depth_scale: float = 1.0) -> np.ndarray:
    """Back-project a depth image (zeros = missing) to an organized camera-frame xyz map."""
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"DepthMap.depth must be H x W, got shape {d.shape}")
    if not np.issubdtype(d.dtype, np.number) or d.dtype == np.bool_:
        raise TypeError(f"DepthMap.depth must be numeric, got dtype {d.dtype}")
    z = d.astype(np.float64) * depth_scale
    if not np.all(np.isfinite(z)):
        raise ValueError("DepthMap.depth contains NaN or inf; mark missing measurements with 0")
    h, w = z.shape
    fx, fy, cx, cy, skew = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2], intrinsics[0, 1]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    y = (v - cy) * z / fy
    x = ((u - cx) - skew * y / np.where(z > 0, z, 1.0)) * z / fx
    xyz = np.stack([x, y, z], axis=-1)
    xyz[z <= 0] = 0.0
    return xyz.astype(np.float32)


def scatter_to_pixels(features: torch.Tensor, pixel_index: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C)`` point features -> ``(C, size, size)`` map, zeros where no point lies."""
    out = features.new_zeros(size * size, features.shape[1])
    out[pixel_index] = features
    return out.T.reshape(features.shape[1], size, size)


def pool_to_grid(pixel_map: torch.Tensor, grid: int) -> torch.Tensor:
    """Reference pooling of a ``(C, S, S)`` per-pixel 3D feature map: 3 x 3 average pooling (stride 1),
    adaptive average pooling back to S x S, then to ``grid x grid`` when the grid is coarser."""
    size = pixel_map.shape[-1]
    x = F.avg_pool2d(pixel_map.unsqueeze(0), 3, stride=1)
    x = F.adaptive_avg_pool2d(x, size)
    if grid != size:
        x = F.adaptive_avg_pool2d(x, grid)
    return x[0]


@functools.lru_cache(maxsize=16)
def _axis_pool_matrix(size: int, grid: int) -> torch.Tensor:
    """``(grid, size)`` matrix ``A`` with ``pool_to_grid(X) == A @ X @ A.T`` per channel: box and
    adaptive average pooling are separable, so their composition is one matrix per axis."""
    basis = torch.eye(size, dtype=torch.float64).unsqueeze(1)  # each row a unit signal
    x = F.adaptive_avg_pool1d(F.avg_pool1d(basis, 3, stride=1), size)
    if grid != size:
        x = F.adaptive_avg_pool1d(x, grid)
    return x[:, 0, :].T.contiguous()


def centres_to_grid_operator(
    pixel_index: torch.Tensor,
    size: int,
    grid: int,
    neighbour_index: torch.Tensor,
    neighbour_weight: torch.Tensor,
    num_centres: int,
) -> torch.Tensor:
    """``(grid * grid, num_centres)`` matrix ``M`` such that ``M @ centre_features`` equals
    interpolating every point from its centres (weights ``neighbour_weight``, ``(N, k)``),
    scattering to ``pixel_index`` on the ``size x size`` image and :func:`pool_to_grid`.

    All of those steps are linear, so this never builds the ``size x size x C`` map: at 224 x 224
    and 1152 channels that map alone is 230 MB and most of the alignment time.
    """
    dev = pixel_index.device
    # float64 keeps the summed weights exact; MPS has no float64, so it gets float32.
    dtype = torch.float32 if dev.type == "mps" else torch.float64
    a = _axis_pool_matrix(size, grid).to(device=dev, dtype=dtype)
    taps = int((a != 0).sum(0).max())  # grid cells one pixel row/column reaches
    w_axis, cell_axis = a.T.topk(taps, dim=1)  # (size, taps)
    rows, cols = pixel_index // size, pixel_index % size
    wr, cr = w_axis[rows], cell_axis[rows]  # (N, taps)
    wc, cc = w_axis[cols], cell_axis[cols]
    cell = (cr[:, :, None] * grid + cc[:, None, :]).reshape(-1, taps * taps)  # (N, taps^2)
    w_cell = (wr[:, :, None] * wc[:, None, :]).reshape(-1, taps * taps)
    k = neighbour_index.shape[1]
    flat_cell = cell[:, :, None].expand(-1, -1, k)
    flat_centre = neighbour_index[:, None, :].expand(-1, taps * taps, -1)
    weight = w_cell[:, :, None] * neighbour_weight.to(dtype)[:, None, :]
    op = torch.zeros(grid * grid * num_centres, dtype=dtype, device=dev)
    op.index_add_(0, (flat_cell * num_centres + flat_centre).reshape(-1), weight.reshape(-1))
    return op.view(grid * grid, num_centres)


def valid_grid_mask(valid_pixels: torch.Tensor, grid: int) -> torch.Tensor:
    """Grid positions that received any 3D feature through :func:`pool_to_grid`."""
    return pool_to_grid(valid_pixels.float().unsqueeze(0), grid)[0] > 0


def upsample_rgb(features: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, C, h, w)`` ViT patch map -> ``(B, C, grid, grid)`` bilinear (identity when equal)."""
    if features.shape[-1] == grid:
        return features
    return F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)


def fill_small_holes(xyz: torch.Tensor, valid: torch.Tensor, iterations: int = 4, min_neighbours: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill sensor dropouts: an invalid pixel with at least ``min_neighbours`` valid pixels among
    its 8 neighbours takes their mean, repeated ``iterations`` times. Holes up to ~6 pixels wide close;
    a wide hole's straight boundary (3 valid neighbours) never qualifies, so real missing regions
    stay missing. ``xyz``: ``(S, S, 3)``, ``valid``: ``(S, S)`` bool; returns new tensors."""
    xyz, valid = xyz.clone(), valid.clone()
    h, w = valid.shape
    for _ in range(iterations):
        # The 8 neighbours' sums of (x, y, z, valid) as shifted views of a zero-padded copy: the
        # same sums as a 3 x 3 ring convolution, 2-3x faster on the CPU (`_prepare`'s largest cost).
        padded = F.pad(torch.cat([(xyz * valid.unsqueeze(-1)).permute(2, 0, 1), valid[None].to(xyz.dtype)]), (1, 1, 1, 1))
        sums = padded[:, 0:h, 0:w] + padded[:, 0:h, 1 : w + 1]
        for dy, dx in ((0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
            sums += padded[:, dy : dy + h, dx : dx + w]
        count = sums[3]
        fill = ~valid & (count >= min_neighbours)
        if not bool(fill.any()):
            break
        xyz[fill] = sums[:3].permute(1, 2, 0)[fill] / count[fill].unsqueeze(-1)
        valid = valid | fill
    return xyz, valid


def resize_xyz_mean(xyz: np.ndarray, size: int, min_share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Organized ``(H, W, 3)`` map (zeros = no measurement) -> ``(size, size, 3)`` float32 and its
    validity: each output pixel is the mean of the measured input pixels its area covers
    (``adaptive_avg_pool2d`` windows), valid where they are at least ``min_share`` of that area.

    Nearest-neighbour resizing keeps one input pixel in ``(H / size)^2``: at 400 px brought to 224
    it drops two thirds of the measurements, and their depth noise with them is not averaged.
    The mean keeps every measurement (depth noise / 1.8 at that ratio). Where a window straddles
    a depth jump the mean lies between the two surfaces; that happens only along outlines.
    """
    # Pooled in float64: a float32 window sum overflows to inf for coordinates near float32's
    # limit, though their mean is finite. The mean itself fits float32 again.
    t = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float64)).permute(2, 0, 1).unsqueeze(0)
    measured = (t != 0).any(dim=1, keepdim=True).to(torch.float64)
    # Unmeasured pixels are zero already, so the sum over a window is the sum over its measurements.
    pooled = F.adaptive_avg_pool2d(torch.cat([t, measured], dim=1), size)[0]
    total, share = pooled[:3], pooled[3:]
    valid = share[0] >= min_share
    mean = torch.where(valid, total / share.clamp_min(1e-12), 0.0)
    return mean.permute(1, 2, 0).to(torch.float32).contiguous(), valid
