"""The measured support of raw scans (mafr.support), preprocessing's tolerance, and the detector
setting the support aside itself (issue: raw scans, thin parts)."""

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr.datasets import generate_sample, preprocess_sample
from mafr.datasets.preprocess import remove_background_plane
from mafr.io import measured_pixels
from mafr.support import find_support, set_aside_support


def _raw(category="plate", seed=0, thickness=None, defect=None, size=160):
    return generate_sample(category, defect, seed=seed, size=size, background="plane", thickness=thickness,
                           return_layers=True)


@pytest.mark.parametrize("thickness", [0.001, 0.002, 0.005])
def test_preprocessing_keeps_thin_parts_and_removes_the_table(thickness):
    for seed in range(2):
        sample, layers = _raw("plate", seed, thickness, size=200)
        part = layers["part"] & measured_pixels(sample.xyz)
        table = ~layers["part"] & measured_pixels(sample.xyz)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to warn about
            _, xyz = preprocess_sample(sample.rgb, sample.xyz, seed=0)
        kept = measured_pixels(xyz)  # 200 x 200: no padding
        assert (kept & part).sum() >= 0.95 * part.sum()
        assert (kept & table).sum() <= 0.001 * table.sum()


def test_the_reference_fixed_tolerance_warns_when_it_takes_the_part():
    sample, _ = _raw("plate", 0, 0.002, size=200)
    with pytest.warns(mafr.PartRemovedWarning, match=r"keeps 0\.0% of the measured pixels.*about 2\.\d mm high"):
        out = remove_background_plane(sample.xyz, remove_distance=0.005)
    assert not measured_pixels(out).any()


def test_support_report_numbers_and_input_untouched():
    sample, layers = _raw("puck", 1, 0.002)
    before = sample.xyz.copy()
    out, report = set_aside_support(sample.xyz)
    np.testing.assert_array_equal(sample.xyz, before)
    assert report.status == "removed"
    assert 0 < report.noise < 0.001 and report.noise < report.tolerance < 0.002
    assert report.part_height == pytest.approx(0.002, abs=0.0006)
    kept = measured_pixels(out)
    assert report.kept_share == pytest.approx(kept.sum() / measured_pixels(sample.xyz).sum())
    assert "mm" in report.describe()


def test_a_scan_without_a_measured_border_is_left_as_it_is():
    sample = generate_sample("puck", seed=0, size=96)  # the table already removed
    out, report = set_aside_support(sample.xyz)
    assert report.status == "none" and out is sample.xyz


def test_a_border_without_a_plane_or_a_part_is_unclear():
    rng = np.random.default_rng(0)
    h = w = 96
    v, u = np.mgrid[0:h, 0:w]
    rough = np.stack([(u - 48) * 1e-3, (v - 48) * 1e-3, 0.5 + rng.uniform(0, 0.03, (h, w))], -1).astype(np.float32)
    report, mask = find_support(rough)
    assert report.status == "unclear" and mask is None and "no plane" in report.reason
    flat = rough.copy()
    flat[..., 2] = 0.5
    report, mask = find_support(flat)
    assert report.status == "unclear" and mask is None and "nothing stands above" in report.reason


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 40), st.integers(8, 40), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_find_support_on_any_scan_marks_only_measured_pixels(h, w, missing, seed):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0, 0.01, (h, w, 3)).astype(np.float32)
    xyz[..., 2] += 0.5
    xyz[rng.random((h, w)) < missing] = 0
    report, mask = find_support(xyz, seed=seed % 7)
    assert report.status in {"none", "removed", "unclear"}
    assert (mask is None) == (report.status != "removed")
    if mask is not None:
        assert not (mask & ~measured_pixels(xyz)).any()
        assert math.isfinite(report.tolerance) and report.tolerance > 0


def _fit(parts, **config):
    # A short fit: these tests are about what reaches the network, not how well it learns.
    det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", train={"steps": 30}, **config), device="cpu")
    return det.fit(parts, seed=0, progress=False)


def test_the_detector_sets_the_support_aside_itself():
    size = 128
    raw = [generate_sample("puck", seed=s, size=size, background="plane") for s in range(4)]
    clean = [generate_sample("puck", seed=s, size=size) for s in range(4)]
    on_raw, on_clean = _fit(raw), _fit(clean)
    test_seeds = [(None, 50), ("hole", 51), ("crack", 52)]
    for kind, seed in test_seeds:
        r = generate_sample("puck", kind, seed=seed, size=size, background="plane")
        c = generate_sample("puck", kind, seed=seed, size=size)
        a, b = on_raw.predict(r.rgb, r.xyz), on_clean.predict(c.rgb, c.xyz)
        # The same part raw or preprocessed: the same pixels reach the network, the same judgement.
        assert a.flags == () and a.is_anomalous == b.is_anomalous
        assert a.score == pytest.approx(b.score, rel=1e-4) and a.threshold == pytest.approx(b.threshold, rel=1e-4)
        # Only the part is judged: the table's pixels are no longer measured input.
        assert a.valid_mask.mean() < 0.5
    # Kept as given, the table fills the frame.
    keep = _fit(raw, support="keep")
    r = generate_sample("puck", seed=50, size=size, background="plane")
    assert keep.predict(r.rgb, r.xyz).valid_mask.mean() > 0.9


def test_a_part_that_cannot_be_told_from_its_support_is_flagged(tmp_path):
    size = 96
    det = _fit([generate_sample("puck", seed=s, size=size, background="plane") for s in range(4)])
    table_only = generate_sample("puck", seed=9, size=size, background="plane", thickness=0.0001)
    with pytest.warns(mafr.DegenerateInputWarning, match="cannot tell the part from its support"):
        res = det.predict(table_only.rgb, table_only.xyz)
    assert "support_unclear" in res.flags and res.is_anomalous is not None


def test_saved_configs_without_the_field_keep_the_support(tmp_path):
    det = _fit([generate_sample("puck", seed=s, size=64) for s in range(3)])
    det.save_pretrained(tmp_path / "d")
    assert mafr.MAFRDetector.from_pretrained(tmp_path / "d").config.support == "auto"
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    del cfg["support"]
    from mafr.persistence import decode_config as _decode_config

    assert _decode_config(cfg).support == "keep"
    assert mafr.MAFRConfig(preset="offline").support == "auto"


def test_no_threshold_means_no_decision():
    det = _fit([generate_sample("puck", seed=s, size=64) for s in range(3)])
    det.threshold_ = math.inf
    part = generate_sample("puck", "hole", seed=7, size=64)
    res = det.predict(part.rgb, part.xyz)
    assert res.is_anomalous is None and res.defect_mask is None and "no_threshold" in res.flags
    assert res.summary()["is_anomalous"] is None
    assert res.to_panel().size[0] > 0


# ----------------------------------------------------------------------------- one modality
@pytest.mark.parametrize("modalities", ["rgb", "xyz"])
def test_one_modality_fits_predicts_and_round_trips(tmp_path, modalities):
    size = 96
    good = [generate_sample("puck", seed=s, size=size) for s in range(4)]
    parts = [g.rgb if modalities == "rgb" else g.xyz for g in good]  # that modality alone
    det = _fit(parts, modalities=modalities)
    stain, bump = generate_sample("puck", "stain", seed=30, size=size), generate_sample("puck", "bump", seed=31, size=size)
    part = stain if modalities == "rgb" else bump
    res = det.predict(part.rgb) if modalities == "rgb" else det.predict(xyz=part.xyz)
    assert res.is_anomalous is not None and math.isfinite(res.score)
    absent = res.map_3d if modalities == "rgb" else res.map_2d
    assert not absent.any()  # the absent modality is no evidence
    if modalities == "rgb":
        assert res.valid_mask.all() and res.depth is None
        # The point extractor is never built: the paper preset would have to fetch PointMAE.
        assert det.extractors.point_module is None
    else:
        assert det.extractors.rgb_module is None and res.rgb.shape == part.rgb.shape
    det.save_pretrained(tmp_path / "d")
    back = mafr.MAFRDetector.from_pretrained(tmp_path / "d")
    assert back.config.modalities == modalities
    again = back.predict(part.rgb) if modalities == "rgb" else back.predict(xyz=part.xyz)
    assert again.score == pytest.approx(res.score, rel=1e-5)


def test_a_detector_says_which_modality_it_was_not_given():
    good = [generate_sample("puck", seed=s, size=64) for s in range(3)]
    both = _fit(good)
    with pytest.raises(mafr.InvalidInputError, match=r"modalities='rgb\+xyz' and needs xyz.*modalities='rgb'"):
        both.predict(good[0].rgb)
    rgb_only = _fit([g.rgb for g in good], modalities="rgb")
    res = rgb_only.predict(good[0].rgb, good[0].xyz)  # a scan given anyway is not read
    assert res.map_3d.max() == 0
    xyz_only = _fit([g.xyz for g in good], modalities="xyz")
    with pytest.raises(mafr.InvalidInputError, match="needs xyz"):
        xyz_only.predict(good[0].rgb)
    with pytest.raises(mafr.InvalidInputError, match="PointCloud is projected onto an image"):
        xyz_only.predict(xyz=mafr.PointCloud(points=np.ones((10, 3)), intrinsics=np.eye(3)))


def test_the_cli_fits_and_predicts_on_images_alone(tmp_path, capsys):
    from PIL import Image

    from mafr.cli import main

    good, test = tmp_path / "good", tmp_path / "test"
    for folder, seeds in ((good, range(4)), (test, [40])):
        folder.mkdir()
        for s in seeds:
            Image.fromarray(generate_sample("puck", seed=s, size=64).rgb).save(folder / f"{s:03d}.png")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(mafr.MAFRConfig(preset="offline", train={"steps": 30}).to_json_dict()))
    assert main(["fit", str(good), str(tmp_path / "det"), "--config", str(cfg), "--modalities", "rgb", "--quiet"]) == 0
    assert mafr.MAFRDetector.from_pretrained(tmp_path / "det").config.modalities == "rgb"
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "det"), str(test / "040.png")]) in (0, 1)
    line = json.loads(capsys.readouterr().out)
    assert line["xyz"] is None and isinstance(line["is_anomalous"], bool)


@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("modalities", ["rgb", "xyz"])
def test_one_modality_on_the_pretrained_presets(tiny, preset, modalities):
    """Random-weight tiny versions of the paper and reference presets: the absent extractor is
    never built (no weights fetched), and the result scores the present modality alone."""
    good = [generate_sample("puck", seed=s, size=64) for s in range(3)]
    cfg = tiny(preset=preset, modalities=modalities, train={"steps": 5, "epochs": None})
    det = mafr.MAFRDetector(cfg, device="cpu").fit([g.rgb if modalities == "rgb" else g.xyz for g in good],
                                                   seed=0, progress=False)
    part = generate_sample("puck", "hole", seed=9, size=64)
    res = det.predict(part.rgb) if modalities == "rgb" else det.predict(xyz=part.xyz)
    assert math.isfinite(res.score)
    assert (det.extractors.point_module is None) if modalities == "rgb" else (det.extractors.rgb_module is None)
    assert not (res.map_3d if modalities == "rgb" else res.map_2d).any()
