"""Calibrated fusion, edge calibration, the threshold rules, defect masks and the surface-
deviation descriptor (issue: colour-only and shallow 3D defects)."""

import copy
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mafr
from mafr.datasets import generate_sample
from mafr.extractors.offline import OrganizedGeometryExtractor, SurfaceDeviationExtractor
from mafr.scoring import (
    MIN_BIN_CELLS,
    binned_edge_scales,
    channel_normalised,
    edge_distance,
    edge_scales,
    fuse,
    modality_scales,
    restored_bins,
)
from mafr.viz import OUTLINE_COLOUR, mask_outline, overlay


def test_calibrated_fusion_keeps_a_deviation_seen_by_one_modality():
    m2 = torch.tensor([[4.0, 1.0, 0.0]])  # a stain: strong in 2D only
    m3 = torch.tensor([[0.0, 1.0, 4.0]])  # a dent: strong in 3D only
    scales = torch.tensor([2.0, 2.0])
    # Each in units of "normal", the larger kept: one modality's noise is not added to the other.
    torch.testing.assert_close(fuse(m2, m3, "calibrated", scales), torch.tensor([[2.0, 0.5, 2.0]]))
    assert fuse(m2, m3, "product")[0, 0] == 0  # what the paper's rule does to the stain
    with pytest.raises(ValueError, match="scales"):
        fuse(m2, m3, "calibrated")
    # Detectors saved with one level per distance keep the rule they were calibrated for: the sum.
    torch.testing.assert_close(fuse(m2, m3, "calibrated_sum", scales), torch.tensor([[2.0, 1.0, 2.0]]))


def test_edge_distance_counts_cells_to_the_outline():
    valid = torch.zeros(1, 9, 9, dtype=torch.bool)
    valid[0, 1:8, 1:8] = True
    d = edge_distance(valid, cap=3)
    assert d[0, 0, 0] == 0 and d[0, 1, 1] == 0  # outside, and on the outline
    assert d[0, 2, 2] == 1 and d[0, 3, 4] == 2 and d[0, 4, 4] == 3


def test_edge_scales_are_quantiles_per_distance():
    valid = torch.zeros(1, 9, 9, dtype=torch.bool)
    valid[0, 1:8, 1:8] = True
    dist = edge_distance(valid, cap=3)
    residual = dist.float() + 1.0  # 1 on the outline ... 4 in the centre
    torch.testing.assert_close(edge_scales(residual, valid, cap=3, quantile=0.5), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    thin = torch.zeros(1, 9, 9, dtype=torch.bool)
    thin[0, 4, 1:8] = True  # a one-cell-wide part has no deeper cells: deeper levels reuse the last
    torch.testing.assert_close(edge_scales(torch.ones(1, 9, 9), thin, cap=2), torch.ones(3))
    with pytest.raises(ValueError, match="no position with 3D"):
        edge_scales(torch.ones(1, 9, 9), torch.zeros(1, 9, 9, dtype=torch.bool))


def test_edge_scales_per_channel_and_channel_normalised_residual():
    valid = torch.zeros(1, 9, 9, dtype=torch.bool)
    valid[0, 1:8, 1:8] = True
    dist = edge_distance(valid, cap=3).float()
    # Channel 0 is loud everywhere (noise on every part), channel 1 quiet: signed errors.
    errors = torch.stack([-10.0 * (dist + 1.0), dist + 1.0], dim=-1)
    levels = edge_scales(errors, valid, cap=3, quantile=0.5)
    assert levels.shape == (4, 2)
    torch.testing.assert_close(levels[:, 0], 10 * torch.tensor([1.0, 2.0, 3.0, 4.0]))  # of |error|
    torch.testing.assert_close(levels[:, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # A good part is at its own level in every channel, wherever the cell is: RMS 1.
    cells = edge_distance(valid, cap=3)  # the long distances channel_normalised indexes with
    good = channel_normalised(errors, levels, cells)
    torch.testing.assert_close(good[valid], torch.ones(int(valid.sum())))
    # A defect three times the quiet channel's level stands out although its raw error is a
    # tenth of the loud channel's: the plain L2 norm would hardly change.
    bad = errors.clone()
    bad[0, 4, 4, 1] *= 3.0
    z = channel_normalised(bad, levels, cells)
    assert z[0, 4, 4] == pytest.approx(math.sqrt((1 + 9) / 2))
    assert bad[0, 4, 4].norm() / errors[0, 4, 4].norm() < 1.05
    # Only the first `channels` channels count (a 3D extractor's trailing context channels do not).
    assert channel_normalised(bad, levels, cells, channels=1)[0, 4, 4] == pytest.approx(1.0)


def test_levels_per_restored_bin_keep_a_part_s_own_relief_from_hiding_a_defect_beside_it():
    # One part, one band (cap 0): a groove restored as itself (restored 5) with errors of 4 on
    # a tenth of the cells, plain surface (restored 0) with errors of 1 elsewhere.
    g = 40
    valid = torch.ones(1, g, g, dtype=torch.bool)
    groove = torch.zeros(1, g, g, dtype=torch.bool)
    groove[0, :, :4] = True  # 160 of 1600 cells
    restored = torch.where(groove, 5.0, 0.0).unsqueeze(-1)
    errors = torch.where(groove, 4.0, 1.0).unsqueeze(-1)
    band = edge_scales(errors, valid, cap=0, quantile=0.97)
    levels, edges = binned_edge_scales(errors, restored, valid, 0, 0.97, (0.5, 0.85))
    assert band.shape == (1, 1) and float(band) == pytest.approx(4.0)  # one level: the groove's
    assert levels.shape == (1, 3, 1) and edges.shape == (1, 2)
    which = restored_bins(restored, edges)
    assert set(which[~groove].unique().tolist()) == {0} and set(which[groove].unique().tolist()) == {2}
    assert levels[0, 0, 0] == pytest.approx(1.0) and levels[0, 2, 0] == pytest.approx(4.0)
    assert levels[0, 1, 0] == pytest.approx(4.0)  # an empty bin keeps the band's level
    # A dent of 3 on the plain surface: one level per band says "normal", per bin three times it.
    bad = errors.clone()
    bad[0, 20, 20, 0] = 3.0
    cells = edge_distance(valid, cap=0)
    assert float(channel_normalised(bad, band, cells)[0, 20, 20]) < 1.0
    assert float(channel_normalised(bad, levels, cells, bins=which)[0, 20, 20]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="bins"):
        channel_normalised(bad, levels, cells)
    # Fewer good cells than MIN_BIN_CELLS in a bin: it keeps its band's level, not their maximum.
    few = torch.zeros(1, g, g, dtype=torch.bool)
    few[0, 0, : MIN_BIN_CELLS - 1] = True
    r_few = torch.where(few, 5.0, 0.0).unsqueeze(-1)
    e_few = torch.where(few, 9.0, 1.0).unsqueeze(-1)
    lv, ed = binned_edge_scales(e_few, r_few, valid, 0, 0.97, (0.99,))
    assert lv[0, 1, 0] == pytest.approx(float(edge_scales(e_few, valid, cap=0, quantile=0.97)))


def test_channel_normalised_max_keeps_a_defect_that_moves_few_channels():
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    cells = edge_distance(valid, cap=1)
    levels = torch.ones(2, 48)
    errors = torch.full((1, 6, 6, 48), -0.5)  # every channel at half its level, signed
    errors[0, 2, 3, 7] = 4.0  # one channel of 48 (a stain moves the colour ones)
    rms = channel_normalised(errors, levels, cells)
    worst = channel_normalised(errors, levels, cells, reduce="max")
    assert worst[0, 2, 3] == pytest.approx(4.0) and worst[0, 0, 0] == pytest.approx(0.5)
    # The RMS averages the one channel with 47 quiet ones: 4 -> 0.77, hardly above the rest.
    assert rms[0, 2, 3] == pytest.approx(math.sqrt((16 + 47 * 0.25) / 48))
    assert worst[0, 2, 3] / worst[0, 0, 0] > 5 * rms[0, 2, 3] / rms[0, 0, 0]
    # Signed errors count by their size; the channel subset applies first.
    errors[0, 2, 3, 7] = -4.0
    assert channel_normalised(errors, levels, cells, reduce="max")[0, 2, 3] == pytest.approx(4.0)
    assert channel_normalised(errors, levels, cells, channels=7, reduce="max")[0, 2, 3] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reduce"):
        channel_normalised(errors, levels, cells, reduce="mean")


def test_modality_scales_are_high_quantiles_of_good_maps():
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    m2 = torch.linspace(0, 1, 1024).reshape(1, 32, 32)
    s = modality_scales(m2, 2 * m2, valid, quantile=0.5)
    assert s[1] == pytest.approx(2 * s[0]) and 0.4 < s[0] < 0.6


def _offline(**scoring):
    return mafr.MAFRConfig(preset="offline", train={"steps": 30, "early_stop_patience": None}, scoring=scoring)


@pytest.fixture(scope="module")
def calibrated():
    good = [generate_sample("puck", seed=s, size=128) for s in range(6)]
    # On the CPU wherever the suite runs: these tests recompute the scoring formulas on CPU
    # tensors (the device paths are tests/test_devices.py's).
    return mafr.MAFRDetector(_offline(fusion="calibrated", score="max"), device="cpu").fit(good, seed=0, progress=False)


def test_calibration_is_fitted_saved_and_verified(calibrated, tmp_path):
    cal = calibrated.calibration_
    assert set(cal) == {"edge_2d", "edge_3d", "bins_2d", "bins_3d", "modality", "pixel_threshold"}
    # One level per distance from the edge (0 .. scoring.edge_cap), bin of the restored value
    # (scoring.level_bins) and channel; each channel's bin edges.
    bands, bins = calibrated.config.scoring.edge_cap + 1, len(calibrated.config.scoring.level_bins)
    assert (bands, bins) == (8, 3)  # the offline preset's
    c2, c3 = calibrated.stats_["rgb_mean"].shape[0], calibrated.stats_["xyz_mean"].shape[0]
    assert cal["edge_2d"].shape == (bands, bins + 1, c2) and cal["edge_3d"].shape == (bands, bins + 1, c3)
    assert cal["bins_2d"].shape == (c2, bins) and cal["bins_3d"].shape == (c3, bins)
    assert all(bool((e[:, 1:] >= e[:, :-1]).all()) for e in (cal["bins_2d"], cal["bins_3d"]))
    levels = [cal[k] for k in ("edge_2d", "edge_3d", "modality", "pixel_threshold")]
    assert all(bool(torch.isfinite(v).all()) and bool((v > 0).all()) for v in levels)
    part = generate_sample("puck", "hole", seed=40, size=128)
    before = calibrated.predict(part.rgb, part.xyz)
    calibrated.save_pretrained(tmp_path / "det")
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "det", device="cpu").predict(part.rgb, part.xyz)  # bit-equal on one device
    assert again.score == before.score and np.array_equal(again.defect_mask, before.defect_mask)

    # A detector whose config asks for calibrated fusion but whose calibration is gone is refused.
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "det" / "model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("calibration.")}
    stripped = calibrated.__class__(calibrated.config, device="cpu")  # where the borrowed state lives
    stripped.autoencoder_, stripped.stats_, stripped.threshold_ = calibrated.autoencoder_, calibrated.stats_, calibrated.threshold_
    stripped.replay_ = calibrated.replay_
    with pytest.raises(mafr.NotFittedError, match="calibrate"):
        stripped.predict(part.rgb, part.xyz)
    assert tensors  # the stripped file itself would fail its checksum first: tested in test_fail_closed


def test_offline_threshold_pools_every_fit_part(calibrated):
    from mafr.training import held_out_split as _held_out_split

    assert calibrated.config.scoring.threshold_parts == "all"
    good = [generate_sample("puck", seed=s, size=128) for s in range(6)]  # the fixture's fit set
    scores = calibrated.score_features(calibrated.extract_features(good))
    held, train = _held_out_split(6, calibrated.config.train.calibration_fraction, torch.Generator().manual_seed(0))
    pooled = _threshold_for(calibrated, [scores[i] for i in held + train])
    assert calibrated.threshold_ == pytest.approx(pooled, rel=1e-5)
    assert calibrated.fit_info_["calibration_scores"] == pytest.approx([scores[i] for i in held], rel=1e-5)
    assert _threshold_for(calibrated, [scores[i] for i in held]) != pytest.approx(pooled, rel=1e-3)


def test_modality_levels_gathered_a_few_parts_at_a_time_equal_the_levels_of_all_maps_at_once(calibrated):
    """Calibration on more parts than one chunk (an update with a full replay store) gives the
    same modality levels as computing every part's maps at once."""
    from mafr.scoring import box_smooth, modality_scales, upsampled_maps

    from mafr.features import Features as _Features

    good = [generate_sample("puck", seed=s, size=128) for s in range(6)]
    # 36 different parts (each copy's colour features scaled): three chunks of up to 16.
    feats = [_Features(f.rgb * (1 + 0.1 * k), f.xyz, f.valid_grid, f.valid_pixels, f.framing)
             for k in range(6) for f in calibrated.extract_features(good)]
    det = copy.deepcopy(calibrated)
    det._calibrate_on(feats[:2], feats[2:])
    sc = det.config.scoring
    res = det._residual_grids(feats)
    m2, m3, valid = upsampled_maps(*_edge_normalised_for(det, res), res.valid_pixels)
    smooth = lambda m: box_smooth(m, sc.box5_passes, sc.box7_passes)  # noqa: E731
    torch.testing.assert_close(det.calibration_["modality"], modality_scales(smooth(m2), smooth(m3) * valid, valid))
    # The first chunk alone gives other levels: every chunk counted.
    first = modality_scales(smooth(m2[:16]), smooth(m3[:16]) * valid[:16], valid[:16])
    assert not torch.allclose(det.calibration_["modality"], first, rtol=1e-3)


def test_offline_fusion_levels_pool_every_fit_part_and_the_pixel_threshold_stays_held_out(calibrated):
    from mafr.training import held_out_split as _held_out_split

    assert calibrated.config.scoring.levels_parts == "all"
    good = [generate_sample("puck", seed=s, size=128) for s in range(6)]  # the fixture's fit set
    feats = calibrated.extract_features(good)
    held, train = _held_out_split(6, calibrated.config.train.calibration_fraction, torch.Generator().manual_seed(0))
    assert held and train
    cap, q = calibrated.config.scoring.edge_cap, calibrated.config.scoring.level_quantile
    assert q == 0.97  # the offline preset's
    bins = calibrated.config.scoring.level_bins
    res = calibrated._residual_grids([feats[i] for i in held + train])
    for key, err, restored in (("2d", res.err2, res.restored2), ("3d", res.err3, res.restored3)):
        levels, edges = binned_edge_scales(err, restored, res.valid_grid, cap, q, bins)
        torch.testing.assert_close(calibrated.calibration_[f"edge_{key}"], levels)
        torch.testing.assert_close(calibrated.calibration_[f"bins_{key}"], edges)
    not_q = binned_edge_scales(res.err2, res.restored2, res.valid_grid, cap, 0.9, bins)[0]
    assert not torch.allclose(calibrated.calibration_["edge_2d"], not_q)  # not 0.9
    # The held-out parts alone give other levels: the setting is what made the difference.
    held_res = calibrated._residual_grids([feats[i] for i in held])
    only_held = binned_edge_scales(held_res.err2, held_res.restored2, held_res.valid_grid, cap, q, bins)[0]
    assert not torch.allclose(calibrated.calibration_["edge_2d"], only_held)
    # No held-out good pixel would be marked: the pixel threshold is the held-out parts' peak,
    # not the training parts'. Hold out the part with the lowest peak, so that any training part
    # counted would raise it.
    det = copy.deepcopy(calibrated)
    peaks = det._score_features(feats)[0].flatten(1).amax(1)
    low = int(peaks.argmin())
    det._calibrate_on([feats[low]], [f for i, f in enumerate(feats) if i != low])
    assert float(det.calibration_["pixel_threshold"][0]) == pytest.approx(float(det._score_features([feats[low]])[0].amax()), rel=1e-6)
    assert float(det.calibration_["pixel_threshold"][0]) < float(det._score_features(feats)[0].amax())


def test_curvature_is_restored_but_not_scored(calibrated):
    assert calibrated.point_extractor.context_channels == 1  # the curvature, the last channel
    c2, c3 = calibrated.stats_["rgb_mean"].shape[0], calibrated.stats_["xyz_mean"].shape[0]
    from mafr.scoring import Residuals as _Residuals

    valid = torch.ones(1, 28, 28, dtype=torch.bool)
    err3 = torch.zeros(1, 28, 28, c3)
    err3[..., -1] = 1e3  # a huge curvature error alone
    zeros2, zeros3 = torch.zeros(1, 28, 28, c2), torch.zeros(1, 28, 28, c3)
    _, res3 = _edge_normalised_for(calibrated, _Residuals(zeros2, err3, valid, valid, zeros2, zeros3))
    assert float(res3.abs().max()) == 0.0
    err3[..., 0] = 1e3  # the same error in a deviation channel counts
    _, res3 = _edge_normalised_for(calibrated, _Residuals(zeros2, err3, valid, valid, zeros2, zeros3))
    assert float(res3.min()) > 0


def test_edge_levels_of_the_wrong_shape_are_corrupt_and_old_ones_still_load(calibrated, tmp_path):
    import shutil

    from .test_fail_closed import _rewrite

    part = generate_sample("puck", "hole", seed=40, size=128)
    calibrated.save_pretrained(tmp_path / "det")
    # mafr 0.2 saved one level per distance (of the L2 norm): such a detector still scores.
    shutil.copytree(tmp_path / "det", tmp_path / "old")
    def to_0_2(t):
        t.update({k: t[k].flatten(1).norm(dim=1).contiguous() for k in ("calibration.edge_2d", "calibration.edge_3d")})
        del t["calibration.bins_2d"], t["calibration.bins_3d"]

    _rewrite(tmp_path / "old", to_0_2)
    old = mafr.MAFRDetector.from_pretrained(tmp_path / "old", device="cpu")  # the formula below is on CPU tensors
    assert old.calibration_["edge_2d"].dim() == 1 and math.isfinite(old.predict(part.rgb, part.xyz).score)
    # ... by the rule it was saved under: L2 over channels per distance, the calibrated maps summed.
    from mafr.scoring import score_maps

    feats = old.extract_features([part])
    err2, err3, vp, vg = old._residual_grids(feats)[:4]
    d = edge_distance(vg, old.calibration_["edge_2d"].shape[0] - 1)  # one band per saved level
    r2, r3 = err2.norm(dim=-1) / old.calibration_["edge_2d"][d], err3.norm(dim=-1) / old.calibration_["edge_3d"][d]
    expected = score_maps(r2, r3, vp, mode="calibrated_sum", valid_grid=vg, scales=old.calibration_["modality"],
                          score=old.config.scoring.score)[3]
    torch.testing.assert_close(old._score_features(feats)[3], expected)
    shutil.copytree(tmp_path / "det", tmp_path / "narrow")
    _rewrite(tmp_path / "narrow", lambda t: t.__setitem__("calibration.edge_2d", t["calibration.edge_2d"][:, :3].contiguous()))
    with pytest.raises(mafr.CorruptModelError, match="edge_2d"):
        mafr.MAFRDetector.from_pretrained(tmp_path / "narrow")
    for name, bad in (("bins_3d", lambda t: t.__delitem__("calibration.bins_3d")),
                      ("bins_2d", lambda t: t["calibration.bins_2d"].__setitem__((0, 0), 1e9)),  # not ascending
                      ("bins_2d", lambda t: t["calibration.bins_2d"].__setitem__((1, 1), math.nan))):
        shutil.rmtree(tmp_path / "bins", ignore_errors=True)
        shutil.copytree(tmp_path / "det", tmp_path / "bins")
        _rewrite(tmp_path / "bins", bad)
        with pytest.raises(mafr.CorruptModelError, match=name):
            mafr.MAFRDetector.from_pretrained(tmp_path / "bins")
    # Levels per channel only (saved before level_bins) score as they were fitted, whatever the
    # preset asks for now.
    shutil.copytree(tmp_path / "det", tmp_path / "per_channel")

    def per_channel(t):
        t.update({k: t[k][:, 0].contiguous() for k in ("calibration.edge_2d", "calibration.edge_3d")})
        del t["calibration.bins_2d"], t["calibration.bins_3d"]

    _rewrite(tmp_path / "per_channel", per_channel)
    before = mafr.MAFRDetector.from_pretrained(tmp_path / "per_channel", device="cpu")
    assert before.calibration_["edge_2d"].dim() == 2 and math.isfinite(before.predict(part.rgb, part.xyz).score)
    _rewrite(tmp_path / "det", lambda t: t["calibration.edge_3d"].view(-1).__setitem__(0, 0.0))
    with pytest.raises(mafr.CorruptModelError, match="edge_3d"):
        mafr.MAFRDetector.from_pretrained(tmp_path / "det")


def test_defect_mask_is_input_sized_and_consistent_with_the_decision(calibrated):
    hole = generate_sample("puck", "hole", seed=41, size=128)
    r = calibrated.predict(hole.rgb, hole.xyz)
    assert r.defect_mask.shape == hole.rgb.shape[:2] and r.defect_mask.dtype == bool
    assert r.is_anomalous and r.defect_mask.any()
    assert (r.anomaly_map[r.defect_mask] > r.pixel_threshold).all()
    inter = (r.defect_mask & hole.mask).sum()
    assert inter / (r.defect_mask | hole.mask).sum() > 0.1  # on the hole, not elsewhere
    good = generate_sample("puck", seed=42, size=128)
    g = calibrated.predict(good.rgb, good.xyz)
    if not g.is_anomalous:
        assert not g.defect_mask.any()  # a part judged good has no defective pixel
    # The overlay draws the outline of the mask.
    img = np.asarray(r.to_image())
    assert (img == np.array(OUTLINE_COLOUR, dtype=np.uint8)).all(-1).sum() > 0
    assert not (np.asarray(r.to_image(outline=False)) == np.array(OUTLINE_COLOUR)).all(-1).any()


def test_mask_outline_is_the_border_of_the_mask():
    m = np.zeros((7, 7), dtype=bool)
    m[2:5, 2:5] = True
    out = mask_outline(m)
    assert out.sum() == 8 and not out[3, 3] and out[2, 2]
    with pytest.raises(ValueError, match="differ in size"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), outline=np.ones((3, 3), bool))


def test_false_alarm_rate_rule_is_the_log_normal_quantile():
    det = mafr.MAFRDetector(_offline(threshold_rule="false_alarm_rate", target_false_alarm_rate=0.1, log_spread_floor=0.0))
    scores = [1.0, 2.0, 4.0]
    logs = np.log(scores)
    expected = math.exp(logs.mean() + NormalDist().inv_cdf(0.9) * logs.std(ddof=1))
    assert _threshold_for(det, scores) == pytest.approx(expected)
    # The floor on the spread: identical scores still leave room for an unusual good part.
    floored = mafr.MAFRDetector(_offline(threshold_rule="false_alarm_rate", target_false_alarm_rate=0.1,
                                         log_spread_floor=0.1))
    assert _threshold_for(floored, [2.0, 2.0]) == pytest.approx(2.0 * math.exp(0.1 * NormalDist().inv_cdf(0.9)))
    # A lower target false-alarm rate gives a higher threshold.
    strict = mafr.MAFRDetector(_offline(threshold_rule="false_alarm_rate", target_false_alarm_rate=0.01,
                                        log_spread_floor=0.1))
    assert _threshold_for(strict, scores) > _threshold_for(floored, scores)
    with pytest.raises(Exception, match="target_false_alarm_rate"):
        _offline(target_false_alarm_rate=0.0)


def _plane(h=64, w=64):
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return u, v, 0.5 + 0.0002 * u - 0.0001 * v + 1.5e-6 * (u - 30) ** 2 + 1e-6 * (u - 30) * (v - 20)


def _cloud(u, v, z):
    xyz = np.stack([u * 0.0005, v * 0.0005, z], -1)
    return torch.tensor(xyz, dtype=torch.float32)[None], torch.ones(1, *z.shape, dtype=torch.bool)


@pytest.mark.parametrize("stride", [1, 2])
def test_surface_deviation_is_zero_on_a_quadric_and_signed_on_bumps_and_dents(stride):
    u, v, z = _plane()
    ex = SurfaceDeviationExtractor((3.0, 6.0), stride=stride)
    flat = ex(*_cloud(u, v, z))[0]
    assert flat.shape == (3, 64, 64) and float(flat[:2].abs().max()) < 0.01  # mm
    g = 0.0005 * np.exp(-((u - 32) ** 2 + (v - 32) ** 2) / (2 * 3.0**2))  # 0.5 mm relief
    bump = ex(*_cloud(u, v, z - g))[0]  # towards the camera
    dent = ex(*_cloud(u, v, z + g))[0]
    assert float(bump[1, 32, 32]) > 0.2 and float(dent[1, 32, 32]) < -0.2
    assert float(bump[1, 5, 5]) == pytest.approx(0.0, abs=0.02)  # far from it: nothing


def test_surface_deviation_ignores_invalid_pixels_and_validates():
    u, v, z = _plane(32, 32)
    xyz, valid = _cloud(u, v, z)
    valid[0, 10:20, 10:20] = False
    xyz[0, 10:20, 10:20] = 0.0  # a dropout: zeros must not read as a deep hole
    out = SurfaceDeviationExtractor((3.0,), stride=1)(xyz, valid)[0]
    assert float(out[:, 10:20, 10:20].abs().max()) == 0.0
    assert float(out[0][valid[0]].abs().max()) < 0.02
    with pytest.raises(ValueError, match="scales"):
        SurfaceDeviationExtractor((0.0,))
    with pytest.raises(ValueError, match="stride"):
        SurfaceDeviationExtractor(stride=0)


def test_surface_deviation_of_higher_order_follows_a_narrow_cylinder():
    # A cylinder of 10 mm radius lying along u, 40 px (20 mm) across: its circular cross-section
    # is no quadric. A quartic leaves far less residual over the part, and a bump still stands out.
    v, u = np.mgrid[0:64, 0:64].astype(np.float64)
    y = (v - 31.5) * 0.0005
    part = np.abs(y) < 0.0095
    z = np.where(part, 0.5 - np.sqrt(np.clip(0.01**2 - y * y, 0, None)), 0.0)
    xyz = torch.tensor(np.stack([u * 0.0005, v * 0.0005, z], -1), dtype=torch.float32)[None]
    valid = torch.tensor(part)[None]
    residual = {}
    for order in (2, 3, 4):
        ex = SurfaceDeviationExtractor((6.0, 12.0), stride=1, order=order)
        assert ex.out_dim == 3 and ex.order == (order, order) and len(ex._terms[0]) == (order + 1) * (order + 2) // 2
        out = ex(xyz, valid)[0]
        residual[order] = float(out[:2][:, part].abs().mean())
    assert residual[4] < 0.5 * residual[2] and residual[3] <= residual[2] * 1.01
    g = 0.0005 * np.exp(-((u - 32) ** 2 + (v - 31.5) ** 2) / (2 * 3.0**2))  # 0.5 mm bump on the crest
    bumped = torch.tensor(np.stack([u * 0.0005, v * 0.0005, np.where(part, z - g, 0.0)], -1), dtype=torch.float32)[None]
    out = SurfaceDeviationExtractor((6.0, 12.0), stride=1, order=4)(bumped, valid)[0]
    assert float(out[0, 32, 32]) > 0.1  # mm, towards the camera
    # The default stays the quadric, bit for bit (the order-2 terms in their old order).
    assert SurfaceDeviationExtractor((6.0,))._terms == [[(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]]
    for bad in (1, 5, 2.0, True, (), (2, 4)):  # the default has three scales
        with pytest.raises(ValueError, match="order"):
            SurfaceDeviationExtractor(order=bad)
    # One order per scale: each scale's channel is what that order alone gives.
    mixed = SurfaceDeviationExtractor((6.0, 12.0), stride=1, order=(2, 4))(xyz, valid)[0]
    two = SurfaceDeviationExtractor((6.0, 12.0), stride=1, order=2)(xyz, valid)[0]
    four = SurfaceDeviationExtractor((6.0, 12.0), stride=1, order=4)(xyz, valid)[0]
    assert torch.equal(mixed[0], two[0]) and torch.equal(mixed[1:], four[1:])  # the curvature: the last scale's fit
    cfg = mafr.MAFRConfig(preset="offline", points={"deviation_order": (2, 4)})
    assert mafr.MAFRDetector(cfg).point_extractor.order == (2, 4)
    assert mafr.MAFRConfig(preset="offline").points.deviation_order == (2,)
    with pytest.raises(ValueError, match="deviation_order"):
        mafr.MAFRConfig(preset="offline", points={"deviation_order": (2, 3, 4)})


def test_surface_deviation_peaks_keep_a_small_bumps_height_through_the_grid_cell_mean():
    from mafr.projection import pool_to_grid

    u, v, z = _plane()
    # 0.5 mm bump of 5 px radius centred on a corner shared by four 8 x 8 cells: the worst case
    # for a cell mean, which splits it four ways.
    d2 = (u - 31.5) ** 2 + (v - 31.5) ** 2
    g = 0.0005 * np.clip(1 - d2 / 25.0, 0, 1) ** 2
    signed = SurfaceDeviationExtractor((6.0,))
    peaks = SurfaceDeviationExtractor((6.0,), peaks=True)
    assert peaks.out_dim == 3 and signed.out_dim == 2
    flat = peaks(*_cloud(u, v, z))[0]
    assert flat.shape == (3, 64, 64) and float(flat[:2].abs().max()) < 0.01 and float(flat[:2].min()) >= 0.0
    bump_signed = pool_to_grid(signed(*_cloud(u, v, z - g))[0], 8)
    bump = pool_to_grid(peaks(*_cloud(u, v, z - g))[0], 8)
    dent = pool_to_grid(peaks(*_cloud(u, v, z + g))[0], 8)
    # Each of the four cells' mean of the signed deviation kept under 3 % of the 0.5 mm (the
    # quadric fit and the split); the local rise of the smoothed deviation keeps 13 %, 4.7 times
    # as much, in each of the four cells.
    assert float(bump_signed[0, 3:5, 3:5].max()) < 0.015
    assert float(bump[0, 3:5, 3:5].min()) > 4 * float(bump_signed[0, 3:5, 3:5].max())
    assert float(bump[1, 3, 3]) < 0.3 * float(bump[0, 3, 3])  # a bump rises, it does not sink
    assert float(dent[1, 3, 3]) > 0.05 and float(dent[0, 3, 3]) < 0.3 * float(dent[1, 3, 3])
    assert float(bump[0, 0, 0]) < 0.01  # far from it: nothing
    # The curvature (context) stays the last channel, as without peaks.
    assert torch.equal(peaks(*_cloud(u, v, z))[0, -1], signed(*_cloud(u, v, z))[0, -1])


@pytest.mark.parametrize("shape", [(1, 4, 40, 56), (2, 3, 9, 13), (1, 1, 5, 7)])
@pytest.mark.parametrize("window", [1, 3, 9])
def test_running_max_is_max_pool_exactly(shape, window):
    from mafr.extractors.offline import _running_max

    x = torch.randn(shape, generator=torch.Generator().manual_seed(window))
    h = window // 2
    pooled = F.max_pool2d(F.max_pool2d(x, (1, window), stride=1, padding=(0, h)), (window, 1), stride=1, padding=(h, 0))
    assert torch.equal(_running_max(_running_max(x, window, -1), window, -2), pooled)
    assert torch.equal(_running_max(x, window, -2), F.max_pool2d(x, (window, 1), stride=1, padding=(h, 0)))


def test_surface_deviation_peaks_smooth_as_a_normalised_gaussian_convolution():
    ex = SurfaceDeviationExtractor((6.0, 12.0), peaks=True)
    g = torch.Generator().manual_seed(3)
    dev = torch.randn(2, 2, 48, 40, generator=g)
    valid = torch.rand(2, 48, 40, generator=g) > 0.2
    assert ex.peak_sigma == (3.0, 3.0)  # one width given: every scale's
    half, (k, *_) = ex._kernels(ex.peak_sigma[0], dev.device)
    k = k / k.sum()
    m = valid.float().unsqueeze(1)
    x = torch.cat([dev * m, m], dim=1)
    x = F.conv2d(F.pad(x, (half, half, 0, 0)), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, half, half)), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    smooth = x[:, :-1] / x[:, -1:].clamp_min(1e-6) * m
    signed = torch.cat([smooth.clamp_min(0), (-smooth).clamp_min(0)], dim=1)
    w = ex.peak_window
    expected = F.max_pool2d(signed, w, stride=1, padding=w // 2) * m
    torch.testing.assert_close(ex._peaks(dev, valid), expected, rtol=1e-5, atol=1e-6)


def test_surface_deviation_peaks_smooth_each_scale_with_its_own_width():
    g = torch.Generator().manual_seed(5)
    dev = torch.randn(2, 3, 40, 36, generator=g)
    valid = torch.rand(2, 40, 36, generator=g) > 0.2
    ex = SurfaceDeviationExtractor((6.0, 12.0, 18.0), peaks=True, peak_sigma=(4.5, 3.0, 4.5))
    assert ex.peak_sigma == (4.5, 3.0, 4.5) and "sigma=(4.5, 3.0, 4.5)" in repr(ex)
    out = ex._peaks(dev, valid)
    for i, sigma in enumerate(ex.peak_sigma):
        alone = SurfaceDeviationExtractor((6.0,), peaks=True, peak_sigma=sigma)._peaks(dev[:, i : i + 1], valid)
        # Rises of scale i, then its sinks: channels i and 3 + i, whatever the others' widths.
        torch.testing.assert_close(out[:, [i, 3 + i]], alone, rtol=0, atol=0)
    # A different width is a different feature (the test would pass for any width otherwise).
    same = SurfaceDeviationExtractor((6.0, 12.0, 18.0), peaks=True, peak_sigma=3.0)._peaks(dev, valid)
    assert torch.equal(out[:, [1, 4]], same[:, [1, 4]]) and not torch.allclose(out[:, [0, 3]], same[:, [0, 3]])
    # The config reaches the extractor, the fpfh combination included.
    cfg = mafr.MAFRConfig(preset="offline", points={"kind": "fpfh", "deviation_peak_sigma": (2.0, 5.0)})
    assert mafr.MAFRDetector(cfg).point_extractor.deviation.peak_sigma == (2.0, 5.0)
    # Three scales with two widths: told to set both, not guessed; one width serves any number.
    with pytest.raises(ValueError, match="deviation_peak_sigma"):
        mafr.MAFRConfig(preset="offline", points={"deviation_scales": (6.0, 12.0, 24.0), "deviation_peak_sigma": (4.5, 3.0)})
    assert mafr.MAFRConfig(preset="offline", points={"deviation_scales": (6.0, 12.0, 24.0), "deviation_peak_sigma": (4.5, 3.0),
                                                      "deviation_peaks": False})
    assert mafr.MAFRConfig(preset="offline", points={"deviation_scales": (6.0, 12.0, 24.0)}).points.deviation_peak_sigma == (3.0,)


def test_surface_deviation_peaks_ignore_invalid_pixels_and_validate():
    u, v, z = _plane(32, 32)
    xyz, valid = _cloud(u, v, z - 0.001 * ((u - 15) ** 2 + (v - 15) ** 2 < 4))
    valid[0, 10:20, 10:20] = False  # the bump itself is not measured
    xyz[0, 10:20, 10:20] = 0.0
    out = SurfaceDeviationExtractor((3.0,), stride=1, peaks=True)(xyz, valid)[0]
    assert float(out[:, 10:20, 10:20].abs().max()) == 0.0  # zero where nothing was measured
    assert float(out[:2][:, valid[0]].max()) < 0.02  # and nothing seen next to the dropout
    for bad in (0.0, float("nan"), "3", True, (), (3.0, 0.0, 3.0), (3.0, 3.0)):
        with pytest.raises(ValueError, match="peak_sigma"):
            SurfaceDeviationExtractor(peaks=True, peak_sigma=bad)  # three scales by default
    assert SurfaceDeviationExtractor(peak_sigma=(3.0, 3.0)).out_dim == 4  # no peaks: the widths are not read
    for bad in (0, 4, 2.5):
        with pytest.raises(ValueError, match="peak_window"):
            SurfaceDeviationExtractor(peaks=True, peak_window=bad)


def test_offline_preset_uses_multi_scale_deviation_and_fpfh_can_join_it():
    cfg = mafr.MAFRConfig(preset="offline")
    ex = mafr.MAFRDetector(cfg).point_extractor
    assert isinstance(ex, SurfaceDeviationExtractor) and ex.peaks and cfg.points.deviation_peaks
    assert ex.out_dim == 2 * len(cfg.points.deviation_scales) + 1
    assert len(cfg.points.deviation_scales) >= 2  # more than one scale
    both = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", points={"kind": "fpfh"})).point_extractor
    assert isinstance(both, OrganizedGeometryExtractor) and both.out_dim == 33 + ex.out_dim
    alone = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", points={"kind": "fpfh", "deviation_scales": ()}))
    assert alone.point_extractor.out_dim == 33


def test_a_detector_saved_before_mean_resize_and_colour_rarity_scores_as_it_was_fitted(tmp_path, monkeypatch):
    # Fitted with the behaviour of the release before points.resize / rgb.ring_radii /
    # points.deviation_peaks / scoring.edge_cap / scoring.levels_parts existed.
    good = [generate_sample("puck", seed=s, size=128) for s in range(5)]
    cfg = mafr.MAFRConfig(preset="offline", points={"resize": "nearest", "deviation_peaks": False}, rgb={"ring_radii": ()},
                          scoring={"edge_cap": 3, "levels_parts": "held_out", "level_quantile": 0.9},
                          train={"steps": 20, "early_stop_patience": None})
    det = mafr.MAFRDetector(cfg).fit(good, seed=0, progress=False)
    part = generate_sample("puck", "stain", seed=41, size=128)
    before = det.predict(part.rgb, part.xyz)

    from mafr import persistence

    writer = persistence.config_json_of

    def old_writer(det):  # that release's config.json had none of these fields
        data = writer(det)
        del data["points"]["resize"], data["rgb"]["ring_radii"], data["points"]["deviation_peaks"]
        del data["scoring"]["edge_cap"], data["scoring"]["levels_parts"], data["scoring"]["level_quantile"]
        return data

    monkeypatch.setattr(persistence, "config_json_of", old_writer)
    det.save_pretrained(tmp_path / "old")
    monkeypatch.undo()
    import json

    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "resize" not in saved["points"] and "ring_radii" not in saved["rgb"] and "deviation_peaks" not in saved["points"]
    assert not {"edge_cap", "levels_parts", "level_quantile"} & set(saved["scoring"])
    loaded = mafr.MAFRDetector.from_pretrained(tmp_path / "old")
    assert loaded.config.points.resize == "nearest" and loaded.config.rgb.ring_radii == ()
    assert loaded.config.points.deviation_peaks is False and loaded.config.scoring.edge_cap == 3
    assert loaded.config.scoring.levels_parts == "held_out" and loaded.config.scoring.level_quantile == 0.9
    assert loaded.calibration_["edge_2d"].shape[0] == 4
    again = loaded.predict(part.rgb, part.xyz)
    assert again.score == before.score and again.is_anomalous == before.is_anomalous


def test_colour_rarity_facing_the_same_way_reaches_the_detector_and_survives_saving(tmp_path):
    """With ``rgb.ring_normal_weight`` (the offline preset's 0.02) the detector hands the framed
    cloud to the colour extractor: only the colour-rarity channels change, and a fitted detector
    scores, saves and reloads with it."""
    good = [generate_sample("cylinder", seed=s, size=128) for s in range(4)]
    part = generate_sample("cylinder", "stain", seed=41, size=128)
    cfg = {"train": {"steps": 20, "early_stop_patience": None}}
    plain = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", rgb={"ring_normal_weight": 0.0}, **cfg), device="cpu")
    facing = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", **cfg), device="cpu")  # 0.02 in the preset
    a, b = plain.extract_features(good[:2]), facing.extract_features(good[:2])
    rarity = [i for i, n in enumerate(facing.rgb_extractor.feature_names) if n.endswith("colour_rarity")]
    others = [i for i in range(a[0].rgb.shape[-1]) if i not in rarity]
    for fa, fb in zip(a, b):
        assert torch.equal(fa.rgb[..., others], fb.rgb[..., others]) and torch.equal(fa.xyz, fb.xyz)
        assert not torch.equal(fa.rgb[..., rarity], fb.rgb[..., rarity])
    facing.fit(good, seed=0, progress=False)
    before = facing.predict(part.rgb, part.xyz)
    facing.save_pretrained(tmp_path / "det")
    loaded = mafr.MAFRDetector.from_pretrained(tmp_path / "det", device="cpu")
    assert loaded.config.rgb.ring_normal_weight == 0.02 and loaded.rgb_extractor.reads_geometry
    assert loaded.predict(part.rgb, part.xyz).score == before.score


def _threshold_for(det, scores):
    from mafr.calibration import threshold_from

    return threshold_from(scores, det.config.scoring)


def _edge_normalised_for(det, res):
    from mafr.scoring import edge_normalised

    return edge_normalised(res, det.calibration_, det.config.scoring.channel_reduce_2d, det._context_channels())
