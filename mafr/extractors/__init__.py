"""Frozen feature extractors and the builders that turn a :class:`~mafr.MAFRConfig` into them.

- :class:`RGBExtractor`: a timm ViT (DINO ViT-B/8 by default), patch tokens as a feature map.
- :class:`PointMAEEncoder`: PointMAE in plain torch; ``forward(points)`` -> (features, centres).
- :class:`ColorGradientExtractor`, :class:`FPFHExtractor`: weight-free features for the
  ``"offline"`` preset.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .offline import ColorGradientExtractor, FPFHExtractor
from .pointmae import PointMAEConfig, PointMAEEncoder
from .rgb import RGBExtractor, WeightsUnavailableError

__all__ = [
    "RGBExtractor",
    "PointMAEEncoder",
    "PointMAEConfig",
    "ColorGradientExtractor",
    "FPFHExtractor",
    "WeightsUnavailableError",
    "build_rgb_extractor",
    "build_point_extractor",
    "default_pointmae_dir",
]

#: Where ``mafr convert pointmae`` puts the converted official weights unless told otherwise.
POINTMAE_ENV = "MAFR_POINTMAE_WEIGHTS"


def default_pointmae_dir() -> Path:
    """``$MAFR_POINTMAE_WEIGHTS`` or ``~/.cache/mafr/pointmae``."""
    env = os.environ.get(POINTMAE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mafr" / "pointmae"


def build_rgb_extractor(config) -> nn.Module:
    """RGB extractor described by ``config`` (a :class:`~mafr.MAFRConfig`); has ``out_dim`` and
    ``patch_size``."""
    rgb = config.rgb
    if rgb.kind == "offline":
        return ColorGradientExtractor()
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
    """3D extractor described by ``config``: a :class:`PointMAEEncoder` or an :class:`FPFHExtractor`."""
    p = config.points
    if p.kind == "fpfh":
        return FPFHExtractor()
    wanted = _pointmae_config(config)
    weights = p.weights or config.extractor_weights
    if weights == "random":
        return PointMAEEncoder.random(wanted, seed=config.extractor_seed)
    if weights == "default":
        source = default_pointmae_dir()
        if not (source / "model.safetensors").is_file():
            raise WeightsUnavailableError(
                f"no converted PointMAE weights at {source}. Download Point-MAE's ShapeNet pre-training "
                "checkpoint (pointmae_pretrain.pth, linked from https://github.com/Pang-Yatian/Point-MAE) and run "
                f"`mafr convert pointmae pointmae_pretrain.pth {source}` (or set ${POINTMAE_ENV}, or "
                "MAFRConfig(points={'weights': DIR_OR_REPO_ID})). For tests use extractor_weights='random'; "
                "for weight-free features preset='offline'."
            )
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
