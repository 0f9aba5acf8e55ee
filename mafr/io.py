"""Reading and validating what users pass in. Everything returns fresh arrays: inputs are never
modified in place.

- RGB: H x W x 3 uint8 array, a PIL image or a path.
- 3D: an organized H' x W' x 3 float map (zeros = no measurement), a path to an MVTec 3D-AD
  ``.tiff`` (or ``.npy``), a :class:`~mafr.types.PointCloud` or a :class:`~mafr.types.DepthMap`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from .projection import depth_to_xyz, project_points
from .types import DepthMap, PointCloud, Sample

#: Aspect ratios of RGB and xyz may differ by this much and still be aligned by resizing.
_ASPECT_TOLERANCE = 0.01


def load_rgb(rgb: Any) -> np.ndarray:
    """-> H x W x 3 uint8 (a copy)."""
    from PIL import Image

    if isinstance(rgb, (str, Path)):
        path = Path(rgb)
        if not path.is_file():
            raise FileNotFoundError(f"RGB image not found: {path}")
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    if isinstance(rgb, Image.Image):
        return np.array(rgb.convert("RGB"))
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be an H x W x 3 uint8 array, a PIL image or a path, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be H x W x 3 (3 colour channels), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise TypeError(
            f"rgb must have dtype uint8 (0..255), got {rgb.dtype}; for floats in [0, 1] pass "
            "(img * 255).round().astype(np.uint8)"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"rgb is empty, shape {rgb.shape}")
    return rgb.copy()


def _read_xyz_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"xyz file not found: {path}")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    import tifffile

    return tifffile.imread(path)


def load_xyz(xyz: Any, rgb_shape: tuple[int, int]) -> np.ndarray:
    """-> organized float32 map at the RGB resolution ``rgb_shape`` (H, W), zeros = no point."""
    h, w = rgb_shape
    if isinstance(xyz, PointCloud):
        out = project_points(xyz.points, xyz.intrinsics, h, w, xyz.extrinsics)
    elif isinstance(xyz, DepthMap):
        out = depth_to_xyz(xyz.depth, xyz.intrinsics, xyz.depth_scale)
    else:
        if isinstance(xyz, (str, Path)):
            xyz = _read_xyz_file(Path(xyz))
        if not isinstance(xyz, np.ndarray):
            raise TypeError(
                "xyz must be an organized H x W x 3 float array, a path to a .tiff/.npy, "
                f"a mafr.PointCloud or a mafr.DepthMap, got {type(xyz).__name__}"
            )
        if xyz.ndim != 3 or xyz.shape[2] != 3:
            raise ValueError(f"xyz must be an organized H x W x 3 map (x, y, z per pixel), got shape {xyz.shape}")
        if not np.issubdtype(xyz.dtype, np.floating):
            raise TypeError(f"xyz must be a float array (metres), got dtype {xyz.dtype}")
        out = xyz.astype(np.float32, copy=True)
    if not np.all(np.isfinite(out)):
        bad = int((~np.isfinite(out)).any(axis=-1).sum())
        raise ValueError(f"xyz contains NaN or inf at {bad} pixels; mark missing measurements with (0, 0, 0)")
    if out.shape[:2] != (h, w):
        out = _align_to(out, h, w)
    if not np.any(out != 0):
        raise ValueError("xyz has no valid 3D point: every pixel is (0, 0, 0) (no measurement)")
    return out


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels when resizing ``n_in`` pixels with nearest
    neighbour (pixel centres): the one rule for xyz maps, network inputs and ground-truth masks,
    so geometry, features and masks stay on the same pixels."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """``arr`` (H x W [x C]) resized to ``h x w`` with :func:`nearest_index`; a new array."""
    return arr[nearest_index(h, arr.shape[0])][:, nearest_index(w, arr.shape[1])]


def _align_to(xyz: np.ndarray, h: int, w: int) -> np.ndarray:
    xh, xw = xyz.shape[:2]
    if abs(xh / xw - h / w) > _ASPECT_TOLERANCE * (h / w):
        raise ValueError(
            f"RGB is {h} x {w} but xyz is {xh} x {xw}: different aspect ratios cannot be aligned pixel to "
            "pixel; crop or pad one of them so both show the same field of view"
        )
    return resize_nearest(xyz, h, w)


def as_sample(item: Any) -> Sample:
    """Accept a :class:`Sample` or an ``(rgb, xyz)`` tuple."""
    if isinstance(item, Sample):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return Sample(rgb=item[0], xyz=item[1])
    raise TypeError(f"a sample must be mafr.Sample(rgb=..., xyz=...) or an (rgb, xyz) tuple, got {type(item).__name__}")


def load_sample(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """-> (rgb H x W x 3 uint8, xyz H x W x 3 float32 at the RGB resolution), validated."""
    sample = as_sample(item)
    rgb = load_rgb(sample.rgb)
    return rgb, load_xyz(sample.xyz, rgb.shape[:2])


PathLike = Union[str, Path]
