"""The objects users pass in and get back: samples, point clouds, depth maps and results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

PathLike = Union[str, Path]


class _Arrays(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)


def _as_matrix(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must be a {shape[0]} x {shape[1]} matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


class PointCloud(_Arrays):
    """An unorganized point cloud with the camera that saw it.

    ``points`` (N x 3) are in world coordinates, or camera coordinates when ``extrinsics`` is
    omitted. ``extrinsics`` maps world to camera (4 x 4, ``x_cam = R @ x_world + t``);
    ``intrinsics`` is the 3 x 3 pinhole matrix of the RGB camera. The cloud is projected onto the
    RGB pixel grid with a z-buffer (nearest point wins).
    """

    points: Any
    intrinsics: Any
    extrinsics: Optional[Any] = None

    @field_validator("intrinsics")
    @classmethod
    def _check_k(cls, v: Any) -> np.ndarray:
        return _as_matrix(v, (3, 3), "PointCloud.intrinsics")

    @field_validator("extrinsics")
    @classmethod
    def _check_e(cls, v: Any) -> Optional[np.ndarray]:
        return None if v is None else _as_matrix(v, (4, 4), "PointCloud.extrinsics")


class DepthMap(_Arrays):
    """A depth image (H x W, zeros = no measurement) and the pinhole intrinsics that turn it into
    an organized xyz map. ``depth_scale`` converts stored units to metres (0.001 for millimetres).
    """

    depth: Any
    intrinsics: Any
    depth_scale: float = Field(1.0, gt=0)

    @field_validator("intrinsics")
    @classmethod
    def _check_k(cls, v: Any) -> np.ndarray:
        return _as_matrix(v, (3, 3), "DepthMap.intrinsics")


class Sample(_Arrays):
    """One part: an RGB image and its 3D data, plus optional ground truth.

    ``rgb``: H x W x 3 uint8 array, a PIL image or a path. ``xyz``: organized H' x W' x 3 float map
    (zeros = no measurement), a path to an MVTec 3D-AD ``.tiff``, a :class:`PointCloud` or a
    :class:`DepthMap`. ``label`` is 0 for good, 1 for anomalous; ``mask`` an H x W ground-truth map.
    """

    rgb: Any
    xyz: Any
    label: Optional[int] = None
    mask: Optional[Any] = None
    defect_type: Optional[str] = None
    name: Optional[str] = None


class AnomalyResult(BaseModel):
    """What :meth:`mafr.MAFRDetector.predict` returns for one part.

    All maps are float32 (``valid_mask`` bool) at the resolution of the input RGB image.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    score: float
    #: ``score > threshold``; ``None`` when the detector has no finite threshold (converted
    #: without ``--threshold``, never calibrated): no decision was made, so none is reported.
    is_anomalous: Optional[bool]
    threshold: float
    anomaly_map: np.ndarray = Field(repr=False)
    map_2d: np.ndarray = Field(repr=False)
    map_3d: np.ndarray = Field(repr=False)
    valid_mask: np.ndarray = Field(repr=False)
    #: The input image (H x W x 3 uint8), kept for overlays.
    rgb: Optional[np.ndarray] = Field(None, repr=False)
    #: Depth (z of the organized map at the RGB resolution, 0 where missing), kept for panels.
    depth: Optional[np.ndarray] = Field(None, repr=False)
    #: Why this judgement deserves a second look, empty for ordinary parts: ``"small_image"``
    #: (a side under 32 px), ``"little_3d"`` (under 2% of the network input has 3D),
    #: ``"support_unclear"`` (the scan's border is measured, but the part could not be told
    #: from its support, so the support was left in; :mod:`mafr.support`),
    #: ``"no_threshold"`` (the detector has none: ``is_anomalous`` and ``defect_mask`` are
    #: ``None``; set one with ``det.calibrate(good_parts)``). Each but the last
    #: also raised a :class:`mafr.DegenerateInputWarning`. See docs/api.md, "Errors".
    flags: tuple[str, ...] = ()
    #: Pixels judged defective (H x W bool at the input resolution): where the fused map exceeds
    #: the pixel threshold calibrated on good parts (``pixel_threshold``). Empty when the part
    #: is judged good, so the mask and ``is_anomalous`` never disagree. See docs/concepts.md,
    #: "Decisions".
    defect_mask: Optional[np.ndarray] = Field(None, repr=False)
    #: The anomaly-map level above which a pixel counts as defective (``None``: not calibrated,
    #: e.g. a detector converted from the reference code; then ``defect_mask`` is ``None``).
    pixel_threshold: Optional[float] = None

    def to_image(self, alpha: float = 0.5, vmax: Optional[float] = None, outline: bool = True):
        """The anomaly map as a heatmap blended over the RGB image (a PIL image), with the
        outline of ``defect_mask`` drawn in cyan when ``outline``.

        ``vmax`` fixes the top of the colour scale, e.g. to compare several parts on one scale;
        by default each map is scaled to its own maximum.
        """
        from .viz import overlay

        return overlay(self.rgb, self.anomaly_map, alpha=alpha, vmax=vmax,
                       outline=self.defect_mask if outline else None)

    def save_overlay(self, path: PathLike, alpha: float = 0.5, vmax: Optional[float] = None,
                     outline: bool = True) -> Path:
        """Write :meth:`to_image` as a PNG (or any format Pillow infers from the suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_image(alpha=alpha, vmax=vmax, outline=outline).save(path)
        return path

    def to_panel(self):
        """RGB, depth, 2D map, 3D map and fused map side by side with a colour bar and the decision."""
        from .viz import result_panel

        return result_panel(self)

    def summary(self) -> dict[str, Any]:
        """JSON-ready scalars (no maps)."""
        return {
            "score": float(self.score),
            "is_anomalous": None if self.is_anomalous is None else bool(self.is_anomalous),
            "threshold": float(self.threshold),
            "map_max": float(self.anomaly_map.max()) if self.anomaly_map.size else 0.0,
            "valid_fraction": float(self.valid_mask.mean()) if self.valid_mask.size else 0.0,
            "defect_fraction": (float(self.defect_mask.mean()) if self.defect_mask is not None and self.defect_mask.size
                                else None),
            "pixel_threshold": None if self.pixel_threshold is None else float(self.pixel_threshold),
            "flags": list(self.flags),
        }
