"""Fast Point Feature Histograms on an organized cloud: the offline preset's 3D angles.

Rusu, Blodow & Beetz, "Fast Point Feature Histograms (FPFH) for 3D Registration", ICRA 2009: the
descriptor that "Back to the Feature" (Horwitz & Hoshen, CVPRW 2023) showed to be a strong
baseline on MVTec 3D-AD. The pair features, binning and weighting follow the PCL / Open3D
implementations (the latter is what Horwitz & Hoshen used), but neighbourhoods are pixel windows
of the organized cloud limited by a metric radius, so everything runs vectorised in torch without
a k-d tree. No parameters: ``state_dict()`` is empty.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPFHExtractor"]


class FPFHExtractor(nn.Module):
    """Fast Point Feature Histograms on an organized point cloud (Rusu et al., ICRA 2009).

    Pipeline per valid pixel ``p`` (all in the units of ``xyz``):

    1. **Normal** (Rusu's PCA estimate, as in PCL / Open3D): the eigenvector of the smallest
       eigenvalue of the covariance of the valid points in the ``normal_window`` x
       ``normal_window`` pixel neighbourhood that lie within ``radius`` of ``p``. It is oriented
       towards the camera at the origin (PCL's ``flipNormalTowardsViewpoint``), i.e.
       ``dot(n, p) <= 0``: for a camera looking along +z, normals of visible surfaces have
       negative z. At least 3 points (``p`` included) are needed, else ``p`` has no normal.
    2. **SPFH**: for every valid neighbour ``q`` in the ``window`` x ``window`` pixel
       neighbourhood with ``0 < |q - p| <= radius`` and a normal, the Darboux-frame pair
       features of Open3D's ``ComputePairFeatures`` (source/target swapped so that the source
       normal makes the smaller angle with the connecting line): ``theta = atan2(w.n_t, u.n_t)``
       in ``[-pi, pi]``, ``alpha = v.n_t`` and ``phi = u.d/|d|`` in ``[-1, 1]``. Each is
       hard-binned into ``bins`` equal bins over its range (PCL / Open3D binning) and each of the
       three histograms is normalised to sum 1 (PCL / Open3D use 100; only the scale differs).
    3. **FPFH** (Open3D's weighting, the form Horwitz & Hoshen used): the neighbours' SPFHs are
       averaged with weights ``1 / |q - p|^2``, that mean is renormalised per histogram, and the
       point's own SPFH is added. Open3D's sum-to-200 result is halved here, so every 11-bin
       group of the output sums to 1:
       ``FPFH(p) = (SPFH(p) + sum_k w_k SPFH(q_k) / sum_k w_k) / 2``. If no neighbour has an
       SPFH, ``FPFH(p) = SPFH(p)``.

    Output channel order: ``bins`` theta bins, ``bins`` alpha bins, ``bins`` phi bins
    (``out_dim = 3 * bins``). On a plane all mass falls in the centre bin of each group.

    Invalid pixels, pixels without a normal and valid pixels with fewer than ``min_neighbors``
    SPFH neighbours get all-zero features (a zero vector is not a histogram, so the autoencoder
    and any masking downstream can tell "no feature" apart).

    What it sees: with 11 hard bins and a 7 x 7 window, smooth surfaces whose radius of curvature
    exceeds roughly 20 grid spacings look like a plane (all mass in the centre bins), while
    bumps, dents, holes' rims, creases and edges a few pixels across move mass off the centre
    bins. Normal part-to-part variation in gently curved shape is thus largely invisible, and
    small sharp geometric defects are not. Features are a function of the surface only: rigid
    motions of the part leave them unchanged (up to float rounding at bin edges) as long as the
    pixel layout is the same. On CUDA, ``index_add_`` accumulates with atomics, so the normals'
    moments and the FPFH weights may differ from run to run at the rounding level.

    Args:
        window: odd side of the pixel window used for SPFH and FPFH neighbourhoods. 7 gives up to
            48 neighbours, within the ``max_nn=100`` that Horwitz & Hoshen allowed Open3D, and at
            the 224 x 224 MVTec 3D-AD resolution spans a few millimetres, the size of the bumps,
            dents and holes to be found.
        radius: metric radius limiting the neighbourhoods (the hybrid radius/k search of
            PCL / Open3D). It mostly cuts neighbourhoods at depth discontinuities between parts
            of the object or object and background. ``None`` (default) adapts it per sample:
            ``3 * (window // 2) * s`` where ``s`` is the median distance between horizontally or
            vertically adjacent valid pixels, which keeps the whole window (corners at
            ``sqrt(2) * (window // 2) * s``) on surfaces tilted by up to ~60 degrees relative to
            the typical spacing while dropping jumps larger than that. If a sample has no
            adjacent valid pair, the radius is unlimited.
        normal_window: odd side of the pixel window for normal estimation (5: 25 points, the
            order of Open3D's ``max_nn=30`` used by Horwitz & Hoshen).
        bins: bins per angular feature (11 as in PCL / Open3D's FPFH-33).
        min_neighbors: minimum SPFH neighbours for a valid pixel to get a feature.
    """

    #: Reads the organized (H, W, 3) cloud and a validity mask, not a list of points.
    organized = True

    def __init__(
        self,
        window: int = 7,
        radius: Optional[float] = None,
        normal_window: int = 5,
        bins: int = 11,
        *,
        min_neighbors: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (("window", window), ("normal_window", normal_window)):
            if not isinstance(value, int) or value < 3 or value % 2 == 0:
                raise ValueError(f"{name} must be an odd integer >= 3, got {value!r}")
        if radius is not None and not (
            isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0
        ):
            raise ValueError(f"radius must be a positive finite number or None, got {radius!r}")
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if not isinstance(min_neighbors, int) or min_neighbors < 1:
            raise ValueError(f"min_neighbors must be an integer >= 1, got {min_neighbors!r}")
        self.window = window
        self.radius = None if radius is None else float(radius)
        self.normal_window = normal_window
        self.bins = bins
        self.min_neighbors = min_neighbors
        self.out_dim: int = 3 * bins
        #: Point pairs processed per vectorised step (bounds temporary memory).
        self._pairs_per_chunk = 1 << 18

    def extra_repr(self) -> str:
        return (
            f"window={self.window}, radius={self.radius}, normal_window={self.normal_window}, "
            f"bins={self.bins}, min_neighbors={self.min_neighbors}, out_dim={self.out_dim}"
        )

    # ------------------------------------------------------------------ validation / helpers
    @staticmethod
    def _validate(xyz: Tensor, valid: Tensor) -> None:
        if not isinstance(xyz, Tensor) or not isinstance(valid, Tensor):
            raise ValueError("xyz and valid must be torch tensors")
        if xyz.dim() != 4 or xyz.shape[-1] != 3:
            raise ValueError(f"xyz must have shape (B, H, W, 3), got {tuple(xyz.shape)}")
        if not xyz.is_floating_point():
            raise ValueError(f"xyz must be a floating-point tensor, got {xyz.dtype}")
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
        if tuple(valid.shape) != tuple(xyz.shape[:3]):
            raise ValueError(
                f"valid must have shape (B, H, W) = {tuple(xyz.shape[:3])}, got {tuple(valid.shape)}"
            )
        if valid.device != xyz.device:
            raise ValueError(f"xyz is on {xyz.device} but valid is on {valid.device}")
        if not bool(torch.isfinite(xyz[valid]).all()):
            raise ValueError("xyz has NaN or inf at pixels marked valid")

    def _adaptive_radius(self, xyz: Tensor, valid: Tensor) -> Tensor:
        """Per-sample radius ``3 * (window // 2) * median adjacent spacing`` (inf if undefined)."""
        dh = (xyz[:, :, 1:] - xyz[:, :, :-1]).norm(dim=-1)
        mh = valid[:, :, 1:] & valid[:, :, :-1]
        dv = (xyz[:, 1:] - xyz[:, :-1]).norm(dim=-1)
        mv = valid[:, 1:] & valid[:, :-1]
        d = torch.cat([dh.flatten(1), dv.flatten(1)], dim=1)
        m = torch.cat([mh.flatten(1), mv.flatten(1)], dim=1) & (d > 0)
        spacing = torch.where(m, d, torch.full_like(d, float("nan"))).nanmedian(dim=1).values
        radius = 3.0 * (self.window // 2) * spacing
        return torch.where(torch.isnan(radius), torch.full_like(radius, float("inf")), radius)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, xyz: Tensor, valid: Tensor) -> Tensor:
        """FPFH of every pixel of an organized cloud.

        Args:
            xyz: ``(B, H, W, 3)`` float organized point map (camera at the origin, looking
                along +z). Values at invalid pixels are ignored (they may be 0 or NaN).
            valid: ``(B, H, W)`` bool mask of measured pixels.

        Returns:
            ``(B, out_dim, H, W)`` float32 histograms (zeros where there is no feature).
        """
        self._validate(xyz, valid)
        if not bool(valid.any()):
            return xyz.new_zeros(xyz.shape[0], self.out_dim, *xyz.shape[1:3], dtype=torch.float32)
        p, pairs, scatter_back = self._compact(xyz, valid)
        normals, has_normal = self._normals(p, pairs)
        spfh, has_spfh = self._spfh(normals, has_normal, pairs)
        return scatter_back(self._fpfh(spfh, has_spfh, pairs))

    @torch.no_grad()
    def estimate_normals(self, xyz: Tensor, valid: Tensor) -> Tensor:
        """The PCA normals used by :meth:`forward`, ``(B, 3, H, W)`` float32, unit length and
        oriented towards the camera (``dot(n, p) <= 0``); zeros where a pixel has none."""
        self._validate(xyz, valid)
        if not bool(valid.any()):
            return xyz.new_zeros(xyz.shape[0], 3, *xyz.shape[1:3], dtype=torch.float32)
        p, pairs, scatter_back = self._compact(xyz, valid)
        return scatter_back(self._normals(p, pairs)[0].t())

    def _compact(self, xyz: Tensor, valid: Tensor):
        """Valid points as ``(3, N)``, a pair iterator over pixel windows, and a function that
        writes per-point ``(N, C)`` values back to a zero ``(B, C, H, W)`` map."""
        B, H, W, _ = xyz.shape
        dev = xyz.device
        xyz = torch.where(valid.unsqueeze(-1), xyz.float(), torch.zeros((), device=dev))
        radius = (
            torch.full((B,), self.radius, device=dev)
            if self.radius is not None
            else self._adaptive_radius(xyz, valid)
        )
        # Pad the grid with invalid pixels so every window offset of a valid pixel is an
        # in-range flat index that stays inside its own sample: a neighbourhood is then a
        # gather over the compacted valid points (no unfold of the whole map), and each
        # unordered pair is visited once, for half the work.
        h = max(self.window, self.normal_window) // 2
        Hp, Wp = H + 2 * h, W + 2 * h
        pts_pad = F.pad(xyz.permute(0, 3, 1, 2), (h, h, h, h)).permute(1, 0, 2, 3).reshape(3, -1)
        val_pad = F.pad(valid, (h, h, h, h)).reshape(-1)
        idx = val_pad.nonzero().squeeze(1)  # flat indices of valid pixels, batch-major
        n_pts = idx.numel()
        p = pts_pad[:, idx].contiguous()  # (3, N): component rows keep the dot products cheap
        r2 = radius[idx // (Hp * Wp)] ** 2
        # Padded flat index -> row in the compacted arrays (-1 = invalid pixel).
        row_of = torch.full((val_pad.numel(),), -1, dtype=torch.long, device=dev)
        row_of[idx] = torch.arange(n_pts, device=dev)

        def pairs(window: int, both_ways: bool = False):
            """Yield flat ``(i, j, ok, d, dist2)`` for the pairs (p_i, p_j) at the half-window
            offsets (``dy > 0``, or ``dy == 0`` and ``dx > 0``; all non-zero offsets with
            ``both_ways``), in chunks of points with all of a point's pairs adjacent: ``j`` is
            clamped where the pixel is invalid, ``ok`` = j valid, within the radius and not a
            duplicate of i, ``d = p_j - p_i`` as ``(3, M)``."""
            half = window // 2
            offsets = torch.tensor(
                [dy * Wp + dx for dy in range(-half if both_ways else 0, half + 1)
                 for dx in range(-half, half + 1)
                 if dy > 0 or (dy == 0 and dx > 0) or (both_ways and (dy, dx) != (0, 0))],
                device=dev,
            )
            # All offsets of a chunk at once: few, large ops (small ones each pay a thread-pool
            # round trip, which on a busy 2-core machine costs more than the arithmetic), with
            # memory bounded by the chunk: M <= 2^18 pairs, a few MB per temporary (tens of MB
            # in all), whatever the batch or image size.
            step = max(1, self._pairs_per_chunk // offsets.numel())
            for start in range(0, n_pts, step):
                i = torch.arange(start, min(start + step, n_pts), device=dev)
                j = row_of[(idx[i].unsqueeze(1) + offsets).flatten()]
                i = i.repeat_interleave(offsets.numel())
                ok = j >= 0
                j = j.clamp_min(0)
                d = p[:, j] - p[:, i]
                dist2 = (d * d).sum(0)
                yield i, j, ok & (dist2 <= r2[i]) & (dist2 > 0), d, dist2

        b, rem = idx // (Hp * Wp), idx % (Hp * Wp)
        target = (b * H + rem // Wp - h) * W + rem % Wp - h

        def scatter_back(values: Tensor) -> Tensor:
            out = torch.zeros(B * H * W, values.shape[1], device=dev)
            out[target] = values
            return out.view(B, H, W, -1).permute(0, 3, 1, 2).contiguous()

        return p, pairs, scatter_back

    def _normals(self, p: Tensor, pairs) -> tuple[Tensor, Tensor]:
        """PCA normals ``(3, N)`` oriented towards the origin, and a mask of points with one."""
        n_pts = p.shape[1]
        count = torch.ones(n_pts, device=p.device)  # p itself, at offset 0
        # Moments of the offsets q - p (not of raw coordinates: z ~ 500 mm at 0.5 mm spacing
        # would lose the surface's thin direction to cancellation), in float64.
        # Columns: sum of dx, dy, dz, then dxdx, dxdy, dxdz, dydy, dydz, dzdz.
        mom = torch.zeros(n_pts, 9, dtype=torch.float64, device=p.device)
        sign_q = torch.tensor([-1.0, -1, -1, 1, 1, 1, 1, 1, 1], dtype=torch.float64, device=p.device)
        iu = ([0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2])
        for i, j, ok, d, _ in pairs(self.normal_window):
            d = d.double() * ok
            m = torch.cat([d, d[iu[0]] * d[iu[1]]], dim=0).t()  # (M, 9)
            mom.index_add_(0, i, m)
            mom.index_add_(0, j, m * sign_q)  # the same pair seen from q: offset -d
            count.index_add_(0, i, ok.float())
            count.index_add_(0, j, ok.float())
        c = count.double().unsqueeze(1)
        mean = mom[:, :3] / c
        sec = mom[:, 3:] / c
        cov = torch.empty(n_pts, 3, 3, dtype=torch.float64, device=p.device)
        for k, (a, b) in enumerate(zip(*iu)):
            cov[:, a, b] = cov[:, b, a] = sec[:, k] - mean[:, a] * mean[:, b]
        has_normal = count >= 3
        # eigh returns ascending eigenvalues: column 0 is the surface normal direction.
        normals = torch.linalg.eigh(cov)[1][..., 0].float().t()
        flip = (normals * p).sum(0) > 0
        normals = torch.where(flip, -normals, normals)
        return normals * has_normal, has_normal

    def _pair_bins(self, n_s: Tensor, n_t: Tensor, d: Tensor, dist: Tensor) -> Tensor:
        """Bin indices ``(3, N)`` of Open3D's ``ComputePairFeatures`` for pairs (p, p + d).

        The features are symmetric in the pair (the swap picks the same source either way;
        on an exact tie, ``p`` is the source), which is what lets :meth:`forward` visit each
        unordered pair once.
        """
        dn = d / dist.clamp_min(1e-30)
        a1 = (n_s * dn).sum(0)
        a2 = (n_t * dn).sum(0)
        # Source = the point whose normal makes the smaller angle with the line (larger |cos|).
        swap = a1.abs() < a2.abs()
        u = torch.where(swap, n_t, n_s)
        nt = torch.where(swap, n_s, n_t)
        dn = torch.where(swap, -dn, dn)
        phi = torch.where(swap, -a2, a1)
        v = torch.linalg.cross(dn, u, dim=0)
        v_norm = (v * v).sum(0).sqrt()
        degenerate = v_norm <= 1e-12  # line parallel to the normal: Open3D returns zeros
        v = v / v_norm.clamp_min(1e-12)
        w = torch.linalg.cross(u, v, dim=0)
        alpha = (v * nt).sum(0)
        theta = torch.atan2((w * nt).sum(0), (u * nt).sum(0))
        f = torch.stack([(theta + math.pi) / (2 * math.pi), (alpha + 1) * 0.5, (phi + 1) * 0.5])
        f = torch.where(degenerate, 0.5, f)
        return torch.floor(f * self.bins).clamp_(0, self.bins - 1).long()

    def _spfh(self, normals: Tensor, has_normal: Tensor, pairs) -> tuple[Tensor, Tensor]:
        n_pts = normals.shape[1]
        b3 = self.out_dim
        hist = torch.zeros(n_pts * b3, device=normals.device)
        count = torch.zeros(n_pts, device=normals.device)
        group = (torch.arange(3, device=normals.device) * self.bins).unsqueeze(1)
        for i, j, ok, d, dist2 in pairs(self.window):
            ok = ok & has_normal[i] & has_normal[j]
            bins = self._pair_bins(normals[:, i], normals[:, j], d, dist2.sqrt()) + group  # (3, M)
            okf = ok.float()
            hist.index_add_(0, torch.cat([(bins + i * b3).flatten(), (bins + j * b3).flatten()]),
                            okf.repeat(6))
            count.index_add_(0, i, okf)
            count.index_add_(0, j, okf)
        has_spfh = count >= self.min_neighbors
        spfh = hist.view(n_pts, b3) / count.clamp_min(1).unsqueeze(1) * has_spfh.unsqueeze(1)
        return spfh, has_spfh

    def _fpfh(self, spfh: Tensor, has_spfh: Tensor, pairs) -> Tensor:
        n_pts = spfh.shape[0]
        acc = torch.zeros_like(spfh)
        wsum = torch.zeros(n_pts, device=spfh.device)
        k = self.window**2 - 1
        for i, j, ok, _, dist2 in pairs(self.window, both_ways=True):
            ok = ok & has_spfh[i] & has_spfh[j]
            w = torch.where(ok, 1.0 / dist2.clamp_min(1e-30), 0.0)
            rows = i[::k]  # a contiguous run of points, each with its k neighbours in order
            # The weighted neighbour sum is a sparse (rows x N) @ (N x 33) product: CSR with a
            # fixed k entries per row needs no sorting, and avoids materialising M x 33 gathers.
            crow = torch.arange(rows.numel() + 1, device=spfh.device) * k
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                a = torch.sparse_csr_tensor(
                    crow, j, w, size=(rows.numel(), n_pts), check_invariants=False
                )
                acc[rows] = a @ spfh
            wsum[rows] = w.view(-1, k).sum(1)
        has_nb = (wsum > 0).unsqueeze(1)
        # Each SPFH group sums to 1, so the weighted mean's groups already sum to 1.
        mean_nb = acc / wsum.clamp_min(1e-30).unsqueeze(1)
        return torch.where(has_nb, 0.5 * (spfh + mean_nb), spfh)
