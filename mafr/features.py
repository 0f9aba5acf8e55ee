"""Extracting features: prepared parts -> per-position features on the autoencoder's grid.

The second stage of :class:`mafr.MAFRDetector` (docs/architecture.md). :class:`Extractors` holds
the config's frozen extractors, built on first use (the RGB one: DINO ViT-B/8 or the weight-free
colour statistics; the 3D one: PointMAE or the weight-free surface deviation), runs them on a
batch of :class:`mafr.preparation.Prepared` parts, and brings the 3D features onto the image
grid (docs/concepts.md, section 3). A modality the config leaves out is never built: its
features are zeros of the width the extractor would give.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Optional, Sequence, Union

import torch

from . import errors as _errors
from . import runtime as _runtime
from .config import MAFRConfig
from .extractors import feature_dims, RGBExtractor, build_point_extractor, build_rgb_extractor
from .extractors.pointops import idw_weights, three_nn_interpolate
from .preparation import Prepared
from .projection import centres_to_grid_operator, pool_to_grid, scatter_to_pixels, upsample_rgb, valid_grid_mask

# Extractors are built on first use; two threads predicting at once must not both build one
# (random weights are seeded through torch's global RNG, which threads share).
_BUILD_LOCK = threading.Lock()


class Features:
    """Features of one sample on the autoencoder's grid (channels-last) and its validity."""

    __slots__ = ("rgb", "xyz", "valid_grid", "valid_pixels", "framing")

    def __init__(self, rgb, xyz, valid_grid, valid_pixels, framing=None):
        self.rgb, self.xyz, self.valid_grid, self.valid_pixels = rgb, xyz, valid_grid, valid_pixels
        #: How the part was framed and turned (``MAFRDetector.framing_``); None: whole image, as it lies.
        self.framing = framing


class Extractors:
    """The frozen extractors of one config on one device, built on first use, and the features
    they give prepared parts (``extract``)."""

    def __init__(self, config: MAFRConfig, device: torch.device, precision: str = "fp32") -> None:
        self.config, self.device, self.precision = config, device, precision
        #: The built modules (``None`` until first use; never for a modality the config leaves out).
        self.rgb_module: Optional[torch.nn.Module] = None
        self.point_module: Optional[torch.nn.Module] = None
        self._dims: Optional[tuple[int, int]] = None

    @property
    def rgb(self) -> torch.nn.Module:
        """The frozen RGB extractor (built on first use)."""
        # First use is often inside an inference-mode method: parameters made there are inference
        # tensors, which a later move to another device turns into ones autocast cannot use.
        with _BUILD_LOCK, torch.inference_mode(False):
            if self.rgb_module is None:
                self.rgb_module = build_rgb_extractor(self.config).eval().to(self.device)
        return self.rgb_module

    @property
    def points(self) -> torch.nn.Module:
        """The frozen 3D extractor (built on first use; see ``rgb``)."""
        with _BUILD_LOCK, torch.inference_mode(False):
            if self.point_module is None:
                self.point_module = build_point_extractor(self.config).eval().to(self.device)
        return self.point_module

    def to(self, device: Union[str, torch.device]) -> "Extractors":
        for module in (self.rgb_module, self.point_module):
            if module is not None:
                module.to(device)
        self.device = torch.device(device)
        return self

    def min_points(self) -> int:
        if self.config.points.kind == "pointmae":
            return max(self.config.points.num_groups, self.config.points.group_size)
        return 1

    @torch.inference_mode()
    def point_grid(self, preps: Sequence[Prepared]) -> list[torch.Tensor]:
        """3D features of each sample on the autoencoder's grid, ``(C, grid, grid)`` each. The
        extractor runs once for the batch: organized maps share the network's input size, and
        PointMAE's groups have one shape whatever a cloud's size (each cloud grouped on its own)."""
        extractor = self.points
        grid = self.config.grid_size
        if getattr(extractor, "organized", False):
            maps = extractor(torch.stack([p.xyz for p in preps]), torch.stack([p.valid for p in preps]))
            return [pool_to_grid(m, grid) for m in maps]
        clouds = [self.cloud(prep) for prep in preps]
        groups = [extractor.group(points) for points, _ in clouds]
        with _runtime.autocast(self.device, self.precision):
            feats = extractor.encode(torch.cat([g[0] for g in groups]), torch.cat([g[1] for g in groups])).float()
        return [self.centres_to_grid(points, pixel_index, f.unsqueeze(0), centres, prep.valid.shape[-1])
                for (points, pixel_index), f, (_, centres), prep in zip(clouds, feats, groups, preps)]

    def cloud(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The measured points ``(1, N, 3)`` of a prepared sample and their pixel indices."""
        size = prep.valid.shape[-1]
        n_valid = int(prep.valid.sum())
        need = self.min_points()
        if n_valid < need:
            raise _errors.InvalidInputError(
                f"too few valid 3D points: {n_valid} at the network's {size} x {size} input, but PointMAE grouping "
                f"needs at least {need} ({self.config.points.num_groups} groups of {self.config.points.group_size} "
                "points); the part covers too little of the image or most points are missing"
            )
        pixel_index = prep.valid.flatten().nonzero().squeeze(1)
        return prep.xyz.reshape(-1, 3)[pixel_index].unsqueeze(0), pixel_index

    def centres_to_grid(self, points, pixel_index, feats, centres, size: int) -> torch.Tensor:
        """Per-centre features ``(1, G, C)`` -> ``(C, grid, grid)`` (docs/concepts.md, section 3)."""
        grid = self.config.grid_size
        if grid == size:
            # The reference's own path: per-point features scattered at full resolution.
            per_point = three_nn_interpolate(points, centres, feats, power=self.config.points.idw_power)[0]
            return pool_to_grid(scatter_to_pixels(per_point, pixel_index, size), grid)
        weight, idx = idw_weights(points, centres, power=self.config.points.idw_power)
        op = centres_to_grid_operator(pixel_index, size, grid, idx[0], weight[0], centres.shape[1])
        return (op.to(feats.dtype) @ feats[0]).T.reshape(-1, grid, grid)

    def dims(self) -> tuple[int, int]:
        """Channels of the RGB and the 3D features, without building an extractor that the
        config's modalities leave out (the paper preset judged on images never fetches PointMAE)."""
        if self._dims is None:
            rgb_dim, xyz_dim = feature_dims(self.config)
            if rgb_dim is None:  # an exotic timm model: its width is known once it is built
                rgb_dim = int(self.rgb.out_dim)
            self._dims = (rgb_dim, xyz_dim)
        return self._dims

    @torch.inference_mode()
    def extract(self, preps: Sequence[Prepared]) -> list[Features]:
        grid = self.config.grid_size
        mods = self.config.modalities
        if mods == "xyz":
            rgb_maps = torch.zeros(len(preps), grid, grid, self.dims()[0], device=self.device)
        else:
            rgb_maps = self.rgb_grid(preps)
        if mods == "rgb":
            xyz_maps = [torch.zeros(self.dims()[1], grid, grid, device=self.device)] * len(preps)
        else:
            xyz_maps = self.point_grid(preps)
        out = []
        for prep, rgb_map, xyz_map in zip(preps, rgb_maps, xyz_maps):
            xyz_map = xyz_map.permute(1, 2, 0)
            valid_grid = valid_grid_mask(prep.valid, grid)
            out.append(Features(rgb_map.contiguous(), xyz_map.contiguous(), valid_grid, prep.valid, prep.framing))
        return out

    def rgb_grid(self, preps: Sequence[Prepared]) -> torch.Tensor:
        """RGB features of each sample on the autoencoder's grid, ``(B, grid, grid, C)``."""
        grid = self.config.grid_size
        images = torch.stack([p.image for p in preps])
        extractor = self.rgb
        # Weight-free extractors stay fp32: their histograms gain nothing from bf16.
        with _runtime.autocast(self.device, self.precision) if isinstance(extractor, RGBExtractor) else contextlib.nullcontext():
            if getattr(extractor, "reads_validity", False):  # colour rarity on the part only
                valid = torch.stack([p.valid for p in preps]).to(images.device, torch.bool)
                # ... and, with ring_normal_weight, between pixels that face the same way
                xyz = torch.stack([p.xyz for p in preps]).to(images.device) if extractor.reads_geometry else None
                rgb = extractor(images, valid, xyz=xyz)
            else:
                rgb = extractor(images)
        return upsample_rgb(rgb.float(), grid).permute(0, 2, 3, 1)
