"""Tests of mafr.metrics: hand-worked values and slow, obviously-correct reimplementations."""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np
import pytest

from mafr.metrics import (
    _label_components,
    aupro,
    aupro_curve,
    evaluate,
    image_auroc,
    pixel_auroc,
)

LIMITS = (0.3, 0.1, 0.05, 0.01)


# --------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------


def bfs_label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labelling by breadth-first search, numbering in raster order."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int64)
    count = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x]:
                continue
            count += 1
            labels[y, x] = count
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                            labels[ny, nx] = count
                            queue.append((ny, nx))
    return labels, count


def pair_count_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC as the fraction of (positive, negative) pairs ranked right, ties counting 1/2."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def regions_and_ok(masks: list, maps: list) -> tuple[list[np.ndarray], np.ndarray]:
    """Scores of every ground-truth region (BFS labelling) and of all defect-free pixels."""
    regions = []
    ok = []
    for m, a in zip(masks, maps):
        labels, count = bfs_label(np.asarray(m) > 0)
        regions += [a[labels == k] for k in range(1, count + 1)]
        ok.append(a[labels == 0])
    return regions, np.concatenate(ok)


def trapezoid_to(x: list[float], y: list[float], limit: float) -> float:
    """Area under a curve sorted by x, up to ``limit`` (y interpolated there), over ``limit``."""
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def brute_aupro(masks: list, maps: list, limit: float) -> float:
    """Exact AUPRO: every distinct defect-free score as a threshold, counted directly."""
    regions, ok = regions_and_ok(masks, maps)
    points = [(1.0, 1.0)]  # threshold below every score
    for t in np.unique(ok):
        fpr = float(np.mean(ok > t))
        pro = float(np.mean([np.mean(r > t) for r in regions]))
        points.append((fpr, pro))
    points.sort()
    return trapezoid_to([p[0] for p in points], [p[1] for p in points], limit)


def brute_rank_aupro(masks: list, maps: list, limit: float, num_thresholds: int) -> float:
    """The reference evaluation code's scheme, written out directly.

    Thresholds at equidistant (truncated) ranks of the sorted defect-free scores, FPR taken
    from the rank, PRO counted per region, (1, 1) added, trapezoid with a partial last piece.
    """
    regions, ok = regions_and_ok(masks, maps)
    ok = np.sort(ok)
    n = ok.size
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, n - 1, num=num_thresholds, dtype=int):
        t = ok[pos]
        fprs.append(1.0 - (pos + 1) / n)
        pros.append(float(np.mean([1.0 - np.sum(r <= t) / r.size for r in regions])))
    fprs, pros = fprs[::-1], pros[::-1]
    correction = 0.0
    if limit not in fprs:
        ins = bisect.bisect(fprs, limit)
        y_lim = pros[ins - 1] + (pros[ins] - pros[ins - 1]) * (limit - fprs[ins - 1]) / (
            fprs[ins] - fprs[ins - 1]
        )
        correction = 0.5 * (y_lim + pros[ins - 1]) * (limit - fprs[ins - 1])
    area = sum(
        0.5 * (pros[i] + pros[i - 1]) * (fprs[i] - fprs[i - 1])
        for i in range(1, len(fprs))
        if fprs[i] <= limit
    )
    return (area + correction) / limit


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, max_blobs: int = 4) -> list:
    """Masks holding 0..max_blobs random discs and rectangles (some overlap or touch)."""
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for _ in range(n):
        m = np.zeros((h, w), dtype=bool)
        for _ in range(rng.integers(0, max_blobs + 1)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            r = rng.integers(1, max(2, min(h, w) // 4))
            if rng.random() < 0.5:
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                m[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + 1] = True
        masks.append(m.astype(np.uint8))
    return masks


# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------


def test_image_auroc_ties_hand_worked():
    # Pairs (pos, neg): (0.5, 0.1) 1, (0.5, 0.5) 1/2, (0.9, 0.1) 1, (0.9, 0.5) 1 -> 3.5 / 4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875


def test_image_auroc_perfect_inverted_constant():
    assert image_auroc([0, 1, 0, 1], [0.1, 0.8, 0.2, 0.9]) == 1.0
    assert image_auroc(np.array([0, 1, 0, 1]), np.array([0.9, 0.2, 0.8, 0.1])) == 0.0
    assert image_auroc([True, False, True], [3, 3, 3]) == 0.5


def test_image_auroc_matches_pair_count_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    expected = pair_count_auroc(scores[labels == 1], scores[labels == 0])
    assert image_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "labels, scores, message",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "one class"),
        ([0, 1], [0.1, 0.2, 0.3], "2 labels but 3 scores"),
        ([0, 1], [0.1, np.nan], "NaN or inf"),
        ([0, 1], [0.1, np.inf], "NaN or inf"),
        ([0, 2], [0.1, 0.2], "0 \\(good\\) or 1"),
        ([], [], "empty"),
    ],
)
def test_image_auroc_rejects_bad_input(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        image_auroc(labels, scores)


def test_pixel_auroc_matches_pair_count_over_images_of_different_sizes():
    rng = np.random.default_rng(1)
    shapes = [(7, 9), (5, 5), (11, 4)]
    masks = [rng.random(s) < 0.3 for s in shapes]
    maps = [np.round(rng.random(s) + 0.3 * m, 1) for s, m in zip(shapes, masks)]
    pos = np.concatenate([a[m] for m, a in zip(masks, maps)])
    neg = np.concatenate([a[~m] for m, a in zip(masks, maps)])
    assert pixel_auroc(masks, maps) == pytest.approx(pair_count_auroc(pos, neg), abs=1e-12)


def test_pixel_auroc_perfect_inverted_and_3d_array():
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 1:3, 1:3] = 255  # any value > 0 is anomalous
    maps = masks.astype(np.float64) / 255.0
    assert pixel_auroc(masks, maps) == 1.0
    assert pixel_auroc(masks, 1.0 - maps) == 0.0


def test_pixel_inputs_are_validated():
    good = [np.zeros((3, 3)), np.ones((3, 3))]
    message = r"masks\[1\] has shape \(3, 3\) but maps\[1\] has shape \(3, 4\)"
    with pytest.raises(ValueError, match=message):
        pixel_auroc(good, [np.zeros((3, 3)), np.zeros((3, 4))])
    with pytest.raises(ValueError, match=r"maps\[0\] contains NaN"):
        pixel_auroc(good, [np.full((3, 3), np.nan), np.zeros((3, 3))])
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        pixel_auroc(good, [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="empty"):
        pixel_auroc([], [])
    with pytest.raises(ValueError, match="both classes"):
        pixel_auroc([np.zeros((3, 3))], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="N x H x W"):
        pixel_auroc(np.zeros((3, 3)), np.zeros((3, 3)))


# --------------------------------------------------------------------------------------------
# Connected components
# --------------------------------------------------------------------------------------------


def test_diagonal_touch_is_one_region():
    mask = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0],  # touches the first blob only at a corner
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1],  # separated by a gap: its own region
        ]
    )
    labels, count = _label_components(mask)
    assert count == 2
    assert np.array_equal(
        labels,
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 2]],
    )
    # Anti-diagonal contact joins too (a run that starts one column right of the run above ends).
    assert _label_components(np.array([[0, 1], [1, 0]]))[1] == 1


def test_labelling_matches_bfs_on_random_masks():
    rng = np.random.default_rng(2)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((37, 53)) < density
        labels, count = _label_components(mask)
        expected, expected_count = bfs_label(mask)
        assert count == expected_count
        assert np.array_equal(labels, expected)


def test_labelling_worst_cases():
    # A checkerboard is one region under 8-connectivity (but h * w / 2 under 4-connectivity).
    checker = np.indices((200, 200)).sum(axis=0) % 2 == 0
    assert _label_components(checker)[1] == 1
    # A boustrophedon snake: one region whose union-find chain crosses every row.
    snake = np.zeros((199, 60), dtype=bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    labels, count = _label_components(snake)
    assert count == 1 and labels[snake].min() == 1
    # Horizontal bars two rows apart never touch.
    assert _label_components(np.tile([[1], [0]], (50, 30)))[1] == 50
    assert _label_components(np.zeros((4, 4)))[1] == 0


# --------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------


def test_aupro_hand_worked():
    # One region {0.9, 0.3}; defect-free scores 0.5, 0.1, 0.2, 0.4 (4 pixels).
    # Threshold t (count > t):  t=0.5: FPR 0,   PRO 1/2   (only 0.9 > 0.5)
    #                           t=0.4: FPR 1/4, PRO 1/2
    #                           t=0.2: FPR 2/4, PRO 1     (0.3 > 0.2)
    #                           t=0.1: FPR 3/4, PRO 1;    below everything: (1, 1).
    # Area to 0.3: 0.25 * 0.5 + 0.05 * (0.5 + 0.6) / 2 = 0.1525, PRO(0.3) interpolated = 0.6;
    # AUPRO@0.3 = 0.1525 / 0.3 = 61 / 120. Area to 1: 0.125 + 0.1875 + 0.25 + 0.25 = 0.8125.
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    amap = np.array([[0.9, 0.3, 0.5], [0.1, 0.2, 0.4]])
    fpr, pro = aupro_curve([mask], [amap])
    assert np.allclose(fpr, [0, 0.25, 0.5, 0.75, 1])
    assert np.allclose(pro, [0.5, 0.5, 1, 1, 1])
    assert aupro([mask], [amap]) == pytest.approx(61 / 120, abs=1e-12)
    assert aupro([mask], [amap], limit=1.0) == pytest.approx(0.8125, abs=1e-12)
    assert aupro([mask], [amap], limit=0.25) == pytest.approx(0.5, abs=1e-12)
    # Two ranks (0 and 3): points (0, 1/2), (3/4, 1), (1, 1); PRO(0.3) = 0.5 + 0.3 / 0.75 * 0.5
    # = 0.7, area 0.3 * (0.5 + 0.7) / 2 = 0.18 -> 0.6.
    assert aupro([mask], [amap], num_thresholds=2) == pytest.approx(0.6, abs=1e-12)


def test_aupro_ties_between_region_and_background():
    # A tie at the threshold is not "above" it: at t = 0.5 neither the 0.5 region pixel nor the
    # 0.5 background pixel counts. Points: t=0.5 (0, 1/2), t=0.2 (1/3, 1), (1, 1).
    # Area to 0.3: PRO(0.3) = 0.5 + 0.3 / (1/3) * 0.5 = 0.95, 0.3 * (0.5 + 0.95) / 2 = 0.2175.
    mask = np.array([[1, 1, 0, 0, 0]])
    amap = np.array([[0.9, 0.5, 0.5, 0.2, 0.2]])
    fpr, pro = aupro_curve([mask], [amap])
    assert np.allclose(fpr, [0, 1 / 3, 1]) and np.allclose(pro, [0.5, 1, 1])
    assert aupro([mask], [amap]) == pytest.approx(0.2175 / 0.3, abs=1e-12)


def test_aupro_perfect_and_inverted_maps():
    mask = np.zeros((6, 6))
    mask[2:4, 1:5] = 1
    background = np.linspace(0.5, 1.0, 36).reshape(6, 6)  # 28 distinct defect-free scores
    for limit in LIMITS:
        assert aupro([mask], [background + 2 * mask], limit=limit) == pytest.approx(1.0, abs=1e-12)
        # Every region pixel below every defect-free pixel: PRO is 0 from FPR 0 up to the lowest
        # threshold's FPR 27/28, then rises to (1, 1); nothing of that lies below FPR 0.3.
        assert aupro([mask], [background * (1 - mask)], limit=limit) == 0.0
    # With one constant background score the only points are (0, 0) and (1, 1): a diagonal.
    assert aupro([mask], [1.0 - mask], limit=0.3) == pytest.approx(0.15, abs=1e-12)


def test_aupro_regions_are_averaged_not_pooled():
    # A big region found entirely and a small one missed: PRO 1/2 (pooling would give 16/17).
    # With distinct background scores below the big region: AUPRO@0.3 = 0.5 up to the interp.
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0:4, 0:4] = 1  # 16 pixels
    mask[7, 7] = 1  # 1 pixel, far away
    amap = np.linspace(0.0, 0.5, 64).reshape(8, 8)
    amap[0:4, 0:4] = 1.0
    amap[7, 7] = -1.0
    fpr, pro = aupro_curve([mask], [amap])
    assert pro[0] == pytest.approx(0.5) and fpr[0] == 0.0
    assert np.allclose(pro[:-1], 0.5)  # the missed pixel scores below everything
    assert aupro([mask], [amap], limit=0.3) == pytest.approx(0.5, abs=1e-12)


def test_aupro_counts_diagonal_blobs_as_one_region():
    # Blob A (4 px, found) touches blob B (1 px, missed) only at a corner. As one region the
    # PRO is 4/5 at FPR 0; as two regions it would be (1 + 0) / 2.
    mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    amap = np.array([[9, 9, 0, 1], [9, 9, 2, 3], [4, 5, -1, 6], [7, 8, 0.5, 1.5]], dtype=float)
    fpr, pro = aupro_curve([mask], [amap])
    assert fpr[0] == 0.0 and pro[0] == pytest.approx(0.8)
    assert aupro([mask], [amap], limit=0.01) == pytest.approx(0.8, abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_exact_aupro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 4, 18, 23)
    masks[0][3:6, 3:6] = 1  # guarantee regions, two of them touching only diagonally
    masks[0][6:8, 6:9] = 1
    masks.append(np.zeros((9, 14), dtype=np.uint8))  # a good image of another size
    maps = []
    for m in masks:
        a = rng.random(m.shape) + 0.6 * m
        # Coarse rounding creates ties within regions, within the background and across both.
        maps.append(np.round(a, 1) if seed == 3 else a)
    fpr, pro = aupro_curve(masks, maps)
    assert fpr[0] == 0.0 and fpr[-1] == 1.0 and np.all(np.diff(fpr) > 0)
    for limit in LIMITS:
        assert aupro(masks, maps, limit=limit) == pytest.approx(
            brute_aupro(masks, maps, limit), abs=1e-9
        )


def test_rank_scheme_matches_direct_reference_implementation():
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 5, 24, 24, max_blobs=3)
    masks[1][10:14, 10:14] = 1
    maps = [np.round(rng.random(m.shape) + 0.5 * m, 2) for m in masks]  # with ties
    for num_thresholds in (99, 100, 7):
        for limit in LIMITS:
            assert aupro(masks, maps, limit=limit, num_thresholds=num_thresholds) == pytest.approx(
                brute_rank_aupro(masks, maps, limit, num_thresholds), abs=1e-12
            )
    # Fewer defect-free pixels than thresholds: repeated ranks change nothing.
    tiny_mask = [np.array([[1, 0, 0], [0, 0, 1]])]
    tiny_map = [np.array([[0.7, 0.1, 0.8], [0.3, 0.2, 0.4]])]
    assert aupro(tiny_mask, tiny_map, num_thresholds=99) == pytest.approx(
        brute_rank_aupro(tiny_mask, tiny_map, 0.3, 99), abs=1e-12
    )


def test_rank_scheme_close_to_exact_and_equal_at_every_rank():
    rng = np.random.default_rng(6)
    masks = blob_masks(rng, 12, 96, 96)
    masks[0][40:60, 40:60] = 1
    maps = []
    for m in masks:
        # A smooth-ish map: box-blurred noise plus a signal on the defects.
        noise = rng.random((m.shape[0] + 4, m.shape[1] + 4))
        h, w = m.shape
        blurred = sum(noise[i : i + h, j : j + w] for i in range(5) for j in range(5))
        maps.append(blurred / 25.0 + 0.15 * m)
    for limit in (0.3, 0.1):
        exact = aupro(masks, maps, limit=limit)
        assert 0.05 < exact < 0.95  # a non-trivial case
        assert aupro(masks, maps, limit=limit, num_thresholds=99) == pytest.approx(exact, abs=0.02)
    # Without ties, sampling every rank is the exact curve.
    n_ok = sum(int((np.asarray(m) == 0).sum()) for m in masks)
    fpr_exact, pro_exact = aupro_curve(masks, maps)
    fpr_all, pro_all = aupro_curve(masks, maps, num_thresholds=n_ok)
    assert np.array_equal(fpr_exact, fpr_all) and np.allclose(pro_exact, pro_all, atol=1e-12)


def test_aupro_rejects_degenerate_input():
    with pytest.raises(ValueError, match="anomalous region"):
        aupro([np.zeros((4, 4))], [np.random.default_rng(0).random((4, 4))])
    with pytest.raises(ValueError, match="defect-free"):
        aupro([np.ones((4, 4))], [np.zeros((4, 4))])
    mask, amap = [np.eye(3)], [np.eye(3)]
    for limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="limit"):
            aupro(mask, amap, limit=limit)
    for num_thresholds in (1, 0, 2.5):
        with pytest.raises(ValueError, match="num_thresholds"):
            aupro(mask, amap, num_thresholds=num_thresholds)
    message = r"masks\[0\] has shape \(3, 3\) but maps\[0\] has shape \(3, 2\)"
    with pytest.raises(ValueError, match=message):
        aupro(mask, [np.zeros((3, 2))])


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_combines_metrics_and_handles_missing_masks():
    rng = np.random.default_rng(7)
    maps = [rng.random((10, 12)) for _ in range(5)]
    defect = np.zeros((10, 12), dtype=np.uint8)
    defect[2:5, 3:7] = 1
    maps[1] = maps[1] + 0.5 * defect  # overlapping classes: pixel AUROC strictly below 1
    maps[2] = maps[2] + 0.5 * defect[::-1]
    labels = [0, 1, 1, 0, 1]
    scores = [0.1, 0.9, 0.8, 0.3, 0.2]
    # Image 0: good, no mask -> all-zero mask; image 3: good with a mask; image 4: anomalous
    # without ground truth -> left out of the pixel metrics.
    masks = [None, defect, defect[::-1], np.zeros((10, 12)), None]
    result = evaluate(labels, scores, masks, maps)
    assert list(result) == [
        "image_auroc", "pixel_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05", "aupro@0.01",
    ]
    assert all(isinstance(v, float) for v in result.values())
    # Pairs: 0.9 and 0.8 beat both goods (4 pairs), 0.2 beats 0.1 only -> 5 / 6.
    assert result["image_auroc"] == pytest.approx(5 / 6)
    kept_masks = [np.zeros((10, 12)), defect, defect[::-1], np.zeros((10, 12))]
    kept_maps = maps[:4]
    assert result["pixel_auroc"] == pixel_auroc(kept_masks, kept_maps)
    for limit in LIMITS:
        expected = aupro(kept_masks, kept_maps, limit)
        assert result[f"aupro@{limit:g}"] == pytest.approx(expected, abs=1e-12)
    # Leaving the uninformative image 4 in (as defect-free) would change the pixel metrics.
    assert pixel_auroc(kept_masks + [np.zeros((10, 12))], maps) != result["pixel_auroc"]

    rank = evaluate(labels, scores, masks, maps, limits=(0.2,), num_thresholds=99)
    assert set(rank) == {"image_auroc", "pixel_auroc", "aupro@0.2"}
    assert rank["aupro@0.2"] == pytest.approx(aupro(kept_masks, kept_maps, 0.2, num_thresholds=99))


def test_evaluate_validation_names_the_original_index():
    maps = [np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5))]
    masks = [None, np.eye(4), np.zeros((4, 4))]
    message = r"masks\[2\] has shape \(4, 4\) but maps\[2\] has shape \(4, 5\)"
    with pytest.raises(ValueError, match=message):
        evaluate([1, 1, 0], [0.2, 0.3, 0.1], masks, maps)
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate([0, 1], [0.2, 0.3], masks, maps)
