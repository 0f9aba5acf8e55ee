"""The MVTec 3D-AD preprocessing (plane removal, square padding, largest cluster) in numpy
(docs/method.md, "Preprocessing").

The reference scripts (open3d based; the BTF/M3DM ``preprocessing.py`` the CFM code base uses):

1. fit a plane with RANSAC (50 points a sample, 1000 iterations, inlier distance 0.004) to the
   valid points of the 10-pixel frame of the organized cloud and zero every point within 0.005
   of it;
2. zero-pad image and cloud to a square whose side is the larger side rounded up to a multiple
   of 100, the content centred (``a = (side - h) // 2`` rows above, the rest below; same for
   columns);
3. DBSCAN (eps 0.006, min 30 points) and keep the largest cluster.

The reference's ``processing/preprocess_mvtec.py`` rewrites only the point cloud: its RGB
write-back is commented out, so DINO sees the original photograph. Here the RGB is padded with
the cloud (so the two stay aligned on any image size; MVTec's 800 x 800 images need no padding)
and otherwise left as it is, unless ``mask_background=True`` blackens the pixels whose points
steps 1 and 3 removed (what the BTF/M3DM scripts do).

Step 1 differs by default: the tolerance is measured on each scan's border, not fixed
(:mod:`mafr.support`), because a fixed 5 mm removes any part thinner than that with the table;
``remove_distance=0.005`` restores the reference's rule. Either way a
:class:`mafr.errors.PartRemovedWarning` says when a step takes the part with it.

Here step 3 is connected components on the pixel grid (neighbours within ``window`` pixels that
are both valid and closer than ``eps`` in 3D): no open3d, and on organized scans the two agree
except where DBSCAN would bridge a gap of missing pixels (use ``window`` > 1 for that).
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from .._graph import connected_components
from ..errors import PartRemovedWarning
from ..io import measured_pixels
from ..support import border_frame, find_support
import tifffile
from PIL import Image

from .mvtec3d import SPLITS, categories as list_categories, load_mask_png, load_xyz_tiff

PathLike = Union[str, Path]
#: Fewer measured points than this left after removing the support: the part went with it
#: (DBSCAN's ``min_points`` of the reference's clustering step).
_MIN_PART_POINTS = 30


def _check_xyz(xyz: np.ndarray, name: str = "xyz") -> np.ndarray:
    arr = np.asarray(xyz)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must be an organized H x W x 3 point map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a float array (metres), got dtype {arr.dtype}")
    return arr


def _check_rgb(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"rgb must be an H x W x 3 (or x 4) image, got shape {arr.shape}")
    if arr.shape[:2] != tuple(shape):
        raise ValueError(f"rgb ({arr.shape[0]} x {arr.shape[1]}) and xyz ({shape[0]} x {shape[1]}) "
                         "must have the same height and width")
    return arr[..., :3]


def fit_border_plane(
    xyz: np.ndarray,
    *,
    border: int = 10,
    ransac_n: int = 50,
    iterations: int = 1000,
    inlier_distance: float = 0.004,
    seed: int = 0,
) -> np.ndarray:
    """RANSAC plane ``(a, b, c, d)`` (unit normal, ``a x + b y + c z + d = 0``) through the valid
    points of the ``border``-pixel frame.

    Each iteration fits a least-squares plane to ``ransac_n`` random frame points and counts the
    points within ``inlier_distance``; the best plane is refitted to its inliers, as open3d's
    ``segment_plane`` does.
    """
    xyz = _check_xyz(xyz)
    h, w = xyz.shape[:2]
    if not isinstance(border, (int, np.integer)) or border < 1 or 2 * border >= min(h, w):
        raise ValueError(f"border must be an integer in [1, {(min(h, w) - 1) // 2}] for a "
                         f"{h} x {w} map, got {border!r}")
    if not isinstance(ransac_n, (int, np.integer)) or ransac_n < 3:
        raise ValueError(f"ransac_n must be an integer >= 3, got {ransac_n!r}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if not inlier_distance > 0:
        raise ValueError(f"inlier_distance must be > 0, got {inlier_distance!r}")
    frame = border_frame(h, w, border)
    pts = xyz[frame & measured_pixels(xyz)].astype(np.float64)
    if len(pts) < ransac_n:
        raise ValueError(f"too few valid points in the {border}-pixel border to fit the table plane: "
                         f"need at least ransac_n={ransac_n}, got {len(pts)}")

    rng = np.random.default_rng(seed)
    # Centre the points so float32 distance tests keep sub-millimetre precision.
    origin = pts.mean(axis=0)
    local = pts - origin
    local32 = local.astype(np.float32)
    best_count, best_plane = -1, None
    chunk = max(1, min(iterations, 4_000_000 // max(len(pts), 1)))
    for start in range(0, iterations, chunk):
        m = min(chunk, iterations - start)
        idx = rng.integers(0, len(pts), size=(m, ransac_n))
        sample = local[idx]  # m x n x 3
        centre = sample.mean(axis=1)
        dev = sample - centre[:, None, :]
        cov = np.einsum("mni,mnj->mij", dev, dev)
        normal = np.linalg.eigh(cov)[1][:, :, 0]  # eigenvector of the smallest eigenvalue
        offset = -np.einsum("mi,mi->m", normal, centre)
        dist = np.abs(local32 @ normal.T.astype(np.float32) + offset.astype(np.float32))
        counts = (dist < inlier_distance).sum(axis=0)
        j = int(np.argmax(counts))
        if counts[j] > best_count:
            best_count, best_plane = int(counts[j]), (normal[j], offset[j])
    normal, offset = best_plane
    inliers = local[np.abs(local @ normal + offset) < inlier_distance]
    if len(inliers) >= 3:
        centre = inliers.mean(axis=0)
        normal = np.linalg.eigh((inliers - centre).T @ (inliers - centre))[1][:, 0]
        offset = -normal @ centre
    offset = offset - normal @ origin  # back to the original coordinates
    return np.array([*normal, offset])


def remove_background_plane(
    xyz: np.ndarray,
    *,
    border: int = 10,
    ransac_n: int = 50,
    iterations: int = 1000,
    inlier_distance: float = 0.004,
    remove_distance: Optional[float] = None,
    seed: int = 0,
) -> np.ndarray:
    """A copy of ``xyz`` with its measured support (the table) zeroed.

    ``remove_distance=None`` (default): the support and its tolerance are measured on the scan's
    border (:func:`mafr.support.find_support`: a plane, and a tolerance that follows how evenly
    the border was measured), so a part 1 mm above a support measured to a few tenths of a
    millimetre survives. Where part and support cannot be told apart, nothing is removed and a
    :class:`mafr.errors.PartRemovedWarning` says why. ``remove_distance=0.005`` is the
    reference scripts' fixed rule: every point within that distance of the plane that
    :func:`fit_border_plane` fits (RANSAC on the valid points of the ``border``-pixel frame)
    is zeroed, whatever that takes with it (``border``, ``ransac_n``, ``iterations`` and
    ``inlier_distance`` are that fit's). Either raises ValueError when the frame has too few
    valid points (e.g. a cloud whose background was already removed).
    """
    return _remove_support(xyz, border=border, ransac_n=ransac_n, iterations=iterations,
                           inlier_distance=inlier_distance, remove_distance=remove_distance, seed=seed)[0]


def _remove_support(xyz: np.ndarray, *, remove_distance: Optional[float] = None, seed: int = 0, where: str = "",
                    **plane_kw) -> tuple[np.ndarray, float]:
    """``(xyz without its support, estimated part height in metres)``; warns where it must."""
    xyz = _check_xyz(xyz)
    if remove_distance is None:
        report, support = find_support(xyz, seed=seed)
        if report.status == "none":
            raise ValueError("too few valid points in the scan's border to find the table it lies on "
                             "(is the background already removed?)")
        if support is None:
            warnings.warn(f"mafr: {where or 'scan'}: the support was left in: {report.describe()}",
                          PartRemovedWarning, stacklevel=3)
            return xyz.copy(), report.part_height
        out = xyz.copy()
        out[support] = 0
        return out, report.part_height
    if not remove_distance > 0:
        raise ValueError(f"remove_distance must be > 0, got {remove_distance!r}")
    plane = fit_border_plane(xyz, seed=seed, **plane_kw)
    out = xyz.copy()
    valid = measured_pixels(xyz)
    signed = xyz.astype(np.float64) @ plane[:3] + plane[3]
    out[(np.abs(signed) < remove_distance) & valid] = 0
    kept = measured_pixels(out)
    # What stands above the support by the measured rule is the part: the fixed rule must keep it.
    report, support = find_support(xyz, seed=seed)
    above = valid & ~support if support is not None else kept
    height = report.part_height if support is not None else (
        float(np.percentile(np.abs(signed[kept]), 99)) if kept.any() else 0.0)
    lost = int((above & ~kept).sum())
    if kept.sum() < _MIN_PART_POINTS or lost > 0.05 * above.sum():
        warnings.warn(f"mafr: {where or 'scan'}: removing every point within {1000 * remove_distance:.1f} mm of the "
                      f"table keeps {100 * kept.sum() / max(valid.sum(), 1):.1f}% of the measured pixels and takes "
                      f"{100 * lost / max(int(above.sum()), 1):.0f}% of the part (about {1000 * height:.1f} mm high) "
                      "with it; remove_distance=None measures the tolerance on the scan", PartRemovedWarning, stacklevel=3)
    return out, height


def square_padding(height: int, width: int, multiple: int = 100) -> tuple[int, int, int]:
    """``(side, top, left)`` of the reference padding: side = larger side rounded up to a
    multiple of ``multiple``; the content is centred (the odd pixel goes below / right)."""
    if not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    side = max(-(-height // multiple), -(-width // multiple)) * multiple
    return side, (side - height) // 2, (side - width) // 2


def pad_array_to_square(arr: np.ndarray, multiple: int = 100) -> np.ndarray:
    """Zero-pad an H x W (x C) array as :func:`pad_to_square` does (for masks and the like)."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an H x W or H x W x C array, got shape {arr.shape}")
    side, top, left = square_padding(arr.shape[0], arr.shape[1], multiple)
    pad = [(top, side - arr.shape[0] - top), (left, side - arr.shape[1] - left)]
    return np.pad(arr, pad + [(0, 0)] * (arr.ndim - 2))


def pad_to_square(rgb: np.ndarray, xyz: np.ndarray, multiple: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad image and point map to a square, content centred (black / no measurement).

    The side is the larger side rounded up to a multiple of ``multiple`` (800 x 600 -> 800 x 800,
    224 x 224 -> 300 x 300), as in the reference ``pad_cropped_pc``.
    """
    xyz = _check_xyz(xyz)
    rgb = _check_rgb(rgb, xyz.shape[:2])
    return pad_array_to_square(rgb, multiple), pad_array_to_square(xyz, multiple)


def keep_largest_component(
    xyz: np.ndarray, *, eps: float = 0.006, min_points: int = 30, window: int = 1
) -> np.ndarray:
    """A copy of ``xyz`` keeping only the largest connected cluster of valid points.

    Two valid pixels are connected when they are within ``window`` pixels of each other
    (``window=1``: the 8 neighbours) and closer than ``eps`` in 3D. Ties go to the cluster
    that starts first in raster order. If the largest cluster has fewer than ``min_points``
    points, everything is noise (as for DBSCAN) and an all-zero map is returned.
    """
    xyz = _check_xyz(xyz)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not isinstance(min_points, (int, np.integer)) or min_points < 1:
        raise ValueError(f"min_points must be a positive integer, got {min_points!r}")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    h, w = xyz.shape[:2]
    valid = measured_pixels(xyz)
    n = int(valid.sum())
    out = np.zeros_like(xyz)
    if n == 0:
        return out
    index = np.full((h, w), -1, dtype=np.int64)
    index[valid] = np.arange(n)
    pts = xyz.astype(np.float64)
    eps2 = float(eps) ** 2
    heads, tails = [], []
    for dy in range(0, window + 1):
        for dx in range(-window, window + 1):
            if dy == 0 and dx <= 0:
                continue  # each unordered pair once
            ys, ye = 0, h - dy
            xs, xe = max(0, -dx), min(w, w - dx)
            if ye <= ys or xe <= xs:
                continue
            src = (slice(ys, ye), slice(xs, xe))
            dst = (slice(ys + dy, ye + dy), slice(xs + dx, xe + dx))
            d2 = np.sum((pts[src] - pts[dst]) ** 2, axis=-1)
            ok = valid[src] & valid[dst] & (d2 < eps2)
            heads.append(index[src][ok])
            tails.append(index[dst][ok])
    labels = connected_components(n, np.concatenate(heads), np.concatenate(tails))
    sizes = np.bincount(labels, minlength=n)
    largest = int(np.argmax(sizes))
    if sizes[largest] < min_points:
        return out
    keep = np.zeros((h, w), dtype=bool)
    keep[valid] = labels == largest
    out[keep] = xyz[keep]
    return out


def preprocess_sample(
    rgb: np.ndarray, xyz: np.ndarray, seed: int = 0, *, mask_background: bool = False,
    remove_distance: Optional[float] = None, name: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessing of one sample: support (plane) removal, square padding, largest cluster.

    Returns new ``(rgb, xyz)`` arrays (uint8-compatible H' x W' x 3, float H' x W' x 3). The RGB
    is only padded, as the reference leaves it; ``mask_background=True`` also sets the pixels
    whose points steps 1 and 3 removed to black. Pad ground-truth masks with
    :func:`pad_array_to_square` to keep them aligned. ``remove_distance``: see
    :func:`remove_background_plane` (``None``, the default, measures the tolerance on the scan;
    ``0.005`` is the reference's fixed one). A :class:`mafr.errors.PartRemovedWarning` (naming
    ``name``, e.g. the file) says when a step would take the part with it: the share of measured
    pixels kept and the estimated part height.
    """
    xyz = _check_xyz(xyz)
    rgb = _check_rgb(rgb, xyz.shape[:2])
    before = measured_pixels(xyz)
    planeless, height = _remove_support(xyz, remove_distance=remove_distance, seed=seed, where=name)
    if mask_background:
        rgb = np.where((before & ~measured_pixels(planeless))[..., None], 0, rgb).astype(rgb.dtype)
    rgb, planeless = pad_to_square(rgb, planeless)
    cleaned = keep_largest_component(planeless)
    n_planeless, n_kept = int(measured_pixels(planeless).sum()), int(measured_pixels(cleaned).sum())
    if n_planeless >= _MIN_PART_POINTS and n_kept < 0.5 * n_planeless:
        # A thin part cut into islands by the tolerance: the largest is not the part.
        warnings.warn(f"mafr: {name or 'scan'}: the largest connected cluster keeps {100 * n_kept / n_planeless:.1f}% "
                      f"of what stood above the support ({100 * n_kept / max(int(before.sum()), 1):.1f}% of the measured "
                      f"pixels; part height about {1000 * height:.1f} mm): the part is in pieces",
                      PartRemovedWarning, stacklevel=2)
    if mask_background:
        dropped = measured_pixels(planeless) & ~measured_pixels(cleaned)
        rgb = np.where(dropped[..., None], 0, rgb).astype(rgb.dtype)
    return rgb, cleaned


def preprocess_dataset(
    src_root: PathLike,
    dst_root: PathLike,
    categories: Optional[Iterable[str]] = None,
    seed: int = 0,
    progress: bool = True,
    *,
    mask_background: bool = False,
) -> Path:
    """Write a preprocessed copy of an MVTec 3D-AD style dataset and return ``dst_root``.

    Every ``<category>/<split>/<type>/{rgb,xyz}`` pair goes through :func:`preprocess_sample`
    (RGB kept as it is unless ``mask_background=True``);
    ``gt`` masks are padded the same way (0/255 PNG). Other files of a category folder (e.g.
    ``calibration/``) are copied unchanged. ``dst_root`` must differ from ``src_root``.
    """
    src, dst = Path(src_root), Path(dst_root)
    if src.resolve() == dst.resolve():
        raise ValueError(f"dst_root must differ from src_root (both are {src})")
    present = list_categories(src)
    cats = present if categories is None else list(categories)
    missing = [c for c in cats if c not in present]
    if missing:
        raise FileNotFoundError(f"categories {missing} not found under {src} (present: {present})")
    for cat in cats:
        for item in sorted((src / cat).iterdir()):
            if item.name in SPLITS:
                continue
            target = dst / cat / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
        for split in SPLITS:
            split_dir = src / cat / split
            if not split_dir.is_dir():
                continue
            started, count = time.perf_counter(), 0
            for kind_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                out_dir = dst / cat / split / kind_dir.name
                for rgb_path in sorted((kind_dir / "rgb").glob("*.png")):
                    xyz_path = kind_dir / "xyz" / f"{rgb_path.stem}.tiff"
                    with Image.open(rgb_path) as img:
                        rgb = np.asarray(img.convert("RGB"))
                    xyz = load_xyz_tiff(xyz_path)
                    try:
                        rgb_out, xyz_out = preprocess_sample(rgb, xyz, seed=seed, mask_background=mask_background,
                                                             name=str(xyz_path))
                    except ValueError as err:
                        raise ValueError(f"{xyz_path}: {err}") from err
                    for sub in ("rgb", "xyz"):
                        (out_dir / sub).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rgb_out.astype(np.uint8)).save(out_dir / "rgb" / rgb_path.name)
                    tifffile.imwrite(out_dir / "xyz" / xyz_path.name, xyz_out.astype(np.float32),
                                     photometric="rgb")
                    gt_path = kind_dir / "gt" / rgb_path.name
                    if gt_path.is_file():
                        (out_dir / "gt").mkdir(parents=True, exist_ok=True)
                        gt = pad_array_to_square(load_mask_png(gt_path)).astype(np.uint8) * 255
                        Image.fromarray(gt).save(out_dir / "gt" / gt_path.name)
                    count += 1
            if progress:
                print(f"preprocessed {cat}/{split}: {count} samples in "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return dst
