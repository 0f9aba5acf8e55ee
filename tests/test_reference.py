"""preset="reference" against the reference implementation's formulas (docs/method.md).

Each rule is written out here a second time, independently of mafr's code (numpy slicing,
explicit convolutions, loops), on small tensors with hand-checked values and on full-size
(224 x 224) random grids. Channel counts are kept small at full size so the tests stay fast; the
formulas act per channel or sum over channels, so the width changes nothing but the cost.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr.preparation import prepare
import mafr.metrics
from mafr.convert import convert_reference_checkpoints
from mafr.datasets.synthetic import generate_sample
from mafr.extractors.pointops import idw_weights, three_nn_interpolate
from mafr.losses import census, restoration_loss, smoothness, znssd
from mafr.projection import centres_to_grid_operator, pool_to_grid, scatter_to_pixels
from mafr.scoring import box_smooth, residual_map, score_maps

from .conftest import tiny_config
from .test_convert_reference import ref_decoder, ref_encoder, reference_trio, write_trio

FULL = 224


# ---------------------------------------------------------------- independent formulas
def np_znssd(t, r, eps=1e-8):
    """t, r: (N, C) float64 arrays; epsilon inside the square root."""
    def norm(x):
        c = x - x.mean(1, keepdims=True)
        return c / np.sqrt((c ** 2).mean(1, keepdims=True) + eps)

    return float(((norm(t) - norm(r)) ** 2).mean())


def np_smoothness(t, r):
    """t, r: (H, W, C). Residual channels 0 and 1, both axes, summed, on the (H-1) x (W-1) crop."""
    res = r - t
    g = t.mean(-1)
    h, w = g.shape[0] - 1, g.shape[1] - 1
    wx = np.exp(-np.abs(g[:h, 1 : w + 1] - g[:h, :w]))
    wy = np.exp(-np.abs(g[1 : h + 1, :w] - g[:h, :w]))
    total = np.zeros((h, w))
    for c in (0, 1):
        u = res[..., c]
        total += np.abs(u[:h, 1 : w + 1] - u[:h, :w]) * wx + np.abs(u[1 : h + 1, :w] - u[:h, :w]) * wy
    return float(total.mean())


def np_box_sum_mean(x, k):
    """(H, W, C) -> zero-padded k x k window sums / k^2 (the padding counts), via cumulative sums."""
    p = k // 2
    padded = np.pad(x, ((p, p), (p, p), (0, 0)))
    c = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    h, w = x.shape[:2]
    s = c[k : k + h, k : k + w] - c[:h, k : k + w] - c[k : k + h, :w] + c[:h, :w]
    return s / (k * k)


def np_census(t, r, k=7):
    return float(np.abs(np_box_sum_mean(t, k) - np_box_sum_mean(r, k)).mean())


def conv_box_blur(m):
    """(H, W) map: 5 x box 5 then 3 x box 7 as convolutions with zero padding."""
    x = m[None, None]
    for k, n in ((5, 5), (7, 3)):
        for _ in range(n):
            x = F.conv2d(x, torch.ones(1, 1, k, k, dtype=m.dtype) / k ** 2, padding=k // 2)
    return x[0, 0]


def ref_image_score(m):
    return float(m.max() / m[m != 0].mean().sqrt())


# ---------------------------------------------------------------- loss: hand values
def test_znssd_reference_puts_epsilon_inside_the_root():
    # target row: variance 2.5e-9, so sqrt(var + 1e-8) = sqrt(5) * 5e-5 and each normalised
    # entry is +-1/sqrt(5); the restored row normalises to +-1 exactly.
    t = torch.tensor([[[[0.0, 1e-4, 0.0, 1e-4]]]], dtype=torch.float64)
    r = torch.tensor([[[[-1.0, 1.0, -1.0, 1.0]]]], dtype=torch.float64)
    expected = (1 - 1 / math.sqrt(5)) ** 2
    assert znssd(t, r, "reference").item() == pytest.approx(expected, rel=1e-6)
    # mafr's form divides by std + 1e-6: 5e-5 / 5.1e-5 -> nearly 1, so nearly no loss
    assert znssd(t, r).item() == pytest.approx((1 / (1 + 1e-6) - 5e-5 / 5.1e-5) ** 2, rel=1e-6)


def test_smoothness_reference_hand_value():
    # residual channels 0 and 1: a single 1 at (row 0, col 1) of a 3 x 3 grid, input flat (weights 1)
    t = torch.zeros(1, 3, 3, 3)
    r = torch.zeros(1, 3, 3, 3)
    r[0, 0, 1, :2] = 1.0
    r[0, :, :, 2] = torch.randn(3, 3)  # channel 2 is ignored
    # per channel on the 2 x 2 crop: |d/dx| = [[1, 1], [0, 0]], |d/dy| = [[0, 1], [0, 0]] -> 3 / 4
    assert smoothness(t, r, form="reference").item() == pytest.approx(2 * 3 / 4)
    # mafr's two-channel form averages channels and uses the full difference grids: 2/6 + 1/6
    assert smoothness(t, r, first_two_channels=True).item() == pytest.approx(0.5)


def test_census_reference_counts_the_padding():
    # 7 x 7 windows cover the whole 3 x 3 grid from every position: the pooled value is the grid's
    # sum / 49 when padding counts, the grid's mean when it does not.
    t = torch.zeros(1, 3, 3, 1)
    r = torch.ones(1, 3, 3, 1)
    assert census(t, r, form="reference").item() == pytest.approx(9 / 49)
    assert census(t, r).item() == pytest.approx(1.0)


def test_reference_loss_needs_two_residual_channels():
    x = torch.zeros(1, 4, 4, 1)
    with pytest.raises(ValueError, match="at least 2 residual channels"):
        smoothness(x, x, form="reference")
    with pytest.raises(ValueError, match="unknown loss form"):
        restoration_loss(x, x, form="exact")


# ---------------------------------------------------------------- loss: full size
def test_reference_loss_value_and_gradient_at_full_size():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(1, FULL, FULL, 16, generator=gen, dtype=torch.float64)
    r0 = t + 0.3 * torch.randn(1, FULL, FULL, 16, generator=gen, dtype=torch.float64)
    tn, rn = t[0].numpy(), r0[0].numpy()
    expected = np_znssd(tn.reshape(-1, 16), rn.reshape(-1, 16)) + np_smoothness(tn, rn) + np_census(tn, rn)
    r = r0.clone().requires_grad_(True)
    loss = restoration_loss(t, r, form="reference")
    assert loss.item() == pytest.approx(expected, rel=1e-9)

    # gradient against central differences of the numpy formulas on a few coordinates
    loss.backward()
    def np_total(arr):
        return np_znssd(tn.reshape(-1, 16), arr.reshape(-1, 16)) + np_smoothness(tn, arr) + np_census(tn, arr)

    for (i, j, c) in [(0, 0, 0), (5, 200, 1), (223, 223, 3), (100, 7, 15)]:
        h = 1e-6
        up, down = rn.copy(), rn.copy()
        up[i, j, c] += h
        down[i, j, c] -= h
        numeric = (np_total(up) - np_total(down)) / (2 * h)
        assert r.grad[0, i, j, c].item() == pytest.approx(numeric, rel=1e-4, abs=1e-10)


def test_mafr_form_differs_from_the_reference_as_documented():
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(1, FULL, FULL, 8, generator=gen, dtype=torch.float64)
    r = t + 0.3 * torch.randn(1, FULL, FULL, 8, generator=gen, dtype=torch.float64)
    ref = smoothness(t, r, form="reference").item()
    mine = smoothness(t, r, first_two_channels=True).item()
    # channels summed instead of averaged: the reference is twice mafr's value (up to the crop)
    assert ref / mine == pytest.approx(2.0, rel=0.01)


# ---------------------------------------------------------------- interpolation
def test_inverse_squared_distance_weights_hand_value():
    query = torch.zeros(1, 1, 3, dtype=torch.float64)
    centres = torch.tensor([[[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [9.0, 9, 9]]], dtype=torch.float64)
    feats = torch.tensor([[[1.0], [2.0], [4.0], [100.0]]], dtype=torch.float64)
    # weights 1, 1/4, 1/16 -> (16 + 8 + 4) / 21; inverse distance: 1, 1/2, 1/4 -> 12 / 7
    assert three_nn_interpolate(query, centres, feats, power=2).item() == pytest.approx(28 / 21)
    assert three_nn_interpolate(query, centres, feats).item() == pytest.approx(12 / 7)
    with pytest.raises(ValueError, match="power must be 1"):
        idw_weights(query, centres, power=3)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1, 2]))
def test_idw_weights_are_normalised_and_follow_the_power(seed, power):
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(1, 20, 3, generator=gen, dtype=torch.float64)
    c = torch.rand(1, 6, 3, generator=gen, dtype=torch.float64)
    w, idx = idw_weights(q, c, power=power)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 20, dtype=torch.float64))
    d = (q[0, :, None] - c[0][idx[0]]).norm(dim=-1)
    raw = 1 / (d ** power + 1e-8)
    torch.testing.assert_close(w[0], raw / raw.sum(-1, keepdim=True))


def test_sparse_alignment_operator_matches_the_dense_path_with_squared_weights():
    gen = torch.Generator().manual_seed(2)
    size, grid, n, g, ch = 32, 8, 300, 12, 5
    pixel_index = torch.randperm(size * size, generator=gen)[:n]
    points = torch.rand(1, n, 3, generator=gen, dtype=torch.float64)
    centres = points[:, :g]
    feats = torch.randn(1, g, ch, generator=gen, dtype=torch.float64)
    dense = pool_to_grid(scatter_to_pixels(three_nn_interpolate(points, centres, feats, power=2)[0], pixel_index, size), grid)
    w, idx = idw_weights(points, centres, power=2)
    op = centres_to_grid_operator(pixel_index, size, grid, idx[0], w[0], g)
    torch.testing.assert_close((op @ feats[0]).T.reshape(ch, grid, grid), dense)


# ---------------------------------------------------------------- maps and scores
def test_zero_padded_box_filter_hand_value():
    m = torch.zeros(1, 8, 8, dtype=torch.float64)
    m[0, 0, 0] = 1.0
    once = box_smooth(m, 1, 0, count_padding=True)
    assert once[0, 0, 0].item() == pytest.approx(1 / 25)  # 25 taps, 16 of them padding
    assert box_smooth(m, 1, 0)[0, 0, 0].item() == pytest.approx(1 / 9)  # only the 9 inside count


def test_reference_maps_and_scores_at_full_size():
    gen = torch.Generator().manual_seed(3)
    res2d = torch.rand(2, FULL, FULL, generator=gen, dtype=torch.float64)
    res3d = torch.rand(2, FULL, FULL, generator=gen, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(FULL), torch.arange(FULL), indexing="ij")
    valid = ((yy - 112) ** 2 + (xx - 100) ** 2 < 80 ** 2).expand(2, FULL, FULL)
    # the reference zeroes the positions whose 3D feature is all zero (the feature-grid mask)
    has_feature = F.max_pool2d(valid.double()[:, None], 3, stride=1, padding=1)[:, 0] > 0
    fused, _, _, scores = score_maps(res2d, res3d, valid, reference=True, valid_grid=has_feature)
    _, _, _, mafr_scores = score_maps(res2d, res3d, valid)
    for b in range(2):
        dilated = has_feature[b]
        expected = conv_box_blur(res2d[b] * res3d[b] * dilated)
        torch.testing.assert_close(fused[b], expected, rtol=1e-9, atol=1e-12)
        assert scores[b].item() == pytest.approx(ref_image_score(expected), rel=1e-9)
        assert (expected[~dilated] != 0).any()  # the halo the reference keeps
        assert scores[b].item() != pytest.approx(mafr_scores[b].item(), rel=1e-3)


def test_reference_scores_in_float32_match_float64_formulas():
    gen = torch.Generator().manual_seed(4)
    r2, r3 = torch.rand(1, FULL, FULL, generator=gen), torch.rand(1, FULL, FULL, generator=gen)
    valid = torch.zeros(1, FULL, FULL, dtype=torch.bool)
    valid[:, 40:180, 30:200] = True
    _, _, _, scores = score_maps(r2, r3, valid, reference=True, valid_grid=valid)
    expected = ref_image_score(conv_box_blur(r2[0].double() * r3[0].double() * valid[0]))
    assert scores[0].item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="needs valid_grid"):
        score_maps(r2, r3, valid, reference=True)


# ---------------------------------------------------------------- the detector, end to end
def _reference_detector_config():
    # full reference pipeline at the tiny extractors' 64 x 64 input: grid == input size
    return tiny_config(preset="reference", grid_size=64, train={"epochs": 1, "batch_size": 1})


def test_reference_preset_aligns_points_with_inverse_squared_distance():
    det = mafr.MAFRDetector(_reference_detector_config(), device="cpu")  # compared with CPU formulas
    part = generate_sample("dome", seed=1, size=64)
    prep = prepare((part.rgb, part.xyz), det.config, det.device)
    got = det.extractors.point_grid([prep])[0]
    idx_pix = prep.valid.flatten().nonzero().squeeze(1)
    pts = prep.xyz.reshape(-1, 3)[idx_pix]
    with torch.inference_mode():
        feats, centres = det.point_extractor(pts.unsqueeze(0))
    d2 = ((pts[:, None, :].double() - centres[0][None].double()) ** 2).sum(-1)
    near_d2, near = d2.topk(3, largest=False)
    w = 1 / (near_d2 + 1e-8)
    w = w / w.sum(1, keepdim=True)
    per_point = (feats[0].double()[near] * w[..., None]).sum(1)
    full = torch.zeros(64 * 64, per_point.shape[1], dtype=torch.float64)
    full[idx_pix] = per_point
    image = full.T.reshape(1, -1, 64, 64)
    expected = F.adaptive_avg_pool2d(F.avg_pool2d(image, 3, stride=1), 64)[0]
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_converted_reference_checkpoint_scores_as_the_formulas(tmp_path):
    write_trio(tmp_path / "ckpt", reference_trio())
    out = convert_reference_checkpoints(tmp_path / "ckpt", tmp_path / "det", "cable", config=_reference_detector_config())
    det = mafr.MAFRDetector.from_pretrained(out, device="cpu")  # compared with CPU formulas
    trio = reference_trio()
    parts = [generate_sample("puck", seed=3, size=64), generate_sample("dome", "hole", seed=4, size=64)]
    for part in parts:
        (feat,) = det.extract_features([(part.rgb, part.xyz)])
        with torch.no_grad():
            z = ref_encoder(trio["fusion_encoder"], torch.cat([feat.rgb, feat.xyz], -1))
            r2 = (ref_decoder(trio["decoder_2D"], z) - feat.rgb).pow(2).sum(-1).sqrt()
            r3 = (ref_decoder(trio["decoder_3D"], z) - feat.xyz).pow(2).sum(-1).sqrt()
        comb = r2 * r3
        # The reference writes the mask as "channel sum == 0", meaning "no 3D feature"; with the
        # random LayerNorm of these tiny extractors a real feature's channels can cancel to exactly
        # 0, so the intended all-zero test is written here (docs/method.md, "Scoring").
        comb[(feat.xyz == 0).all(-1)] = 0.0
        expected = ref_image_score(conv_box_blur(comb))
        assert det.score_features([feat])[0] == pytest.approx(expected, rel=1e-4)
        assert det.predict(part.rgb, part.xyz).score == pytest.approx(expected, rel=1e-4)


def test_reference_preset_trains_on_raw_features_with_the_reference_loss():
    cfg = _reference_detector_config()
    parts = [generate_sample("dome", seed=s, size=64) for s in range(2)]
    det = mafr.MAFRDetector(cfg)
    feats = det.extract_features([(p.rgb, p.xyz) for p in parts])
    det._fit_features(feats, seed=0)
    rgb, xyz = det._normalise(feats[0])
    assert torch.equal(rgb, feats[0].rgb) and torch.equal(xyz, feats[0].xyz)
    # every part trains (no calibration hold-out), one step per part per epoch at batch 1
    assert det.fit_info_["n_train"] == 2 and det.fit_info_["steps"] == 2
    assert det.fit_info_["calibration_on_training_parts"] is True


# ---------------------------------------------------------------- evaluation protocol
def test_reference_protocol_rescales_each_map_hand_value():
    # good image: all 4 (mean 4 -> / 2 = 2); anomalous image [1, 1, 3, 3] with defect on the 3s
    # (mean 2 -> / sqrt 2: the defect becomes 2.12 and outranks the good image's 2).
    labels, scores = [0, 1], [0.0, 1.0]
    maps = [np.full((1, 4), 4.0), np.array([[1.0, 1.0, 3.0, 3.0]])]
    masks = [None, np.array([[0, 0, 1, 1]])]
    exact = mafr.metrics.evaluate(labels, scores, masks, maps)
    ref = mafr.metrics.evaluate(labels, scores, masks, maps, protocol="reference")
    assert exact["pixel_auroc"] == pytest.approx(2 / 6)  # 3 beats only the two 1s
    assert ref["pixel_auroc"] == pytest.approx(1.0)
    assert ref["image_auroc"] == exact["image_auroc"] == 1.0


def test_reference_protocol_equals_rescaled_maps_with_99_ranks():
    rng = np.random.default_rng(5)
    maps = [rng.random((24, 24)) * rng.uniform(0.5, 4) for _ in range(6)]
    masks = [None, None] + [rng.random((24, 24)) > 0.93 for _ in range(4)]
    for m in maps[:3]:
        m[:4] = 0.0  # zeros (no 3D data) change the non-zero mean, not the mean's count
    labels, scores = [0, 0, 1, 1, 1, 1], rng.random(6)
    got = mafr.metrics.evaluate(labels, scores, masks, maps, protocol="reference")
    full = [np.zeros((24, 24), bool) if m is None else m for m in masks]
    pix = [m / np.sqrt(m.mean()) for m in maps]
    pro = [m / m[m != 0].mean() for m in maps]
    assert got["pixel_auroc"] == pytest.approx(mafr.metrics.pixel_auroc(full, pix))
    for limit in (0.3, 0.01):
        assert got[f"aupro@{limit:g}"] == pytest.approx(mafr.metrics.aupro(full, pro, limit, num_thresholds=99))


def test_reference_protocol_rejects_all_zero_maps_and_unknown_protocols():
    maps = [np.ones((2, 2)), np.zeros((2, 2))]
    masks = [None, np.array([[0, 1], [0, 0]])]
    with pytest.raises(ValueError, match=r"maps\[1\] has mean 0"):
        mafr.metrics.evaluate([0, 1], [0, 1], masks, maps, protocol="reference")
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        mafr.metrics.evaluate([0, 1], [0, 1], masks, [np.ones((2, 2))] * 2, protocol="paper")
