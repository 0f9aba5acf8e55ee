"""Each stage of the detector through its own interface (docs/architecture.md)."""

import math

import numpy as np
import pytest
import torch

import mafr
from mafr import calibration, features, persistence, preparation, training
from mafr.datasets import generate_sample

CPU = torch.device("cpu")


def _offline(**kw):
    return mafr.MAFRConfig(preset="offline", train={"steps": 10}, **kw)


def test_preparation_gives_the_network_square_and_flags_what_it_set_aside():
    cfg = _offline()
    raw = generate_sample("puck", seed=1, size=96, background="plane")
    prep = preparation.prepare(raw, cfg, CPU)
    size = cfg.rgb.image_size
    assert prep.image.shape == (3, size, size) and prep.xyz.shape == (size, size, 3) and prep.valid.shape == (size, size)
    assert prep.flags == () and prep.valid_input.mean() < 0.5  # the table is no longer measured input
    kept = preparation.prepare(raw, _offline(support="keep"), CPU)
    assert kept.valid_input.all() or kept.valid_input.mean() > 0.9
    with pytest.raises(mafr.InvalidInputError, match="needs xyz"):
        preparation.prepare((raw.rgb, None), cfg, CPU)
    rgb_only = preparation.prepare(raw.rgb, _offline(modalities="rgb"), CPU)
    assert rgb_only.valid.all() and rgb_only.depth is None


def test_feature_extraction_widths_match_what_the_extractors_announce():
    cfg = _offline()
    ex = features.Extractors(cfg, CPU)
    prep = preparation.prepare(generate_sample("puck", seed=2, size=96), cfg, CPU)
    (f,) = ex.extract([prep])
    assert (f.rgb.shape[-1], f.xyz.shape[-1]) == ex.dims() == mafr.extractors.feature_dims(cfg)
    assert f.rgb.shape[:2] == f.xyz.shape[:2] == (cfg.grid_size, cfg.grid_size)
    rgb_only = features.Extractors(_offline(modalities="rgb"), CPU)
    (g,) = rgb_only.extract([preparation.prepare(generate_sample("puck", seed=2, size=96).rgb, rgb_only.config, CPU)])
    assert not g.xyz.any() and rgb_only.point_module is None


def test_training_is_seeded_and_splits_as_documented():
    held, train = training.held_out_split(10, 0.2, torch.Generator().manual_seed(0))
    assert len(held) == 2 and sorted(held + train) == list(range(10))
    assert training.held_out_split(2, 0.2, torch.Generator().manual_seed(0)) == ([], [0, 1])
    cfg = _offline()
    feats = [features.Features(torch.randn(8, 8, 6), torch.randn(8, 8, 5), torch.ones(8, 8, dtype=torch.bool),
                               torch.ones(32, 32, dtype=torch.bool)) for _ in range(4)]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        ae = training.build_autoencoder(cfg, feats[0], CPU)
        runs.append(training.train_autoencoder(ae, torch.stack([f.rgb for f in feats]), torch.stack([f.xyz for f in feats]),
                                               cfg.train, torch.Generator().manual_seed(0), n_new=4, device=CPU))
    assert runs[0] == runs[1] and len(runs[0]) == cfg.train.steps and runs[0][-1] < runs[0][0]
    stats = training.stats_from_moments(training.feature_moments(feats))
    assert stats["rgb_mean"].shape == (6,) and bool((stats["xyz_std"] > 0).all())


def test_calibration_threshold_rules_and_the_mask():
    sc = _offline().scoring
    t = calibration.threshold_from([1.0, 1.2, 0.9], sc)
    assert math.isfinite(t) and t > 1.2
    fused = np.zeros((10, 10), np.float32)
    fused[2:4, 2:4] = 5.0
    cal = {"pixel_threshold": torch.tensor([1.0], dtype=torch.float64)}
    level, mask = calibration.defect_mask(fused, True, cal, sc)
    assert mask.sum() == 4 and level == pytest.approx(sc.mask_level)
    assert calibration.defect_mask(fused, False, cal, sc)[1].sum() == 0
    assert calibration.defect_mask(fused, None, cal, sc) == (None, None)  # no decision, no mask


def test_persistence_gives_old_configs_the_values_they_were_fitted_with():
    saved = _offline().to_json_dict()
    for field in ("support", "modalities", "framing"):
        del saved[field]
    old = persistence.decode_config(saved)
    assert (old.support, old.modalities, old.framing) == ("keep", "rgb+xyz", "image")
    assert persistence.decode_config(_offline().to_json_dict()) == _offline()


def _feats(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [features.Features(torch.randn(8, 8, 6, generator=g), torch.randn(8, 8, 5, generator=g),
                              torch.ones(8, 8, dtype=torch.bool), torch.ones(32, 32, dtype=torch.bool)) for _ in range(n)]


def test_training_bookkeeping_records_and_rolls_back():
    rec = training.fit_record(n=10, n_train=8, n_calibration=2, scores=[1.0, 2.0], seed=3, losses=[3.0, 2.0],
                              seconds=1.5, threshold=2.5, replay_parts=10)
    assert rec["steps"] == 2 and rec["final_loss"] == 2.0 and rec["history"][0]["event"] == "fit"
    up = training.update_record(rec, n=4, n_train=3, n_calibration=1, scores=[1.0], on_training_parts=False, seed=1,
                                losses=[1.0], seconds=0.5, threshold_before=2.5, threshold=2.7, replay_parts=14)
    assert up["n_updates"] == 1 and up["n_parts_total"] == 14 and len(rec["history"]) == 1  # the input is left alone
    assert training.calibration_parts([1], [2, 3]) == ([1], [2, 3])
    assert training.calibration_parts([], [2, 3]) == ([2, 3], [])  # nothing held out: the training parts

    class Holder:
        stats_, autoencoder_, threshold_, calibration_, replay_, fit_info_, framing_ = {}, None, 1.0, {}, None, {"a": 1}, None

    det = Holder()
    with pytest.raises(mafr.TrainingDivergedError):
        with training.rollback_on_divergence(det):
            det.threshold_, det.fit_info_ = 9.0, {}
            raise mafr.TrainingDivergedError("diverged")
    assert det.threshold_ == 1.0 and det.fit_info_ == {"a": 1}
    with pytest.raises(mafr.InvalidInputError, match="at least one good sample"):
        preparation.good_parts([], "fit", "rgb+xyz")
    with pytest.raises(mafr.InputTypeError, match="iterable"):
        preparation.good_parts("parts/", "update", "rgb+xyz")


def test_calibration_is_one_call_over_restored_held_out_parts():
    sc = _offline(scoring={"fusion": "product"}).scoring
    feats = _feats(5)
    calls = []

    def residuals_of(fs):
        calls.append(len(fs))
        err = torch.stack([f.rgb for f in fs]) * 0.1
        return mafr.scoring.Residuals(err, torch.stack([f.xyz for f in fs]) * 0.1,
                                      torch.stack([f.valid_pixels for f in fs]), torch.stack([f.valid_grid for f in fs]),
                                      err, err)

    def maps_of(res, cal):
        return mafr.scoring.maps_from_residuals(res, cal, sc)

    cal, threshold, scores = calibration.calibrate(feats[:2], feats[2:], sc, residuals_of, maps_of)
    assert len(scores) == 2 and threshold >= max(scores) and float(cal["pixel_threshold"]) > 0
    with pytest.raises(ValueError, match="at least one good part"):
        calibration.calibrate([], feats, sc, residuals_of, maps_of)

    def broken(res, cal):
        fused, m2, m3, s = maps_of(res, cal)
        return fused, m2, m3, s * float("nan")

    with pytest.raises(mafr.TrainingDivergedError, match="non-finite"):
        calibration.calibrate(feats[:2], (), sc, residuals_of, broken)


def test_scoring_normalises_and_restores_with_the_fitted_statistics():
    feats = _feats(2, seed=1)
    stats = training.stats_from_moments(training.feature_moments(feats))
    rgb, xyz = mafr.scoring.normalise(feats[0], stats, "channel", CPU)
    torch.testing.assert_close(rgb, (feats[0].rgb - stats["rgb_mean"]) / stats["rgb_std"])
    raw_rgb, _ = mafr.scoring.normalise(feats[0], stats, "none", CPU)
    assert torch.equal(raw_rgb, feats[0].rgb)
    ae = training.build_autoencoder(_offline(), feats[0], CPU).eval()
    import contextlib

    res = mafr.scoring.restore(ae, [mafr.scoring.normalise(f, stats, "channel", CPU) for f in feats], feats, CPU,
                               contextlib.nullcontext())
    assert res.err2.shape == (2, 8, 8, 6) and res.err3.shape == (2, 8, 8, 5)
    torch.testing.assert_close(res.restored2 - res.err2, torch.stack([mafr.scoring.normalise(f, stats, "channel", CPU)[0]
                                                                      for f in feats]))


def test_persistence_takes_any_config_form_and_names_every_fitted_tensor():
    assert persistence.as_config(None) == mafr.MAFRConfig()
    assert persistence.as_config(_offline().to_json_dict()) == _offline()
    with pytest.raises(TypeError, match="MAFRConfig"):
        persistence.as_config("offline")
    det = mafr.MAFRDetector(_offline()).fit([generate_sample("puck", seed=s, size=64) for s in range(3)], progress=False)
    names = set(persistence.state_tensors(det))
    assert {"threshold", "stats.rgb_mean"} <= names and any(n.startswith("autoencoder.") for n in names)
    assert any(n.startswith("replay.") for n in names) and any(n.startswith("calibration.") for n in names)
