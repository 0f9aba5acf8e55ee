"""Reading and validating what users pass in. Everything returns fresh arrays: inputs are never
modified in place.

- RGB: H x W x 3 uint8 array, a PIL image or a path.
- 3D: an organized H' x W' x 3 float map (zeros = no measurement), a path to an MVTec 3D-AD
  ``.tiff`` (or ``.npy``), a :class:`~mafr.types.PointCloud` or a :class:`~mafr.types.DepthMap`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import InputNotFoundError, InputTypeError, InvalidInputError, UnreadableFileError
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
            raise InputNotFoundError(f"RGB image not found: {path}", path=path)
        try:
            with Image.open(path) as im:
                # convert() decodes every pixel, so a truncated file fails here, not later.
                return np.array(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UnreadableFileError(f"RGB image {path} cannot be read: {_why(err)}", path=path) from err
    if isinstance(rgb, Image.Image):
        return np.array(rgb.convert("RGB"))
    if not isinstance(rgb, np.ndarray):
        raise InputTypeError(f"rgb must be an H x W x 3 uint8 array, a PIL image or a path, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidInputError(f"rgb must be H x W x 3 (3 colour channels), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise InputTypeError(
            f"rgb must have dtype uint8 (0..255), got {rgb.dtype}; for floats in [0, 1] pass "
            "(img * 255).round().astype(np.uint8)"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InvalidInputError(f"rgb is empty, shape {rgb.shape}")
    return rgb.copy()


def _read_xyz_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputNotFoundError(f"xyz file not found: {path}", path=path)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import tifffile

        return tifffile.imread(path)
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, RuntimeError) as err:
        kind = "a .npy array" if path.suffix.lower() == ".npy" else "a TIFF"
        raise UnreadableFileError(f"xyz file {path} cannot be read as {kind}: {_why(err)}", path=path) from err


def _why(err: BaseException) -> str:
    """The library's reason in one line, with a plain word for the common cases."""
    text = " ".join(str(err).split()) or type(err).__name__
    low = text.lower()
    if "truncated" in low or "eof" in low or "not enough" in low or "unexpected end" in low:
        return f"the file is truncated ({text})"
    if "cannot identify image" in low or "not a tiff" in low or "invalid tiff" in low:
        return f"not an image of a known format ({text})"
    return text


def _checked(fn, *args):
    """Run a projection helper, turning its builtin errors into mafr's typed ones."""
    try:
        return fn(*args)
    except TypeError as err:
        raise InputTypeError(str(err)) from err
    except ValueError as err:
        raise InvalidInputError(str(err)) from err


def _check_intrinsics(k: np.ndarray, owner: str) -> None:
    fx, fy = float(k[0, 0]), float(k[1, 1])
    if not (fx > 0 and fy > 0):
        raise InvalidInputError(
            f"{owner}.intrinsics must have positive focal lengths fx = K[0, 0] and fy = K[1, 1] (pixels), "
            f"got fx={fx:g}, fy={fy:g}; with these every point lands on one pixel or at infinity"
        )


#: A projected cloud whose points land on fewer distinct pixels than this is degenerate.
MIN_PROJECTED_PIXELS = 9


def measured_pixels(xyz: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels of an organized ``(H, W, 3)`` map with a measurement (any
    coordinate non-zero; zeros are "no point"). Three comparisons of the planes, about 7x faster
    than ``np.any(xyz != 0, axis=-1)``, which reduces over the short last axis."""
    return (xyz[..., 0] != 0) | (xyz[..., 1] != 0) | (xyz[..., 2] != 0)


def load_xyz(xyz: Any, rgb_shape: Optional[tuple[int, int]]) -> np.ndarray:
    """-> organized float32 map at the RGB resolution ``rgb_shape`` (H, W), zeros = no point;
    ``rgb_shape=None`` (no image: a scan judged alone) keeps the map's own resolution.

    Raises :class:`~mafr.InvalidInputError` (:class:`~mafr.UnreadableFileError` for files that
    cannot be decoded) naming the file, if one was given, and what is wrong."""
    source = ""
    if rgb_shape is None and isinstance(xyz, PointCloud):
        raise InvalidInputError("a mafr.PointCloud is projected onto an image's pixel grid, and there is no image: "
                                "judged on 3D alone, give an organized H x W x 3 map or a mafr.DepthMap")
    if isinstance(xyz, PointCloud):
        h, w = rgb_shape
        _check_intrinsics(xyz.intrinsics, "PointCloud")
        out = _checked(project_points, xyz.points, xyz.intrinsics, h, w, xyz.extrinsics)
        hit = int(np.count_nonzero(measured_pixels(out)))
        n = len(np.asarray(xyz.points))
        if 0 < hit < MIN_PROJECTED_PIXELS <= n:
            raise InvalidInputError(
                f"degenerate projection: {n} points land on only {hit} of the {h} x {w} image's pixels; "
                "check PointCloud.intrinsics (focal lengths in pixels, principal point near the image centre) "
                "and extrinsics (world to camera)"
            )
    elif isinstance(xyz, DepthMap):
        _check_intrinsics(xyz.intrinsics, "DepthMap")
        out = _checked(depth_to_xyz, xyz.depth, xyz.intrinsics, xyz.depth_scale)
    else:
        if isinstance(xyz, (str, Path)):
            source = f" ({xyz})"
            xyz = _read_xyz_file(Path(xyz))
        if not isinstance(xyz, np.ndarray):
            raise InputTypeError(
                "xyz must be an organized H x W x 3 float array, a path to a .tiff/.npy, "
                f"a mafr.PointCloud or a mafr.DepthMap, got {type(xyz).__name__}"
            )
        if xyz.ndim != 3 or xyz.shape[2] != 3:
            raise InvalidInputError(f"xyz{source} must be an organized H x W x 3 map (x, y, z per pixel), got shape {xyz.shape}")
        if not np.issubdtype(xyz.dtype, np.floating):
            if source:
                raise InvalidInputError(f"xyz{source} must hold floats (metres), got dtype {xyz.dtype}")
            raise InputTypeError(f"xyz must be a float array (metres), got dtype {xyz.dtype}")
        if xyz.shape[0] == 0 or xyz.shape[1] == 0:
            raise InvalidInputError(f"xyz{source} is empty, shape {xyz.shape}")
        out = xyz.astype(np.float32, copy=True)
    if not np.all(np.isfinite(out)):
        bad = int((~np.isfinite(out)).any(axis=-1).sum())
        raise InvalidInputError(f"xyz{source} contains NaN or inf at {bad} pixels (or values beyond float32); mark missing measurements with (0, 0, 0)")
    if rgb_shape is not None and out.shape[:2] != tuple(rgb_shape):
        out = _align_to(out, *rgb_shape, source)
    if not np.any(out != 0):
        raise InvalidInputError(f"xyz{source} has no valid 3D point: every pixel is (0, 0, 0) (no measurement)")
    return out


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels when resizing ``n_in`` pixels with nearest
    neighbour (pixel centres): the one rule for xyz maps, network inputs and ground-truth masks,
    so geometry, features and masks stay on the same pixels."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """``arr`` (H x W [x C]) resized to ``h x w`` with :func:`nearest_index`; a new array."""
    return arr[nearest_index(h, arr.shape[0])][:, nearest_index(w, arr.shape[1])]


def _align_to(xyz: np.ndarray, h: int, w: int, source: str = "") -> np.ndarray:
    xh, xw = xyz.shape[:2]
    if abs(xh / xw - h / w) > _ASPECT_TOLERANCE * (h / w):
        raise InvalidInputError(
            f"RGB is {h} x {w} but xyz{source} is {xh} x {xw}: different aspect ratios cannot be aligned pixel to "
            "pixel; crop or pad one of them so both show the same field of view"
        )
    return resize_nearest(xyz, h, w)


def as_sample(item: Any, modalities: str = "rgb+xyz") -> Sample:
    """Accept a :class:`Sample` or an ``(rgb, xyz)`` tuple; for a detector of one modality, also
    that modality alone (an image for ``"rgb"``, a scan for ``"xyz"``)."""
    if isinstance(item, Sample):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return Sample(rgb=item[0], xyz=item[1])
    if modalities in ("rgb", "xyz") and not isinstance(item, (tuple, list, dict)):
        return Sample(rgb=item, xyz=None) if modalities == "rgb" else Sample(rgb=None, xyz=item)
    raise InputTypeError(f"a sample must be mafr.Sample(rgb=..., xyz=...) or an (rgb, xyz) tuple, got {type(item).__name__}")


def load_sample(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """-> (rgb H x W x 3 uint8, xyz H x W x 3 float32 at the RGB resolution), validated."""
    sample = as_sample(item)
    rgb = load_rgb(sample.rgb)
    return rgb, load_xyz(sample.xyz, rgb.shape[:2])


PathLike = Union[str, Path]
