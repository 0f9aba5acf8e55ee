"""MAFRDetector.update and the replay store it needs (mafr/replay.py)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr import errors
from mafr.datasets.synthetic import generate_sample
from mafr.replay import ReplayStore, moments_of, pool_moments
from mafr.training import feature_moments, stats_from_moments

from .conftest import tiny_config


def _parts(seeds, category="dome", defect=None):
    return [generate_sample(category, defect, seed=s, size=64) for s in seeds]


@settings(max_examples=40, deadline=None)
@given(n_a=st.integers(1, 30), n_b=st.integers(1, 30), channels=st.integers(1, 5), seed=st.integers(0, 2**16),
       offset=st.floats(-1e3, 1e3), scale=st.floats(1e-3, 1e3))
def test_pooled_moments_equal_moments_of_the_union(n_a, n_b, channels, seed, offset, scale):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_a, channels, generator=g, dtype=torch.float64) * scale + offset
    b = torch.randn(n_b, channels, generator=g, dtype=torch.float64) * scale * 2 - offset
    pooled = pool_moments(moments_of(a, a), moments_of(b, b))
    whole = moments_of(torch.cat([a, b]), torch.cat([a, b]))
    for key in ("rgb_mean", "rgb_var", "xyz_mean", "xyz_var"):
        torch.testing.assert_close(pooled[key], whole[key], rtol=1e-9, atol=1e-9 * scale * scale + 1e-9)
    assert int(pooled["rgb_count"][0]) == n_a + n_b


def _store(k, held=(), grid=4, rgb=6, xyz=5, side=10, seed=0, budget=10**9):
    g = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(k, dtype=torch.bool)
    held_out[list(held)] = True
    return ReplayStore.build(
        torch.randn(k, grid, grid, rgb, generator=g) * 3 + 1,
        torch.randn(k, grid, grid, xyz, generator=g),
        torch.rand(k, grid, grid, generator=g) > 0.3,
        torch.rand(k, side, side, generator=g) > 0.5,
        held_out,
        moments_of(torch.randn(20, rgb, generator=g), torch.randn(20, xyz, generator=g)),
        budget_bytes=budget,
        seed=seed,
    )


def test_store_round_trips_within_one_quantisation_step_and_its_size_is_what_part_bytes_says():
    store = _store(5, held=(1, 3))
    tensors = store.to_tensors()
    assert all(k.startswith("replay.") for k in tensors)
    back = ReplayStore.from_tensors(tensors)
    for name in ("rgb", "xyz"):
        step = tensors[f"replay.{name}_step"]
        assert (getattr(back, name) - getattr(store, name)).abs().le(step / 2 + 1e-5).all()
    assert torch.equal(back.valid_grid, store.valid_grid) and torch.equal(back.valid_pixels, store.valid_pixels)
    assert back.held_out.tolist() == [False, True, False, True, False]
    per_part = sum(v.numel() * v.element_size() for k, v in tensors.items()
                   if k.split(".")[1] in ("rgb", "xyz", "valid_grid", "valid_pixels", "held_out"))
    assert per_part == 5 * ReplayStore.part_bytes(4, 6, 5, 10)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 12), n_held=st.integers(0, 12), room=st.integers(0, 14), seed=st.integers(0, 1000))
def test_store_budget_keeps_at_most_what_fits_and_both_roles(k, n_held, room, seed):
    n_held = min(n_held, k)
    per_part = ReplayStore.part_bytes(4, 6, 5, 10)
    store = _store(k, held=range(n_held), seed=seed, budget=room * per_part)
    assert len(store) == min(k, room)
    kept_held = store.n_held_out
    if min(k, room) >= 2 and 0 < n_held < k:
        assert 0 < kept_held < len(store)  # held-out and trained-on parts both survive a tight budget


def test_store_that_does_not_fit_together_is_refused():
    tensors = _store(3).to_tensors()
    bad = dict(tensors, **{"replay.held_out": torch.zeros(2, dtype=torch.uint8)})
    with pytest.raises(errors.CorruptModelError, match="do not fit together"):
        ReplayStore.from_tensors(bad)
    missing = {k: v for k, v in tensors.items() if k != "replay.moments.xyz_var"}
    with pytest.raises(errors.CorruptModelError, match="replay.moments.xyz_var"):
        ReplayStore.from_tensors(missing)
    nan = dict(tensors, **{"replay.rgb_lo": torch.full_like(tensors["replay.rgb_lo"], float("nan"))})
    with pytest.raises(errors.CorruptModelError):
        ReplayStore.from_tensors(nan)
    assert ReplayStore.from_tensors({"threshold": torch.zeros(1)}) is None


@pytest.fixture(scope="module")
def fitted():
    return mafr.MAFRDetector(tiny_config(train={"update_steps": 10})).fit(_parts(range(6)), seed=0, progress=False)


def test_update_after_load_round_trips_and_records_history(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "a")
    det = mafr.MAFRDetector.from_pretrained(tmp_path / "a")
    assert len(det.replay_) == len(fitted.replay_) == 6 and det.replay_.n_held_out == 1
    new = _parts(range(20, 25), category="dome")
    arrays = [(s.rgb.copy(), s.xyz.copy()) for s in new]
    assert det.update(arrays, seed=1) is det
    for (rgb, xyz), s in zip(arrays, new):  # nothing a user passes in is modified
        assert np.array_equal(rgb, s.rgb) and np.array_equal(xyz, s.xyz)
    info = det.fit_info_
    assert [e["event"] for e in info["history"]] == ["fit", "update"]
    upd = info["history"][-1]
    assert upd["parts"] == 5 and upd["n_train"] == 4 and upd["n_calibration"] == 1
    assert upd["steps"] == det.config.train.update_steps and upd["threshold"] == det.threshold_
    assert info["n_updates"] == 1 and info["n_parts_total"] == 11 and len(det.replay_) == 11
    assert det.replay_.n_held_out == 2
    # The threshold follows the fit rule on the held-out parts, old (stored) and new.
    assert det.threshold_ >= max(info["calibration_scores"]) and len(info["calibration_scores"]) == 2
    det.save_pretrained(tmp_path / "b")
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "b")
    probe = generate_sample("dome", "crack", seed=3, size=64)
    assert again.predict(probe.rgb, probe.xyz).score == det.predict(probe.rgb, probe.xyz).score
    assert again.threshold_ == det.threshold_ and again.fit_info_["history"] == info["history"]
    card = (tmp_path / "b" / "README.md").read_text()
    assert "Fit history" in card and "update" in card


def test_update_pools_normalisation_statistics_exactly():
    cfg = tiny_config(train={"calibration_fraction": 0.0, "steps": 5, "update_steps": 5})
    old, new = _parts(range(3)), _parts(range(30, 32))
    det = mafr.MAFRDetector(cfg).fit(old, progress=False).update(new)
    everything = stats_from_moments(feature_moments(det.extract_features(old + new)))
    for key, value in everything.items():
        torch.testing.assert_close(det.stats_[key].cpu(), value.cpu(), rtol=1e-5, atol=1e-6)
    # No part held out anywhere: calibrated on training parts, and the detector says so.
    assert det.fit_info_["calibration_on_training_parts"] is True


def test_update_is_seeded_and_leaves_the_original_fit_alone(fitted):
    import copy

    a, b = copy.deepcopy(fitted), copy.deepcopy(fitted)
    new = _parts(range(40, 43))
    a.update(new, seed=0)
    b.update(new, seed=0)
    probe = generate_sample("dome", "bump", seed=5, size=64)
    sa, sb = a.predict(probe.rgb, probe.xyz).score, b.predict(probe.rgb, probe.xyz).score
    if fitted.device.type == "cpu":
        assert sa == sb  # bit for bit: seeded and deterministic on the CPU
    else:
        assert sa == pytest.approx(sb, rel=1e-4)  # GPU kernels (atomic adds) reorder float sums
    assert [e["event"] for e in fitted.fit_info_["history"]] == ["fit"]


def test_update_errors_name_the_cause(fitted):
    with pytest.raises(mafr.NotFittedError):
        mafr.MAFRDetector(tiny_config()).update(_parts([0]))
    with pytest.raises(errors.InvalidInputError, match="at least one"):
        fitted.update([])
    with pytest.raises(errors.InputTypeError, match="iterable of good samples"):
        fitted.update("parts/")
    no_store = mafr.MAFRDetector(tiny_config(train={"replay_budget_mb": 0.0, "steps": 2})).fit(_parts(range(3)), progress=False)
    assert len(no_store.replay_) == 0
    with pytest.raises(errors.NoReplayStoreError, match="refit"):
        no_store.update(_parts([9]))


def test_cli_update_saves_and_info_shows_the_history(fitted, tmp_path, capsys):
    import json

    from mafr.cli import main
    from mafr.datasets import write_dataset

    fitted.save_pretrained(tmp_path / "det")
    root = write_dataset(tmp_path / "data", categories=["dome"], n_train=3, n_validation=0, n_test_good=0,
                         n_test_per_defect=0, size=64, seed=7)
    capsys.readouterr()
    assert main(["update", str(tmp_path / "det"), str(root / "dome"), "--out-dir", str(tmp_path / "v2"),
                 "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_parts"] == 3 and summary["n_updates"] == 1 and summary["n_parts_total"] == 9
    updated = mafr.MAFRDetector.from_pretrained(tmp_path / "v2")
    assert updated.threshold_ == summary["threshold"]
    assert [e["event"] for e in mafr.MAFRDetector.from_pretrained(tmp_path / "det").fit_info_["history"]] == ["fit"]
    assert main(["info", str(tmp_path / "v2")]) == 0
    text = capsys.readouterr().out
    assert "history" in text and "1. fit" in text and "2. update" in text and "3 parts (2 trained on, 1 held out)" in text
    # A detector that is not there: one error line, exit status 2.
    assert main(["update", str(tmp_path / "nowhere"), str(root / "dome"), "--quiet"]) == 2


def test_diverged_training_raises_and_leaves_the_detector_as_it_was(fitted, monkeypatch):
    import copy

    import mafr.training as training_module

    det = copy.deepcopy(fitted)
    probe = generate_sample("dome", "bump", seed=5, size=64)
    before = det.predict(probe.rgb, probe.xyz).score
    threshold, weights = det.threshold_, copy.deepcopy(det.autoencoder_.state_dict())
    real = training_module.restoration_loss
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss  # NaN from the third step on

    monkeypatch.setattr(training_module, "restoration_loss", diverging)
    with pytest.raises(mafr.TrainingDivergedError, match="step 3"):
        det.update(_parts(range(40, 43)), seed=0)
    # Rolled back: the fine-tuned weights, statistics and threshold are the ones from before.
    assert det.threshold_ == threshold
    assert all(torch.equal(v, det.autoencoder_.state_dict()[k]) for k, v in weights.items())
    monkeypatch.setattr(training_module, "restoration_loss", real)
    assert det.predict(probe.rgb, probe.xyz).score == before
    # A fresh fit that diverges leaves no half-fitted detector behind.
    monkeypatch.setattr(training_module, "restoration_loss", diverging)
    calls["n"] = 0
    fresh = mafr.MAFRDetector(tiny_config(train={"steps": 8}))
    with pytest.raises(mafr.TrainingDivergedError, match="non-finite"):
        fresh.fit(_parts(range(3)), progress=False)
    assert not fresh.is_fitted
