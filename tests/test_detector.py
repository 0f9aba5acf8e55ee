import json

import numpy as np
import pytest

import mafr
from mafr.preparation import prepare
from mafr.datasets.synthetic import generate_sample

from .conftest import tiny_config


def _parts(category="dome", seeds=range(6), size=64, defect=None):
    return [generate_sample(category, defect, seed=s, size=size) for s in seeds]


@pytest.fixture(scope="module")
def fitted():
    det = mafr.MAFRDetector(tiny_config())
    return det.fit(_parts(), seed=0, progress=False)


def test_fit_returns_self_and_records_calibration(fitted):
    assert fitted.is_fitted
    info = fitted.fit_info_
    assert info["n_samples"] == 6 and info["n_calibration"] == 1 and info["n_train"] == 5
    assert info["steps"] == 40
    assert fitted.threshold_ >= max(info["calibration_scores"])


def test_predict_result_types_and_resolution(fitted):
    s = generate_sample("dome", seed=100, size=64)
    rgb = np.pad(s.rgb, ((0, 0), (0, 16), (0, 0)))  # non-square input: 64 x 80
    xyz = np.pad(s.xyz, ((0, 0), (0, 16), (0, 0)))
    rgb_before, xyz_before = rgb.copy(), xyz.copy()
    res = fitted.predict(rgb, xyz)
    assert isinstance(res, mafr.AnomalyResult)
    for m in (res.anomaly_map, res.map_2d, res.map_3d):
        assert m.shape == (64, 80) and m.dtype == np.float32 and np.isfinite(m).all()
    assert res.valid_mask.dtype == bool and res.valid_mask.shape == (64, 80)
    np.testing.assert_array_equal(res.valid_mask, (xyz != 0).any(-1))
    assert res.is_anomalous == (res.score > res.threshold)
    np.testing.assert_array_equal(rgb, rgb_before)
    np.testing.assert_array_equal(xyz, xyz_before)




def test_predict_batch_equals_single_predicts(fitted):
    parts = _parts(seeds=range(200, 203))
    batch = fitted.predict_batch(parts, batch_size=2)
    single = [fitted.predict(p.rgb, p.xyz) for p in parts]
    for b, s in zip(batch, single):
        assert b.score == pytest.approx(s.score, rel=1e-4)
        np.testing.assert_allclose(b.anomaly_map, s.anomaly_map, rtol=1e-3, atol=1e-5)


def test_seeded_fit_is_reproducible_and_seed_matters():
    parts = _parts(seeds=range(4))
    probe = generate_sample("dome", seed=50, size=64)
    a = mafr.MAFRDetector(tiny_config(train={"steps": 10})).fit(parts, seed=3, progress=False)
    b = mafr.MAFRDetector(tiny_config(train={"steps": 10})).fit(parts, seed=3, progress=False)
    c = mafr.MAFRDetector(tiny_config(train={"steps": 10})).fit(parts, seed=4, progress=False)
    sa, sb, sc = (d.predict(probe.rgb, probe.xyz).score for d in (a, b, c))
    assert sa == sb
    assert sa != sc


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "det")
    files = sorted(p.name for p in (tmp_path / "det").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "det" / "config.json").read_text())
    assert cfg["version"] == mafr.CONFIG_VERSION and cfg["fit"]["n_samples"] == 6
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "det")
    assert again.config == fitted.config and again.threshold_ == fitted.threshold_
    probe = generate_sample("dome", "bump", seed=7, size=64)
    r1, r2 = fitted.predict(probe.rgb, probe.xyz), again.predict(probe.rgb, probe.xyz)
    assert r1.score == r2.score
    np.testing.assert_array_equal(r1.anomaly_map, r2.anomaly_map)
    card = (tmp_path / "det" / "README.md").read_text()
    assert "threshold" in card and "library_name: mafr" in card


def test_from_pretrained_offline_hub_cache(fitted, tmp_path):
    # A populated Hugging Face cache, as snapshot_download leaves it, read with HF_HUB_OFFLINE=1.
    commit = "a" * 40
    snap = tmp_path / "hub" / "models--acme--bracket-mafr" / "snapshots" / commit
    fitted.save_pretrained(snap)
    (tmp_path / "hub" / "models--acme--bracket-mafr" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--bracket-mafr" / "refs" / "main").write_text(commit)
    again = mafr.MAFRDetector.from_pretrained("acme/bracket-mafr", cache_dir=tmp_path / "hub", local_files_only=True)
    assert again.threshold_ == fitted.threshold_


def test_errors_are_clear(fitted, tmp_path):
    det = mafr.MAFRDetector(tiny_config())
    s = generate_sample("dome", seed=1, size=64)
    with pytest.raises(mafr.NotFittedError, match="not fitted"):
        det.predict(s.rgb, s.xyz)
    with pytest.raises(ValueError, match="empty fit set"):
        det.fit([], progress=False)
    sparse = np.zeros_like(s.xyz)
    sparse[30:33, 30:33] = s.xyz[30:33, 30:33] + [0, 0, 0.5]
    with pytest.raises(ValueError, match=r"too few valid 3D points: \d+ .* at least 32"):
        fitted.predict(s.rgb, sparse)
    with pytest.raises(ValueError, match="aspect ratios"):
        fitted.predict(s.rgb, s.xyz[:, :40])
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        fitted.save_pretrained(tmp_path / "d")
        (tmp_path / "d" / "model.safetensors").unlink()
        mafr.MAFRDetector.from_pretrained(tmp_path / "d")


def test_newer_config_json_is_refused(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["version"] = mafr.CONFIG_VERSION + 1
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="newer mafr"):
        mafr.MAFRDetector.from_pretrained(tmp_path / "d")


def test_fitted_detector_separates_obvious_defects():
    """Honest end-to-end check: 6 good parts to fit, then a held-out good part and parts with a
    clear geometric + colour defect (crack, hole). The defects must score higher and the map must
    peak inside the defect (dilated by the smoothing radius)."""
    # CPU: the fit is deterministic there; on a GPU the peak lands within a pixel of the margin.
    det = mafr.MAFRDetector(tiny_config(train={"steps": 80}), device="cpu")
    det.fit(_parts("puck", seeds=range(6), size=64), seed=0, progress=False)
    good = generate_sample("puck", seed=40, size=64)
    s_good = det.predict(good.rgb, good.xyz).score
    for defect, seed in (("crack", 41), ("hole", 42)):
        bad = generate_sample("puck", defect, seed=seed, size=64)
        res = det.predict(bad.rgb, bad.xyz)
        assert res.score > s_good, (defect, res.score, s_good)
        r, c = np.unravel_index(np.argmax(res.anomaly_map), res.anomaly_map.shape)
        rows, cols = np.nonzero(bad.mask)
        margin = 6
        assert rows.min() - margin <= r <= rows.max() + margin and cols.min() - margin <= c <= cols.max() + margin, defect


def test_fast_3d_alignment_equals_reference_path(fitted):
    """The default path (one sparse operator from PointMAE centres to the grid) must equal the
    reference path (interpolate every point, scatter at full resolution, pool)."""
    import torch

    from mafr.extractors.pointops import three_nn_interpolate
    from mafr.projection import pool_to_grid, scatter_to_pixels

    s = generate_sample("ring", "dent", seed=3, size=64)
    prep = prepare(s, fitted.config, fitted.device)
    fast = fitted.extractors.point_grid([prep])[0]
    idx = prep.valid.flatten().nonzero().squeeze(1)
    pts = prep.xyz.reshape(-1, 3)[idx].unsqueeze(0)
    feats, centres = fitted.point_extractor(pts)
    dense = pool_to_grid(scatter_to_pixels(three_nn_interpolate(pts, centres, feats)[0], idx, 64), 8)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-4)



def test_3d_stage_of_a_batch_equals_one_sample_at_a_time(fitted):
    """predict_batch runs the 3D extractor once for the batch: PointMAE's groups of clouds with
    different numbers of points are encoded together, organized maps are stacked. Each sample's
    grid features must be what it gets alone."""
    import torch

    parts = [generate_sample("ring", "dent", seed=3, size=64), generate_sample("dome", seed=7, size=64),
             generate_sample("ring", "hole", seed=5, size=64)]
    preps = [prepare(s, fitted.config, fitted.device) for s in parts]
    assert len({int(p.valid.sum()) for p in preps}) == 3  # three cloud sizes
    together = fitted.extractors.point_grid(preps)
    for prep, got in zip(preps, together):
        torch.testing.assert_close(got, fitted.extractors.point_grid([prep])[0], atol=1e-5, rtol=1e-4)
    offline = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", rgb={"image_size": 64}, grid_size=16))
    preps = [prepare(s, offline.config, offline.device) for s in parts]
    together = offline.extractors.point_grid(preps)
    for prep, got in zip(preps, together):
        torch.testing.assert_close(got, offline.extractors.point_grid([prep])[0], atol=1e-5, rtol=1e-4)

@pytest.mark.full
def test_full_size_default_architecture_fits_and_predicts():
    """The paper's architecture at the paper's input size (DINO ViT-B/8 at 224, PointMAE with 1024
    groups of 128 points, 12 blocks, 1152-d output), random weights: fit on 2, predict on 1."""
    config = mafr.MAFRConfig(extractor_weights="random", train={"steps": 3})
    det = mafr.MAFRDetector(config)
    parts = [generate_sample("dome", seed=s, size=224) for s in range(2)]
    det.fit(parts, seed=0, progress=False)
    assert det.rgb_extractor.out_dim == 768 and det.rgb_extractor.patch_size == 8
    assert det.point_extractor.out_dim == 1152
    assert det.autoencoder_.encoder.input_fc.weight.shape == (960, 1920)
    probe = generate_sample("dome", "crack", seed=9, size=224)
    res = det.predict(probe.rgb, probe.xyz)
    assert res.anomaly_map.shape == (224, 224) and np.isfinite(res.anomaly_map).all()
    assert res.score > 0 and np.isfinite(res.score)


def test_save_with_extractors_is_self_contained(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "full", include_extractors=True)
    assert (tmp_path / "full" / "rgb_extractor.safetensors").is_file()
    assert (tmp_path / "full" / "point_extractor" / "model.safetensors").is_file()
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "full")
    assert again.config.rgb.weights.endswith("rgb_extractor.safetensors")
    assert again.config.points.weights.endswith("point_extractor")
    probe = generate_sample("dome", "stain", seed=8, size=64)
    assert again.predict(probe.rgb, probe.xyz).score == fitted.predict(probe.rgb, probe.xyz).score
    # without the flag nothing but the heads is written
    fitted.save_pretrained(tmp_path / "lean")
    assert not (tmp_path / "lean" / "rgb_extractor.safetensors").exists()


def test_push_to_hub_uploads_weights_config_and_card(fitted, monkeypatch):
    """push_to_hub goes through huggingface_hub's HfApi; record what it would upload."""
    import huggingface_hub

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            from pathlib import Path

            uploaded["repo"] = repo_id
            uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            return "https://huggingface.co/acme/part/commit/0"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    url = fitted.push_to_hub("acme/part")
    assert url.endswith("/commit/0") and uploaded["repo"] == "acme/part"
    assert set(uploaded["files"]) == {"config.json", "model.safetensors", "README.md"}
    card = uploaded["files"]["README.md"].decode()
    assert "Decision threshold" in card and "held out" in card and '"grid_size": 8' in card


def test_reference_preset_runs_pointwise_cbam_on_the_full_grid():
    cfg = tiny_config(preset="reference", grid_size=64, train={"epochs": 2, "batch_size": 1})
    assert cfg.model.cbam == "pointwise" and cfg.points.fill_holes == 0
    det = mafr.MAFRDetector(cfg).fit(_parts(seeds=range(3)), progress=False)
    assert det.fit_info_["steps"] == 2 * 3  # 2 epochs over all 3 parts at batch 1 (no hold-out)
    probe = generate_sample("dome", "hole", seed=5, size=64)
    res = det.predict(probe.rgb, probe.xyz)
    assert res.anomaly_map.shape == (64, 64) and np.isfinite(res.score)


def test_unreachable_pretrained_weights_give_a_helpful_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MAFR_POINTMAE_WEIGHTS", str(tmp_path / "nothing-here"))
    det = mafr.MAFRDetector(mafr.MAFRConfig(rgb={"kind": "offline"}))
    with pytest.raises(mafr.WeightsUnavailableError, match="mafr convert pointmae"):
        det.point_extractor


def test_rgb_weights_from_a_local_safetensors_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    from mafr.extractors import RGBExtractor

    kw = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    src = RGBExtractor("vit_base_patch8_224", "random", 64, kw, seed=7)
    save_file({k: v.contiguous() for k, v in src.vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    loaded = RGBExtractor("vit_base_patch8_224", str(tmp_path / "vit.safetensors"), 64, kw, seed=0)
    other = RGBExtractor("vit_base_patch8_224", "random", 64, kw, seed=0)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), src(x))
    assert not torch.allclose(other(x), src(x))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        RGBExtractor("vit_base_patch8_224", str(tmp_path / "missing_dir"), 64, kw)


def test_default_rgb_weights_offline_without_cache_explain_what_to_do(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import mafr\n"
        "d = mafr.MAFRDetector(mafr.MAFRConfig(points={'kind': 'fpfh'}))\n"
        "try:\n    d.rgb_extractor\nexcept mafr.WeightsUnavailableError as e:\n    print('OK', e)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("OK"), out.stderr[-2000:]
    assert "vit_base_patch8_224.dino" in out.stdout and "preset='offline'" in out.stdout


def test_resave_refreshes_card_and_metrics_round_trip(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "d")
    (tmp_path / "d" / "README.md").write_text("stale card")
    fitted.metrics_ = {"image_auroc": 0.97}
    try:
        fitted.save_pretrained(tmp_path / "d")
    finally:
        fitted.metrics_ = {}
    assert "stale" not in (tmp_path / "d" / "README.md").read_text()
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "d")
    assert again.metrics_ == {"image_auroc": 0.97}


def test_push_to_hub_refuses_unfitted_before_touching_the_hub(tiny):
    with pytest.raises(mafr.NotFittedError):
        mafr.MAFRDetector(tiny()).push_to_hub("acme/never-created")


def test_calibration_fraction_zero_uses_training_parts():
    det = mafr.MAFRDetector(tiny_config(train={"steps": 3, "calibration_fraction": 0.0}))
    det.fit(_parts(seeds=range(4)), progress=False)
    assert det.fit_info_["n_calibration"] == 0 and det.fit_info_["calibration_on_training_parts"]


def test_calibrate_sets_threshold_by_the_documented_rule(tmp_path):
    det = mafr.MAFRDetector(tiny_config(train={"steps": 3})).fit(_parts(seeds=range(4)), progress=False)
    det.threshold_ = float("inf")  # as a converted reference checkpoint arrives
    det.save_pretrained(tmp_path / "conv")
    assert "No threshold" in (tmp_path / "conv" / "README.md").read_text()
    good = _parts(seeds=range(300, 303))
    det.calibrate(good)
    scores = det.fit_info_["calibration_scores"]
    # The default rule: a log-normal's 1 - target quantile (docs/concepts.md, section 8).
    from statistics import NormalDist

    logs = np.log(scores)
    spread = max(np.std(logs, ddof=1), det.config.scoring.log_spread_floor)
    z = NormalDist().inv_cdf(1 - det.config.scoring.target_false_alarm_rate)
    assert det.threshold_ == pytest.approx(np.exp(np.mean(logs) + z * spread))
    # The 0.1 rule, still available: mean + 3 std, never below the largest score.
    det.config.scoring.threshold_rule = "sigma"
    det.calibrate(good)
    mean, std = np.mean(scores), max(np.std(scores), 0.1 * abs(np.mean(scores)))
    assert det.threshold_ == pytest.approx(max(mean + 3.0 * std, max(scores)))
    with pytest.raises(ValueError, match="at least one good sample"):
        det.calibrate([])
