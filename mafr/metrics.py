"""Evaluation metrics of the MVTec 3D-AD protocol: I-AUROC, P-AUROC and AUPRO.

Everything is plain numpy (no scikit-learn, no scipy) and exact by default.

Conventions, chosen to match the official MVTec 3D-AD evaluation code (the ``au_pro_util.py``
copied into M3DM and the code bases derived from it, the reference included):

- **AUROC** is the Mann-Whitney statistic with midranks: a (positive, negative) pair counts 1 when
  the positive scores higher and 1/2 when the two scores are equal. This is the area under the
  ROC curve whose points are joined by straight lines, so ties never favour either class.
- **PRO / FPR** at a threshold ``t`` count the pixels scored *strictly above* ``t`` (``score > t``),
  as the reference does. Thresholds are the defect-free scores themselves. With ``>``, a threshold
  equal to a defect-free score ``v`` gives, among all thresholds with the same FPR, the highest
  PRO, so the exact curve is the upper envelope of the (FPR, PRO) step function. The curve is
  closed with the point (1, 1) (a threshold below every score).
- The curve is integrated with the trapezoid rule up to FPR ``limit``, where its value is linearly
  interpolated, and the area is divided by ``limit`` so a perfect map scores 1.
- ``num_thresholds=k`` reproduces the reference's approximation instead: ``k`` thresholds at
  equidistant (truncated) ranks of the sorted defect-free scores, FPR read off the rank as
  ``1 - (rank + 1) / n``. Without ties among defect-free scores that FPR is exact; with ties it
  is the reference's value, not the tie-aware count.

Ground-truth regions are 8-connected components of each mask (pixels touching only at a corner
belong to the same defect), labelled here with a vectorised run-length union-find.

Two protocols (``evaluate(..., protocol=...)``, docs/method.md "Evaluation"):

- ``"exact"`` (default): the maps as given, the exact PRO curve.
- ``"reference"``: what the MAFR reference evaluation computes, so numbers are comparable with
  the paper's table: P-AUROC on each map divided by the square root of its mean, AUPRO on each
  map divided by the mean of its non-zero values, with the 99-rank PRO approximation. Dividing
  by a per-image constant changes how pixels of different images rank against each other, so
  the two protocols give different numbers on the same maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import numpy as np

from ._graph import connected_components

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "aupro_curve",
    "evaluate",
    "reference_protocol_maps",
]

Protocol = Literal["exact", "reference"]
#: Rank count of the reference evaluation's PRO curve.
REFERENCE_NUM_THRESHOLDS = 99

#: FPR integration limits reported by :func:`evaluate` (the first is the MVTec 3D-AD standard).
DEFAULT_LIMITS: tuple[float, ...] = (0.3, 0.1, 0.05, 0.01)


# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------


def _auroc_from_scores(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC of positive scores ``pos`` against negative scores ``neg``.

    ``U = sum over positives of (#neg below + 0.5 * #neg equal)``, which equals the midrank
    formula ``R_pos - n_pos (n_pos + 1) / 2``. Counting with ``searchsorted`` on the sorted
    negatives needs one sort of the negatives only and no rank array, which matters for pixel
    AUROC over tens of millions of pixels. The counts are summed as integers (left + right is
    twice the midrank contribution), so the result is exact up to the final division.
    """
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            "AUROC needs both classes: got "
            f"{pos.size} positive and {neg.size} negative samples"
        )
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    below_or_equal = np.searchsorted(neg_sorted, pos, side="right")
    twice_u = int(below.sum(dtype=np.int64)) + int(below_or_equal.sum(dtype=np.int64))
    return twice_u / (2.0 * float(pos.size) * float(neg.size))


def _check_finite(values: np.ndarray, name: str) -> None:
    """Raise ValueError when ``values`` holds NaN or inf (they have no rank)."""
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or inf")


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level ROC AUC (I-AUROC).

    Args:
        labels: 1-D sequence or array of 0 (good) / 1 (anomalous); booleans are accepted.
        scores: 1-D sequence or array of finite anomaly scores, higher = more anomalous.

    Returns:
        The AUROC in [0, 1]; tied scores across the classes count one half (midranks).

    Raises:
        ValueError: on empty input, different lengths, labels other than 0/1, non-finite
            scores, or when only one class is present.
    """
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}"
        )
    if y.size == 0:
        raise ValueError("labels and scores must not be empty")
    if y.size != s.size:
        raise ValueError(f"got {y.size} labels but {s.size} scores")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    _check_finite(s, "scores")
    if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    positive = y == 1
    if positive.all() or not positive.any():
        raise ValueError("image AUROC needs both good and anomalous images; only one class present")
    return _auroc_from_scores(s[positive], s[~positive])


def _as_image_list(images: Any, name: str) -> list[Any]:
    """Turn a list of 2-D arrays or an N x H x W array into a list (entries left unconverted)."""
    if images is None:
        raise ValueError(f"{name} must not be None")
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        if len(images.shape) != 3:
            raise ValueError(
                f"{name} must be a list of H x W arrays or an N x H x W array, "
                f"got an array of shape {tuple(images.shape)}"
            )
    return list(images)


def _paired_images(
    masks: Any, maps: Any, indices: Optional[Sequence[int]] = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate and convert ``(mask, map)`` pairs: 2-D, same shape per image, finite, non-empty.

    Masks are returned as booleans (``mask > 0``). Maps keep at least float32 precision but are
    not widened beyond what they hold, so float32 maps of a large test set stay half the size.
    ``indices`` gives each pair's index in the caller's list, so that error messages name the
    image the user passed even when some images were left out.
    """
    mask_list = _as_image_list(masks, "masks")
    map_list = _as_image_list(maps, "maps")
    if len(mask_list) == 0:
        raise ValueError("masks and maps must not be empty")
    if len(mask_list) != len(map_list):
        raise ValueError(f"got {len(mask_list)} masks but {len(map_list)} maps")
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    if indices is None:
        indices = range(len(mask_list))
    for i, mask, amap in zip(indices, mask_list, map_list):
        m = np.asarray(mask)
        a = np.asarray(amap)
        if m.ndim != 2 or a.ndim != 2:
            raise ValueError(
                f"masks[{i}] and maps[{i}] must be 2-D (H x W), "
                f"got shapes {m.shape} and {a.shape}"
            )
        if m.shape != a.shape:
            raise ValueError(
                f"masks[{i}] has shape {m.shape} but maps[{i}] has shape {a.shape}"
            )
        if a.size == 0:
            raise ValueError(f"maps[{i}] is empty (shape {a.shape})")
        if a.dtype.kind not in "biuf" or m.dtype.kind not in "biuf":
            raise ValueError(
                f"masks[{i}] and maps[{i}] must be numeric, got dtypes {m.dtype} and {a.dtype}"
            )
        _check_finite(a, f"maps[{i}]")
        _check_finite(m, f"masks[{i}]")
        pairs.append((m > 0, a))
    dtype = np.result_type(*[a.dtype for _, a in pairs], np.float32)
    return [(m, a.astype(dtype, copy=False)) for m, a in pairs]


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level ROC AUC (P-AUROC) over all pixels of all images.

    Args:
        masks: list of H x W ground-truth masks (or an N x H x W array); ``mask > 0`` marks
            anomalous pixels. Sizes may differ between images.
        maps: anomaly maps, one per mask and of the same shape, higher = more anomalous.

    Returns:
        The AUROC of the pooled pixels, ties counted one half.

    Raises:
        ValueError: on empty input, mismatched counts or shapes (the message names the image
            index and both shapes), non-finite values, or when all pixels are of one class.
    """
    pairs = _paired_images(masks, maps)
    pos = np.concatenate([a[m] for m, a in pairs])
    neg = np.concatenate([a[~m] for m, a in pairs])
    return _auroc_from_scores(pos, neg)


# --------------------------------------------------------------------------------------------
# Connected components (8-connectivity)
# --------------------------------------------------------------------------------------------


def _mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of foreground pixels, in raster order.

    Returns ``(row, start, end)`` with ``end`` inclusive. Pixels of a run are trivially
    connected, so union-find only has to work on runs (about the perimeter of the mask) instead
    of on every pixel.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    # np.nonzero walks row-major, so starts and ends come out in the same (row, column) order
    # and pair up one to one.
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends - 1


def _run_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """8-connected components of a boolean mask, at the level of its horizontal runs.

    Returns ``(component, length, count)``: the 0-based component of every run (numbered in
    raster order of each component's first pixel), every run's length and the number of
    components. Repeating ``component`` by ``length`` gives the component of every foreground
    pixel in ``mask[mask]`` order.
    """
    rows, starts, ends = _mask_runs(mask)
    n = rows.size
    lengths = ends - starts + 1
    if n == 0:
        return np.zeros(0, dtype=np.int64), lengths, 0

    # Run j on the next row touches run i (8-connectivity) iff start_j <= end_i + 1 and
    # end_j >= start_i - 1. Encoding (row, column + 1) as one key with a row stride wider than
    # any column offset keeps all keys sorted, so one searchsorted per bound finds, for every
    # run at once, the contiguous range of touching runs on the next row.
    stride = mask.shape[1] + 2
    key_start = rows * stride + starts + 1
    key_end = rows * stride + ends + 1
    next_row = (rows + 1) * stride
    lo = np.searchsorted(key_end, next_row + starts, side="left")
    hi = np.searchsorted(key_start, next_row + ends + 2, side="right")
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    u = np.repeat(np.arange(n), counts)
    v = np.repeat(lo, counts) + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))

    parent = connected_components(n, u, v)
    roots, component = np.unique(parent, return_inverse=True)
    return component.reshape(-1), lengths, int(roots.size)


def _label_components(mask: Any) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of ``mask > 0``.

    Returns an int32 image (0 = background, 1..count numbered in raster order of each
    component's first pixel, like ``scipy.ndimage.label`` with a 3 x 3 structure) and the count.
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    component, lengths, count = _run_components(m)
    labels = np.zeros(m.shape, dtype=np.int32)
    labels[m] = np.repeat(component + 1, lengths)
    return labels, count


# --------------------------------------------------------------------------------------------
# PRO curve and AUPRO
# --------------------------------------------------------------------------------------------


def _pro_curve(
    pairs: list[tuple[np.ndarray, np.ndarray]], num_thresholds: Optional[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) points in ascending FPR, closed with (1, 1); see :func:`aupro_curve`."""
    if num_thresholds is not None and (
        isinstance(num_thresholds, bool) or int(num_thresholds) != num_thresholds
        or num_thresholds < 2
    ):
        # Fewer than two ranks would not reach FPR 0 and leave the integral undefined.
        raise ValueError(f"num_thresholds must be None or an integer >= 2, got {num_thresholds!r}")

    ok_parts: list[np.ndarray] = []
    anomalous_parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    num_regions = 0
    for m, a in pairs:
        ok_parts.append(a[~m])
        component, lengths, count = _run_components(m)
        if count == 0:
            continue
        # PRO(t) = mean over regions of (#pixels > t) / |region| = sum over anomalous pixels
        # > t of 1 / (|region| * #regions): one weighted suffix sum serves every threshold.
        region_size = np.bincount(component, weights=lengths, minlength=count)
        anomalous_parts.append(a[m])
        weight_parts.append(np.repeat(1.0 / region_size[component], lengths))
        num_regions += count
    ok = np.sort(np.concatenate(ok_parts))
    if num_regions == 0:
        raise ValueError("AUPRO needs at least one anomalous region; every mask is empty")
    if ok.size == 0:
        raise ValueError("AUPRO needs defect-free pixels; every pixel is anomalous")

    anomalous = np.concatenate(anomalous_parts)
    order = np.argsort(anomalous)
    anomalous = anomalous[order]
    weights = np.concatenate(weight_parts)[order] / num_regions
    # suffix[k] = PRO contribution of the anomalous pixels from sorted index k on.
    suffix = np.zeros(anomalous.size + 1)
    suffix[:-1] = np.cumsum(weights[::-1])[::-1]

    n_ok = ok.size
    if num_thresholds is None:
        # Exact: one threshold per distinct defect-free score, at the last index of its tie
        # group, so that (pos + 1) counts every defect-free pixel <= the threshold.
        positions = np.flatnonzero(ok[1:] != ok[:-1])
        positions = np.append(positions, n_ok - 1)
    else:
        # Reference scheme: thresholds at equidistant ranks (truncated to integers) of the
        # sorted defect-free scores. Repeated ranks (fewer pixels than thresholds) only repeat a
        # point, which adds no area, so they are dropped to keep FPR strictly monotone.
        positions = np.unique(
            np.linspace(0, n_ok - 1, num=int(num_thresholds)).astype(np.int64)
        )
    thresholds = ok[positions]
    # FPR written as the reference writes it: 1 - rank / n. For the exact thresholds this is
    # exactly the fraction of defect-free pixels > t; for rank-sampled thresholds inside a tie
    # group the reference uses the rank, not the tie-aware count, and so do we.
    fpr = 1.0 - (positions + 1) / n_ok
    pro = suffix[np.searchsorted(anomalous, thresholds, side="right")]
    # Thresholds ascend, so FPR descends: reverse, then close the curve at (1, 1).
    fpr = np.append(fpr[::-1], 1.0)
    pro = np.append(pro[::-1], 1.0)
    return fpr, pro


def _integrate(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under (fpr, pro) from FPR 0 to ``limit``, divided by ``limit``.

    The curve's value at ``limit`` is linearly interpolated between its neighbours, which is the
    same area as the reference's "correction term" for the last partial trapezoid.
    """
    limit = _check_limit(limit)
    inside = int(np.searchsorted(fpr, limit, side="left"))  # points with fpr < limit
    x = np.append(fpr[:inside], limit)
    y = np.append(pro[:inside], np.interp(limit, fpr, pro))
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
    return area / limit


def _check_limit(limit: float) -> float:
    """Validate an FPR integration limit (a positive fraction)."""
    value = float(limit)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"FPR integration limit must lie in (0, 1], got {limit!r}")
    return value


def aupro_curve(
    masks: Any, maps: Any, num_thresholds: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap (PRO) curve against the false positive rate.

    At a threshold ``t``, FPR is the fraction of defect-free pixels (``mask == 0``, pooled over
    all images) scored ``> t`` and PRO is the mean, over every 8-connected region of every mask,
    of the fraction of the region's pixels scored ``> t``.

    Args:
        masks: list of H x W ground-truth masks (or an N x H x W array); ``mask > 0`` is
            anomalous.
        maps: anomaly maps of the same shapes.
        num_thresholds: ``None`` (default) for the exact curve, with every distinct defect-free
            score as a threshold (O(P log P) by sorting). An integer ``k >= 2`` reproduces the
            reference evaluation code: thresholds at ``k`` equidistant ranks (truncated to
            integers) of the sorted defect-free scores, with FPR taken as ``1 - (rank + 1) / n``.

    Returns:
        ``(fpr, pro)`` arrays with ``fpr`` strictly ascending from 0 to 1; the last point is
        (1, 1), a threshold below every score.

    Raises:
        ValueError: on invalid input (see :func:`pixel_auroc`), when no mask has an anomalous
            pixel, or when no pixel is defect-free.
    """
    return _pro_curve(_paired_images(masks, maps), num_thresholds)


def aupro(
    masks: Any, maps: Any, limit: float = 0.3, num_thresholds: Optional[int] = None
) -> float:
    """Normalised area under the PRO curve up to FPR ``limit`` (AUPRO@limit).

    The curve of :func:`aupro_curve` is integrated with the trapezoid rule, its value at
    ``limit`` linearly interpolated, and the area divided by ``limit`` so 1.0 is perfect.

    Args:
        masks: list of H x W ground-truth masks (or an N x H x W array); ``mask > 0`` is
            anomalous.
        maps: anomaly maps of the same shapes.
        limit: FPR integration limit in (0, 1]; the MVTec 3D-AD standard is 0.3.
        num_thresholds: ``None`` for the exact curve; e.g. ``99`` for the reference's
            rank-sampled approximation (see :func:`aupro_curve`).

    Raises:
        ValueError: on invalid input, an invalid ``limit``, no anomalous region, or no
            defect-free pixel.
    """
    limit = _check_limit(limit)
    fpr, pro = aupro_curve(masks, maps, num_thresholds=num_thresholds)
    return _integrate(fpr, pro, limit)


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def reference_protocol_maps(
    maps: Sequence[np.ndarray], indices: Optional[Sequence[int]] = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The reference evaluation's per-image rescaling: ``(maps for P-AUROC, maps for AUPRO)``,
    ``map / sqrt(mean(map))`` and ``map / mean(map[map != 0])``, in float64. ``indices`` names
    each map in error messages (default: its position).

    Raises:
        ValueError: naming the image when a map has no positive mean (all zero, or negative
            values that cancel): the reference would divide by zero there.
    """
    pixel_maps, pro_maps = [], []
    names = range(len(maps)) if indices is None else indices
    for i, amap in zip(names, maps):
        a = np.asarray(amap, dtype=np.float64)
        mean = float(a.mean()) if a.size else 0.0
        nonzero = a[a != 0]
        nz_mean = float(nonzero.mean()) if nonzero.size else 0.0
        if not (mean > 0 and nz_mean > 0):
            raise ValueError(
                f"maps[{i}] has mean {mean:g} and non-zero mean {nz_mean:g}; the reference protocol "
                "divides each map by them, so it needs maps with a positive mean (anomaly maps are >= 0)"
            )
        pixel_maps.append(a / np.sqrt(mean))
        pro_maps.append(a / nz_mean)
    return pixel_maps, pro_maps


def _limit_key(limit: float) -> str:
    """Dictionary key of an AUPRO limit: ``aupro@0.3``, ``aupro@0.05``..."""
    return f"aupro@{float(limit):g}"


def evaluate(
    labels: Any,
    scores: Any,
    masks: Sequence[Optional[Any]],
    maps: Any,
    limits: Sequence[float] = DEFAULT_LIMITS,
    num_thresholds: Optional[int] = None,
    protocol: Protocol = "exact",
) -> dict[str, float]:
    """All MVTec 3D-AD metrics of one test set.

    Args:
        labels: per-image 0 (good) / 1 (anomalous).
        scores: per-image anomaly scores.
        masks: per-image ground-truth masks, or ``None`` where an image has none. A good image
            (label 0) without a mask is defect-free, as in MVTec 3D-AD where good test images
            ship no mask file: an all-zero mask of its map's shape is used. An anomalous image
            without a mask is left out of the pixel metrics (its defect is unknown). A mask
            given for any image is used as is.
        maps: per-image anomaly maps (H x W), one per image.
        limits: FPR limits for AUPRO; each gives a key ``aupro@{limit:g}``.
        num_thresholds: ``None`` for the exact PRO curve, or the reference's rank count
            (e.g. 99); see :func:`aupro_curve`. Under ``protocol="reference"`` ``None`` means 99.
        protocol: ``"exact"`` scores the maps as given; ``"reference"`` rescales each map as the
            reference evaluation does (see :func:`reference_protocol_maps` and the module
            docstring). Image AUROC uses ``scores`` unchanged under both.

    Returns:
        ``{"image_auroc", "pixel_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05",
        "aupro@0.01"}`` for the default limits, as floats.

    Raises:
        ValueError: on inconsistent lengths, invalid values, or when the images kept for the
            pixel metrics lack either anomalous or defect-free pixels.
    """
    limit_values = [_check_limit(limit) for limit in limits]
    if protocol not in ("exact", "reference"):
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected 'exact' or 'reference'")
    if protocol == "reference" and num_thresholds is None:
        num_thresholds = REFERENCE_NUM_THRESHOLDS
    y = np.asarray(labels)
    mask_list = list(masks)
    map_list = _as_image_list(maps, "maps")
    if not (y.ndim == 1 and y.size == len(mask_list) == len(map_list)):
        raise ValueError(
            f"labels, masks and maps must have one entry per image, got {y.size} labels, "
            f"{len(mask_list)} masks and {len(map_list)} maps"
        )
    result = {"image_auroc": image_auroc(y, scores)}

    kept_masks: list[Any] = []
    kept_maps: list[Any] = []
    kept_indices: list[int] = []
    for i, (label, mask, amap) in enumerate(zip(y, mask_list, map_list)):
        if mask is None:
            if label == 1:
                # An anomalous image without ground truth cannot be scored pixel-wise.
                continue
            mask = np.zeros(np.shape(amap), dtype=bool)
        kept_masks.append(mask)
        kept_maps.append(amap)
        kept_indices.append(i)
    if not kept_masks:
        raise ValueError("no image has a ground-truth mask; pixel metrics are undefined")

    pairs = _paired_images(kept_masks, kept_maps, kept_indices)
    pro_pairs = pairs
    if protocol == "reference":
        pixel_maps, pro_maps = reference_protocol_maps([a for _, a in pairs], kept_indices)
        pro_pairs = [(m, a) for (m, _), a in zip(pairs, pro_maps)]
        pairs = [(m, a) for (m, _), a in zip(pairs, pixel_maps)]
    result["pixel_auroc"] = _auroc_from_scores(
        np.concatenate([a[m] for m, a in pairs]), np.concatenate([a[~m] for m, a in pairs])
    )
    fpr, pro = _pro_curve(pro_pairs, num_thresholds)
    for limit in limit_values:
        result[_limit_key(limit)] = _integrate(fpr, pro, limit)
    return result
