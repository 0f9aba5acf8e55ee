"""Colour moments, gradients and colour rarity per cell: the offline preset's RGB features.

Per-cell colour moments in the opponent colour space (Stricker & Orengo, "Similarity of Color
Images", SPIE 1995; van de Sande, Gevers & Snoek, "Evaluating Color Descriptors for Object and
Scene Recognition", TPAMI 2010) and soft-binned, magnitude-weighted histograms of oriented
gradients (Dalal & Triggs, "Histograms of Oriented Gradients for Human Detection", CVPR 2005),
pooled at several cell scales. No parameters (constants are non-persistent buffers).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .surface import smoothed_normals

__all__ = ["ColorGradientExtractor", "IMAGENET_MEAN", "IMAGENET_STD"]

# ImageNet statistics shared with the ViT path (timm / torchvision defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
