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
