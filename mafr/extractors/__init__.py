"""Frozen feature extractors and the builders that turn a :class:`~mafr.MAFRConfig` into them.

- :class:`RGBExtractor`: a timm ViT (DINO ViT-B/8 by default), patch tokens as a feature map.
- :class:`PointMAEEncoder`: PointMAE in plain torch; ``forward(points)`` -> (features, centres).
- :class:`ColorGradientExtractor`, :class:`FPFHExtractor`: weight-free features for the
  ``"offline"`` preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .offline import ColorGradientExtractor, FPFHExtractor, OrganizedGeometryExtractor, SurfaceDeviationExtractor
from .pointmae import PointMAEConfig, PointMAEEncoder
from .rgb import RGBExtractor, WeightsUnavailableError

__all__ = [
    "RGBExtractor",
    "PointMAEEncoder",
    "PointMAEConfig",
    "ColorGradientExtractor",
    "FPFHExtractor",
    "SurfaceDeviationExtractor",
    "OrganizedGeometryExtractor",
    "WeightsUnavailableError",
    "build_rgb_extractor",
    "build_point_extractor",
    "default_pointmae_dir",
    "feature_dims",
]

#: Where ``mafr convert pointmae`` puts the converted official weights unless told otherwise.
POINTMAE_ENV = "MAFR_POINTMAE_WEIGHTS"


def default_pointmae_dir() -> Path:
    """``$MAFR_POINTMAE_WEIGHTS``, else ``pointmae`` in the cache (``$MAFR_CACHE``, default
    ``~/.cache/mafr``)."""
    from ..download import pointmae_dir  # not at import: mafr.download imports this package

    return pointmae_dir()


def build_rgb_extractor(config) -> nn.Module:
    """RGB extractor described by ``config`` (a :class:`~mafr.MAFRConfig`); has ``out_dim`` and
    ``patch_size``."""
    rgb = config.rgb
    if rgb.kind == "offline":
        return ColorGradientExtractor(
            ring_radii=rgb.ring_radii, rarity_on_part=rgb.rarity_on_part,
            ring_intensity_weight=rgb.ring_intensity_weight,
            ring_normal_weight=rgb.ring_normal_weight, ring_normal_sigma=rgb.ring_normal_sigma,
        )
    weights = rgb.weights or config.extractor_weights
    return RGBExtractor(rgb.model_name, weights, rgb.image_size, rgb.timm_kwargs, seed=config.extractor_seed)


def _pointmae_config(config) -> PointMAEConfig:
    p = config.points
    return PointMAEConfig(
        num_groups=p.num_groups,
        group_size=p.group_size,
        embed_dim=p.embed_dim,
        depth=p.depth,
        num_heads=p.num_heads,
        out_indices=p.out_indices,
        fps_max_points=p.fps_max_points,
    )


def build_point_extractor(config) -> nn.Module:
    """3D extractor described by ``config``: a :class:`PointMAEEncoder`, or a weight-free
    :class:`SurfaceDeviationExtractor` / :class:`FPFHExtractor` (plus deviation channels)."""
    p = config.points
    if p.kind == "deviation":
        return SurfaceDeviationExtractor(p.deviation_scales, peaks=p.deviation_peaks, peak_sigma=p.deviation_peak_sigma,
                                         order=p.deviation_order)
    if p.kind == "fpfh":
        return (OrganizedGeometryExtractor(p.deviation_scales, peaks=p.deviation_peaks, peak_sigma=p.deviation_peak_sigma,
                                            order=p.deviation_order)
                if p.deviation_scales else FPFHExtractor())
    wanted = _pointmae_config(config)
    weights = p.weights or config.extractor_weights
    if weights == "random":
        return PointMAEEncoder.random(wanted, seed=config.extractor_seed)
    if weights == "default":
        from ..download import ensure_pointmae

        # First use: fetched, hash-checked and converted into the cache (docs/getting-started.md).
        source = ensure_pointmae()
    else:
        source = weights
    encoder = PointMAEEncoder.from_pretrained(source)
    arch = ("embed_dim", "depth", "num_heads")
    if any(getattr(encoder.config, k) != getattr(wanted, k) for k in arch):
        raise ValueError(
            f"PointMAE weights at {source} have architecture "
            f"{ {k: getattr(encoder.config, k) for k in arch} }, the config asks for { {k: getattr(wanted, k) for k in arch} }"
        )
    # Grouping sizes and output blocks are run-time choices, not part of the weights.
    encoder.config = wanted
    return encoder


def feature_dims(config) -> tuple[Optional[int], Optional[int]]:
    """Channels the config's extractors produce, without building a pretrained one or loading
    weights (``None``: an exotic timm model whose width is known only once built)."""
    rgb_dim: Optional[int] = None
    if config.rgb.kind == "offline":
        rgb_dim = build_rgb_extractor(config).out_dim
    else:
        try:
            import timm

            # On the meta device nothing is allocated or downloaded: only the width is wanted.
            with torch.device("meta"):
                vit = timm.create_model(
                    config.rgb.model_name, pretrained=False, num_classes=0,
                    **{"img_size": config.rgb.image_size, **config.rgb.timm_kwargs},
                )
            rgb_dim = int(vit.embed_dim)
        except Exception:  # an exotic timm model: skip the check rather than refuse to convert
            rgb_dim = None
    p = config.points
    xyz_dim = build_point_extractor(config).out_dim if p.kind != "pointmae" else p.embed_dim * len(p.out_indices)
    return rgb_dim, xyz_dim
