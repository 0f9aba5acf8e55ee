"""Weight-free feature extractors for the ``"offline"`` preset.

Factory lines are often air-gapped, so besides DINO ViT-B/8 (RGB) and PointMAE (3D) mafr offers
two extractors that need no downloaded weights. Both follow published, hand-crafted practice and
emit dense per-position features that the same fusion autoencoder restores:

- :class:`FPFHExtractor` (3D): Fast Point Feature Histograms (Rusu, Blodow & Beetz, "Fast Point
  Feature Histograms (FPFH) for 3D Registration", ICRA 2009), the descriptor that "Back to the
  Feature" (Horwitz & Hoshen, CVPRW 2023) showed to be a strong baseline on MVTec 3D-AD. The
  pair features, binning and weighting follow the PCL / Open3D implementations (the latter is
  what Horwitz & Hoshen used), but neighbourhoods are pixel windows of the organized cloud
  limited by a metric radius, so everything runs vectorised in torch without a k-d tree.
- :class:`ColorGradientExtractor` (RGB): per-cell colour moments in the opponent colour space
  (Stricker & Orengo, "Similarity of Color Images", SPIE 1995; van de Sande, Gevers & Snoek,
  "Evaluating Color Descriptors for Object and Scene Recognition", TPAMI 2010) and soft-binned,
  magnitude-weighted histograms of oriented gradients (Dalal & Triggs, "Histograms of Oriented
  Gradients for Human Detection", CVPR 2005), pooled at several cell scales.

Neither module has parameters (constants are non-persistent buffers), so ``state_dict()`` is
empty and there is nothing to load; both run under ``torch.no_grad``, are deterministic on CPU
and return float32.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPFHExtractor", "ColorGradientExtractor", "SurfaceDeviationExtractor", "OrganizedGeometryExtractor"]

# ImageNet statistics shared with the ViT path (timm / torchvision defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class ColorGradientExtractor(nn.Module):
    """Multi-scale colour-moment and oriented-gradient statistics per image cell.

    Input is ImageNet-normalised (shared preprocessing with the ViT path); the normalisation is
    undone inside to recover RGB in ``[0, 1]``. For each ``patch`` x ``patch`` cell (a 28 x 28
    grid for 224 input, like ViT-B/8's patch grid) and each scale ``s``, statistics are pooled
    over the ``patch * s`` square centred on the cell (clipped at the image border, averaging
    only in-image pixels), giving, in this channel order per scale:

    - **colour mean (3) and std (3)** in the opponent colour space
      ``O1 = (R - G)/sqrt(2)``, ``O2 = (R + G - 2B)/sqrt(6)``, ``O3 = (R + G + B)/sqrt(3)``
      (van de Sande et al., TPAMI 2010): the first two colour moments of Stricker & Orengo
      (1995); decorrelating intensity (O3) from chroma (O1, O2) lets a stain that changes only
      hue show up in two channels instead of being spread over three correlated ones.
    - **orientation histogram** (``orientation_bins``): Dalal & Triggs (2005) HOG cell
      histograms: Sobel gradients per RGB channel, the channel of largest magnitude taken per
      pixel, unsigned orientation in ``[0, pi)``, each pixel's magnitude split linearly between
      the two nearest bin centres ``k * pi / orientation_bins`` (bin 0 = horizontal gradient,
      i.e. a vertical edge). The pooled histogram ``v`` is normalised with Dalal & Triggs'
      L2 scheme ``v / sqrt(|v|^2 + eps^2)``; ``eps`` keeps flat, noise-only cells near zero.
    - **mean gradient magnitude** (1): the contrast the normalised histogram discards.
    - **colour rarity** (1, with ``ring_radii``): per pixel, the distance in opponent colour (the
      intensity axis O3 weighted by ``ring_intensity_weight``) to the *closest* colour among 32
      pixels on each circle of the given radii around it. Texture repeats (a checker's squares,
      brushing, a label band continue past the circle), so on a good part some pixel on the
      circle matches; inside a stain smaller than the circles, no pixel on them has the stain's
      colour. Per-cell colour moments cannot tell a stained cell from a cell mixing two of the
      part's colours; this can. With ``ring_normal_weight``, the distance also counts how much
      the two pixels' surface normals differ (:func:`smoothed_normals`), so a match has to
      face the same way: on a lying cylinder the shaded flank has the colour of a dark stain on
      its lit crest, but not its orientation, and under one light the same colour at the same
      orientation is what a good part shows.

    With ``rarity_on_part``, the colour rarity is a statement about the part's surface only: a
    pixel is compared with the pixels on its circles that have a 3D measurement (the ``valid``
    mask given to :meth:`forward`), and pixels without one (background, through-holes, sensor
    dropouts) get 0. Otherwise a through-hole's dark interior, smaller than the circles, reads as a
    rare colour on every good part (and, pooled, on the part around it), which sets the channel's
    good-part level high enough to hide a stain; and a dark stain next to a hole matches the hole.

    ``out_dim = len(scales) * (7 + orientation_bins + (1 if ring_radii else 0))`` (45 with the
    defaults, 48 as the offline preset sets it). ``feature_names`` lists the channels.

    Args:
        patch: cell side in pixels; the output grid is ``H / patch`` x ``W / patch``.
        scales: pooling neighbourhoods in cells; ``(1, 2, 4)`` covers 8, 16 and 32 pixels at
            224, from hairline cracks to larger stains, while staying local enough that a small
            defect is a sizeable fraction of the finest cell.
        orientation_bins: unsigned orientation bins (8 = 22.5 degrees; Dalal & Triggs found
            ~9 unsigned bins best, 8 keeps the horizontal/vertical/diagonal directions on bin
            centres).
        eps: the L2-normalisation constant, in units of the per-pixel gradient of an image in
            ``[0, 1]`` (a unit step edge gives 0.5 on each of its two Sobel columns).
        ring_radii: circle radii in pixels for the colour-rarity channel (empty: no channel). The
            offline preset's (21, 33) at 224 px, on a framed part (``framing="part"``, about
            1.5x the whole image's pixels), lie outside the generated benchmark's stains (radius
            up to ~18 px there) and inside a checker square's repeat.
        ring_intensity_weight: weight of the intensity axis O3 in that distance; below 1 because
            shading moves intensity across a curved part while leaving the chroma alone.
        rarity_on_part: compare only pixels with a 3D measurement (above); :meth:`forward` then
            needs ``valid``. No effect without ``ring_radii``.
        ring_normal_weight: weight of the squared difference of unit normals (2 - 2 cos of the
            angle between them) in the squared colour-rarity distance; 0: colours alone.
            :meth:`forward` then needs ``xyz``. No effect without ``ring_radii``.
        ring_normal_sigma: Gaussian width (pixels) the organized cloud is smoothed with before
            its normals are taken; sensor noise of a few tenths of a millimetre tilts per-pixel
            normals by degrees.
    """

    def __init__(
        self,
        patch: int = 8,
        scales: tuple[int, ...] = (1, 2, 4),
        orientation_bins: int = 8,
        eps: float = 0.01,
        ring_radii: tuple[int, ...] = (),
        ring_intensity_weight: float = 0.5,
        rarity_on_part: bool = False,
        ring_normal_weight: float = 0.0,
        ring_normal_sigma: float = 8.0,
    ) -> None:
        super().__init__()
        for name, value in (("ring_normal_weight", ring_normal_weight), ("ring_normal_sigma", ring_normal_sigma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if ring_normal_sigma <= 0:
            raise ValueError(f"ring_normal_sigma must be positive (pixels), got {ring_normal_sigma!r}")
        self.ring_normal_weight = float(ring_normal_weight) if ring_radii else 0.0
        self.ring_normal_sigma = float(ring_normal_sigma)
        self.rarity_on_part = bool(rarity_on_part) and bool(ring_radii)
        ring_radii = tuple(ring_radii)
        if any(not isinstance(r, int) or r < 1 for r in ring_radii) or len(set(ring_radii)) != len(ring_radii):
            raise ValueError(f"ring_radii must be distinct positive integers (pixels), got {ring_radii!r}")
        if not (isinstance(ring_intensity_weight, (int, float)) and math.isfinite(ring_intensity_weight)
                and ring_intensity_weight >= 0):
            raise ValueError(f"ring_intensity_weight must be a non-negative number, got {ring_intensity_weight!r}")
        self.ring_radii = ring_radii
        self.ring_intensity_weight = float(ring_intensity_weight)
        if not isinstance(patch, int) or patch < 1:
            raise ValueError(f"patch must be a positive integer, got {patch!r}")
        scales = tuple(scales)
        if not scales or any(not isinstance(s, int) or s < 1 for s in scales):
            raise ValueError(f"scales must be a non-empty tuple of positive integers, got {scales!r}")
        if len(set(scales)) != len(scales):
            raise ValueError(f"scales must not repeat, got {scales!r}")
        if not isinstance(orientation_bins, int) or orientation_bins < 2:
            raise ValueError(f"orientation_bins must be an integer >= 2, got {orientation_bins!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.patch = patch
        #: Alias read by the pipeline (same meaning as a ViT's patch size: pixels per cell).
        self.patch_size: int = patch
        self.scales = scales
        self.orientation_bins = orientation_bins
        self.eps = float(eps)
        self.out_dim: int = len(scales) * (7 + orientation_bins + (1 if ring_radii else 0))
        per_scale = (
            [f"mean_O{i}" for i in (1, 2, 3)]
            + [f"std_O{i}" for i in (1, 2, 3)]
            + [f"hog_{k}" for k in range(orientation_bins)]
            + ["grad_mag"]
            + (["colour_rarity"] if ring_radii else [])
        )
        self.feature_names: list[str] = [f"s{s}_{n}" for s in scales for n in per_scale]

        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        r2, r6, r3 = math.sqrt(2), math.sqrt(6), math.sqrt(3)
        opponent = torch.tensor(
            [[1 / r2, -1 / r2, 0.0], [1 / r6, 1 / r6, -2 / r6], [1 / r3, 1 / r3, 1 / r3]]
        )
        self.register_buffer("opponent", opponent, persistent=False)

    @property
    def reads_validity(self) -> bool:
        """Whether :meth:`forward` reads the network-resolution validity mask (the detector passes it)."""
        return self.rarity_on_part or self.reads_geometry

    @property
    def reads_geometry(self) -> bool:
        """Whether :meth:`forward` reads the organized cloud at the network's resolution (the
        detector passes it, with the validity mask)."""
        return self.ring_normal_weight > 0

    def extra_repr(self) -> str:
        return (
            f"patch={self.patch}, scales={self.scales}, orientation_bins={self.orientation_bins}, "
            f"ring_radii={self.ring_radii}, rarity_on_part={self.rarity_on_part}, "
            f"ring_normal_weight={self.ring_normal_weight}, out_dim={self.out_dim}"
        )

    def _validate(self, images: Tensor, valid: Optional[Tensor], xyz: Optional[Tensor] = None) -> None:
        if not isinstance(images, Tensor):
            raise ValueError("images must be a torch tensor")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor, got {images.dtype}")
        H, W = images.shape[2:]
        if H < self.patch or W < self.patch or H % self.patch or W % self.patch:
            raise ValueError(f"image size {H} x {W} must be a positive multiple of patch={self.patch}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or inf")
        if self.reads_geometry:
            if xyz is None or valid is None:
                raise ValueError("ring_normal_weight > 0 needs xyz, the (B, H, W, 3) organized cloud, and valid")
            if not isinstance(xyz, Tensor) or tuple(xyz.shape) != (images.shape[0], H, W, 3):
                raise ValueError(f"xyz must be a tensor of shape {(images.shape[0], H, W, 3)}, "
                                 f"got {tuple(getattr(xyz, 'shape', ()))}")
            if not bool(torch.isfinite(xyz).all()):
                raise ValueError("xyz contains NaN or inf")
        if self.reads_validity:
            if valid is None:
                raise ValueError("rarity_on_part=True needs valid, the (B, H, W) bool mask of pixels with 3D")
            if valid.dtype != torch.bool or tuple(valid.shape) != (images.shape[0], H, W):
                raise ValueError(f"valid must be a bool tensor of shape {(images.shape[0], H, W)}, "
                                 f"got {valid.dtype} {tuple(valid.shape)}")

    def _pool(self, maps: Tensor, scale: int) -> Tensor:
        """Mean of ``maps`` over the ``patch * scale`` square centred on each cell."""
        k, p = self.patch * scale, self.patch
        lo = (k - p) // 2
        pad = (lo, k - p - lo, lo, k - p - lo)

        def box(x: Tensor) -> Tensor:
            # A k x k mean as a 1 x k then a k x 1 mean: the same numbers (to float64 rounding),
            # 5x faster at k = 32.
            return F.avg_pool2d(F.avg_pool2d(x, (1, k), stride=(1, p)), (k, 1), stride=(p, 1))

        total = box(F.pad(maps, pad))
        ones = torch.ones(1, 1, *maps.shape[2:], device=maps.device, dtype=maps.dtype)
        inside = box(F.pad(ones, pad))  # fraction of in-image pixels
        return total / inside

    @staticmethod
    def _sobel(rgb: Tensor) -> tuple[Tensor, Tensor]:
        """Sobel derivatives / 8 (per-pixel slope, smoothed across) as separable differences.

        Differencing first makes a flat region exactly 0, where a 3 x 3 convolution leaves
        float rounding; replicate padding keeps the image border from reading as an edge.
        """
        x = F.pad(rgb, (1, 1, 1, 1), mode="replicate")
        dx = x[..., 2:] - x[..., :-2]  # (H + 2, W)
        dy = x[..., 2:, :] - x[..., :-2, :]  # (H, W + 2)
        gx = (dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 8
        gy = (dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]) / 8
        return gx, gy

    @torch.no_grad()
    def forward(self, images: Tensor, valid: Optional[Tensor] = None, xyz: Optional[Tensor] = None) -> Tensor:
        """Features of ImageNet-normalised images ``(B, 3, H, W)`` -> ``(B, out_dim, H/patch, W/patch)``.
        ``valid`` (``(B, H, W)`` bool, pixels with 3D) is read only with ``rarity_on_part`` or
        ``ring_normal_weight``; ``xyz`` (``(B, H, W, 3)``, the organized cloud) only with the latter."""
        self._validate(images, valid, xyz)
        offset = images.float() * self.std  # RGB minus the ImageNet mean
        rgb = offset + self.mean
        # Moments about a fixed reference colour (the ImageNet mean), pooled in float64, so
        # that E[x^2] - E[x]^2 keeps full precision; a fixed (not per-image) reference keeps
        # every cell a function of its own window only.
        c = torch.einsum("oc,bchw->bohw", self.opponent, offset).double()

        gx, gy = self._sobel(rgb)
        mag_c = torch.sqrt(gx * gx + gy * gy)
        mag, ch = mag_c.max(dim=1, keepdim=True)  # Dalal & Triggs: dominant colour channel
        gx, gy = gx.gather(1, ch), gy.gather(1, ch)
        nb = self.orientation_bins
        pos = torch.remainder(torch.atan2(gy, gx) * (nb / math.pi), float(nb))  # unsigned, in bins
        lo = torch.floor(pos)
        frac = pos - lo
        lo = lo.long() % nb
        votes = F.one_hot(lo.squeeze(1), nb).permute(0, 3, 1, 2) * (mag * (1 - frac))
        votes = votes + F.one_hot(((lo + 1) % nb).squeeze(1), nb).permute(0, 3, 1, 2) * (mag * frac)

        per_pixel = [c, c * c, votes.double(), mag.double()]
        if self.ring_radii:
            normals = smoothed_normals(xyz, valid, self.ring_normal_sigma) if self.reads_geometry else None
            per_pixel.append(self._colour_rarity(c.float(), valid if self.rarity_on_part else None, normals).double())
        per_pixel = torch.cat(per_pixel, dim=1)
        centre = torch.einsum("oc,bchw->bohw", self.opponent, self.mean).double()
        feats = []
        for s in self.scales:
            pooled = self._pool(per_pixel, s)
            m, m2 = pooled[:, 0:3], pooled[:, 3:6]
            hist, rest = pooled[:, 6 : 6 + nb], pooled[:, 6 + nb :]  # rest: grad_mag [, colour_rarity]
            var = m2 - m * m
            # Below 1e-12 (std 1e-6, far under 8-bit quantisation) is float64 rounding of a
            # flat window: report exactly 0.
            std = torch.where(var > 1e-12, var, 0.0).sqrt()
            hist = hist / torch.sqrt((hist * hist).sum(1, keepdim=True) + self.eps**2)
            feats += [m + centre, std, hist, rest]
        return torch.cat(feats, dim=1).float().contiguous()

    #: Pixels sampled on each circle of ``ring_radii``.
    ring_points = 32

    #: Where a pixel has no 3D (``rarity_on_part``), its colour is moved this far along every
    #: axis: no part colour (within a few units of 0) ever matches it, and the distance stays far
    #: from float32's range, so the masking costs nothing in the loop over circle points.
    _OFF_PART = 1e3

    def _colour_rarity(self, opponent: Tensor, valid: Optional[Tensor] = None, normals: Optional[Tensor] = None) -> Tensor:
        """``(B, 3, H, W)`` opponent colours -> ``(B, 1, H, W)``: distance to the closest colour
        on the circles of ``ring_radii`` around each pixel (replicate padding at the border). With
        ``valid``, only pixels with 3D count as candidates (outside the image none does), and a
        pixel without 3D, or without any candidate on its circles, gets 0. With ``normals``
        (``(B, 3, H, W)``), ``ring_normal_weight`` times their squared difference is added to the
        squared distance (three more coordinates of the compared vectors)."""
        x = opponent * opponent.new_tensor([1.0, 1.0, self.ring_intensity_weight]).view(1, 3, 1, 1)
        if normals is not None:
            x = torch.cat([x, math.sqrt(self.ring_normal_weight) * normals.to(x.dtype)], 1)
        H, W = x.shape[-2:]
        pad = max(self.ring_radii)
        if valid is None:
            xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        else:
            off = valid.logical_not()
            xp = F.pad(x.masked_fill(off.unsqueeze(1), self._OFF_PART), (pad, pad, pad, pad), value=self._OFF_PART)
        best = x.new_full((x.shape[0], H, W), math.inf)
        for r in self.ring_radii:
            for k in range(self.ring_points):
                a = 2 * math.pi * k / self.ring_points
                dy, dx = round(r * math.sin(a)), round(r * math.cos(a))
                diff = xp[..., pad + dy : pad + dy + H, pad + dx : pad + dx + W] - x
                # Squared distances, one square root at the end: Tensor.norm over the channel
                # axis of a strided view is ~50x slower here.
                torch.minimum(best, (diff * diff).sum(1), out=best)
        if valid is not None:
            # A part colour is within a few units of 0; an off-part one is 1e3 away per axis.
            best = best.masked_fill(off | (best > self._OFF_PART), 0.0)
        return best.sqrt().unsqueeze(1)


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
