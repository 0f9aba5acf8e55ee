"""Weight-free feature extractors for the ``"offline"`` preset.

Factory lines are often air-gapped, so besides DINO ViT-B/8 (RGB) and PointMAE (3D) mafr offers
extractors that need no downloaded weights. They follow published, hand-crafted practice and emit
dense per-position features that the same fusion autoencoder restores. Each lives in a module of
its own; this one gathers them under the name the offline preset has always used:

- :mod:`mafr.extractors.colour`: :class:`ColorGradientExtractor` (RGB: colour moments, oriented
  gradients, colour rarity per cell).
- :mod:`mafr.extractors.fpfh`: :class:`FPFHExtractor` (3D: Fast Point Feature Histograms, the
  angles between neighbouring normals).
- :mod:`mafr.extractors.surface`: :class:`SurfaceDeviationExtractor` (3D: relief against the
  local smooth surface) and :class:`OrganizedGeometryExtractor` (both 3D cues side by side).

None has parameters (constants are non-persistent buffers), so ``state_dict()`` is empty and there
is nothing to load; all run under ``torch.no_grad``, are deterministic on CPU and return float32.
"""

from .colour import IMAGENET_MEAN, IMAGENET_STD, ColorGradientExtractor
from .fpfh import FPFHExtractor
from .surface import OrganizedGeometryExtractor, SurfaceDeviationExtractor, _running_max, smoothed_normals

__all__ = ["FPFHExtractor", "ColorGradientExtractor", "SurfaceDeviationExtractor", "OrganizedGeometryExtractor",
           "smoothed_normals", "IMAGENET_MEAN", "IMAGENET_STD", "_running_max"]
