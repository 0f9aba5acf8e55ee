"""Implanted defects (mafr.datasets.implant) and what a detector can see (det.check, mafr check)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr import detectability
from mafr.cli import main
from mafr.cli.info import _info_text, describe_detector
from mafr.datasets import write_dataset
from mafr.datasets.implant import KINDS, implant_defect, part_pixels
from mafr.datasets.synthetic import generate_sample

from .conftest import tiny_config


def _parts(seeds, size=64, background="none"):
    return [generate_sample("puck", seed=s, size=size, background=background) for s in seeds]


@pytest.fixture(scope="module")
def fitted():
    return mafr.MAFRDetector(tiny_config()).fit(_parts(range(6)), seed=0, progress=False)


# ----------------------------------------------------------------------------- implants


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_part_where_its_mask_says_and_nothing_passed_in(kind):
    s = generate_sample("puck", seed=1, size=160, background="plane")  # a raw scan: table measured
    rgb, xyz = s.rgb.copy(), s.xyz.copy()
    d = implant_defect(s.rgb, s.xyz, kind, seed=4)
    np.testing.assert_array_equal(s.rgb, rgb)
    np.testing.assert_array_equal(s.xyz, xyz)
    assert d.kind == kind and d.unit == "mm" and d.mask.any()
    assert d.rgb.dtype == np.uint8 and d.xyz.dtype == np.float32 and d.xyz.shape == xyz.shape
    changed = (d.rgb != rgb).any(-1) | (d.xyz != xyz).any(-1)
    assert changed.any()
    # Nothing changes far from the defect (a 2 px rim around the mask is where blending ends).
    near = np.zeros_like(d.mask)
    rows, cols = np.nonzero(d.mask)
    near[max(rows.min() - 3, 0):rows.max() + 4, max(cols.min() - 3, 0):cols.max() + 4] = True
    assert not (changed & ~near).any()
    # On the part, never on the table: the support is set aside before a place is drawn.
    support = np.abs(xyz[..., 2] - np.median(xyz[:5, :, 2])) < 5e-4
    assert not (d.mask & support).any()


def test_sizes_are_millimetres_on_the_surface():
    s = generate_sample("puck", seed=2, size=300)
    small = implant_defect(s.rgb, s.xyz, "stain", size=4.0, seed=0).mask.sum()
    large = implant_defect(s.rgb, s.xyz, "stain", size=8.0, seed=0).mask.sum()
    assert large == pytest.approx(4 * small, rel=0.2)  # area goes with the radius squared
    r, c = np.argwhere(implant_defect(s.rgb, s.xyz, "stain", size=8.0, seed=0).mask).mean(0).astype(int)
    pitch_mm = 1000 * np.linalg.norm(s.xyz[r, c + 1] - s.xyz[r, c])
    assert large == pytest.approx(np.pi * (8.0 / pitch_mm) ** 2, rel=0.2)


def test_bumps_and_dents_move_the_surface_along_the_ray_by_half_a_millimetre():
    s = generate_sample("puck", seed=3, size=160)
    for kind, sign in (("bump", -1), ("dent", 1)):
        d = implant_defect(s.rgb, s.xyz, kind, seed=1)
        dz = d.xyz[..., 2] - s.xyz[..., 2]
        assert sign * dz.max(initial=0) * sign <= 0.0005 + 1e-6 and abs(dz).max() == pytest.approx(0.0005, rel=0.05)
        assert np.sign(dz[d.mask]).max() == np.sign(dz[d.mask]).min() == sign
        np.testing.assert_array_equal(d.rgb, s.rgb)  # colour untouched


def test_image_only_parts_take_pixel_sizes_and_refuse_shape_kinds():
    s = generate_sample("puck", seed=3, size=96)
    d = implant_defect(s.rgb, None, "patch", seed=0)
    assert d.unit == "px" and d.xyz is None and d.mask.sum() == pytest.approx(np.pi * 16**2, rel=0.2)
    with pytest.raises(ValueError, match="no xyz"):
        implant_defect(s.rgb, None, "bump")
    with pytest.raises(ValueError, match="kind must be one of"):
        implant_defect(s.rgb, s.xyz, "crack")
    with pytest.raises(ValueError, match="too small"):
        implant_defect(s.rgb[:10, :10], s.xyz[:10, :10], "stain")


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31), size=st.floats(0.3, 4.0))
def test_implants_are_seeded_and_stay_valid_for_any_size(kind, seed, size):
    s = generate_sample("disc", seed=seed % 5, size=96)
    a = implant_defect(s.rgb, s.xyz, kind, size=size, seed=seed)
    b = implant_defect(s.rgb, s.xyz, kind, size=size, seed=seed, part=part_pixels(s.rgb, s.xyz))
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    assert np.isfinite(a.xyz).all() and a.mask.shape == s.rgb.shape[:2]
    assert not (a.mask & ~(s.xyz != 0).any(-1)).any()  # on the measured part only


# ----------------------------------------------------------------------------- det.check


def test_check_reports_every_kind_its_modalities_show(fitted):
    report = fitted.check(_parts(range(20, 24)), seed=0)
    assert isinstance(report, mafr.DetectabilityReport)
    assert [t.kind for t in report.per_type] == ["stain", "scratch", "bump", "dent", "hole"]  # patch: when asked
    assert report.n_good == 4 and all(t.n == 4 and t.unit == "mm" for t in report.per_type)
    assert 0.0 <= report.auroc <= 1.0 and report.blind == (report.auroc < 0.70)
    assert all(t.recall is None or 0 <= t.recall <= 1 for t in report.per_type)
    assert report.false_alarm_rate is not None
    assert "overall AUROC" in report.table() and json.dumps(report.summary())
    again = fitted.check(_parts(range(20, 24)), seed=0)
    assert again == report  # seeded


def test_check_takes_parts_whose_scan_is_a_point_cloud(fitted):
    """As predict does: the cloud is projected onto the part's own image (once, not read twice)."""
    from mafr.datasets.synthetic import camera_intrinsics

    parts = _parts(range(20, 23))
    clouds = [mafr.Sample(rgb=s.rgb, xyz=mafr.PointCloud(points=s.xyz[(s.xyz != 0).any(-1)],
                                                         intrinsics=camera_intrinsics(s.rgb.shape[0])))
              for s in parts]
    report = fitted.check(clouds, seed=0)
    assert report.n_good == 3 and {t.unit for t in report.per_type} == {"mm"}
    assert [t.kind for t in report.per_type] == ["stain", "scratch", "bump", "dent", "hole"]


def test_check_of_an_image_detector_uses_image_kinds_in_millimetres_when_it_can():
    det = mafr.MAFRDetector(tiny_config(modalities="rgb")).fit(_parts(range(4)), seed=0, progress=False)
    report = det.check(_parts(range(20, 23)))
    assert [t.kind for t in report.per_type] == ["stain", "scratch", "hole"]
    assert {t.unit for t in report.per_type} == {"mm"}  # the parts had xyz: sizes in millimetres
    report = det.check([s.rgb for s in _parts(range(20, 23))])
    assert {t.unit for t in report.per_type} == {"px"}
    mixed = _parts(range(20, 23))
    report = det.check([mixed[0], mixed[1].rgb, mixed[2]])  # one part without a scan: pixels for all
    assert {t.unit for t in report.per_type} == {"px"} and [t.size for t in report.per_type] == [10.0, 40.0, 8.0]


def test_a_detector_whose_scores_ignore_the_part_is_blind(fitted, monkeypatch):
    real = fitted.predict_batch

    def constant(samples, **kw):
        return [r.model_copy(update={"score": 1.0, "is_anomalous": False}) for r in real(samples, **kw)]

    monkeypatch.setattr(fitted, "predict_batch", constant)
    report = fitted.check(_parts(range(30, 33)), kinds=["stain", "hole"])
    assert report.auroc == 0.5 and report.blind and all(t.recall == 0.0 for t in report.per_type)
    assert "BLIND" in report.table()


def test_check_refuses_kinds_it_cannot_show_or_was_not_asked_for(fitted):
    parts = _parts(range(20, 22))
    with pytest.raises(mafr.InvalidInputError, match="non-empty selection"):
        fitted.check(parts, kinds=["crack"])
    with pytest.raises(mafr.InvalidInputError, match="not checked"):
        fitted.check(parts, kinds=["stain"], sizes={"hole": [1.0]})
    rgb_only = mafr.MAFRDetector(tiny_config(modalities="rgb")).fit(_parts(range(4)), seed=0, progress=False)
    with pytest.raises(mafr.InvalidInputError, match="by construction"):
        rgb_only.check(parts, kinds=["stain", "bump"])


def test_a_part_with_no_room_for_a_defect_is_named(fitted, monkeypatch):
    def no_room(*a, **kw):
        raise ValueError("no pixel has part all around it")

    monkeypatch.setattr(detectability, "implant_defect", no_room)
    with pytest.raises(mafr.InvalidInputError, match=r"good part 1 of 2 \(puck/good/20\): no pixel"):
        fitted.check(_parts(range(20, 22)), kinds=["stain"])


def test_check_needs_two_good_parts_and_a_fitted_detector(fitted):
    with pytest.raises(ValueError, match="at least 2 good parts"):
        fitted.check(_parts([40]))
    with pytest.raises(mafr.NotFittedError):
        mafr.MAFRDetector(tiny_config()).check(_parts(range(2)))


def test_fit_checks_its_held_out_parts_and_a_blind_fit_warns_and_flags(monkeypatch, tmp_path):
    parts = _parts(range(10))  # 2 held out: enough for the check
    det = mafr.MAFRDetector(tiny_config()).fit(parts, seed=0, progress=False)
    d = det.fit_info_["detectability"]
    assert d["n_good"] == 2 and len(d["per_type"]) == len(KINDS) - 1
    info = det.fit_info_
    assert info["check_seconds"] > 0 and info["extract_seconds"] >= 0
    assert info["fit_seconds"] == pytest.approx(info["train_seconds"] + info["check_seconds"] + info["extract_seconds"], abs=0.01)
    card = str(det.generate_model_card())
    assert "## What it can see" in card and f"{d['auroc']:.3f}" in card
    det.save_pretrained(tmp_path / "det10")
    assert f"overall AUROC {d['auroc']:.3f} on 2 held-out parts" in _info_text(describe_detector(tmp_path / "det10"))
    few = mafr.MAFRDetector(tiny_config()).fit(parts[:6], seed=0, progress=False)
    assert few.fit_info_["detectability"] is None and "Not measured at fit" in str(few.generate_model_card())

    real_check = detectability.check

    def blind_check(*a, **kw):
        return real_check(*a, **kw).model_copy(update={"auroc": 0.55, "blind": True})

    monkeypatch.setattr(detectability, "check", blind_check)
    with pytest.warns(mafr.BlindDetectorWarning, match="blind"):
        blind = mafr.MAFRDetector(tiny_config()).fit(parts, seed=0, progress=False)
    assert "blind_detector" in blind.predict(*(lambda s: (s.rgb, s.xyz))(_parts([50])[0])).flags
    # The unpatched detector is flagged exactly when its own check found it blind.
    assert ("blind_detector" in det.predict(*(lambda s: (s.rgb, s.xyz))(_parts([50])[0])).flags) == d["blind"]


def test_cli_check_prints_the_table_and_exits_4_when_blind(tmp_path, capsys, monkeypatch):
    root = write_dataset(tmp_path / "data", categories=["puck"], n_train=4, n_validation=3, n_test_good=0,
                         n_test_per_defect=0, size=64)
    det = mafr.MAFRDetector(tiny_config()).fit(_parts(range(4)), seed=0, progress=False)
    det.save_pretrained(tmp_path / "det")
    good = root / "puck" / "validation" / "good"
    assert main(["info", str(tmp_path / "det")]) == 0
    assert "detectability  not measured at fit" in capsys.readouterr().out  # 4 parts: 1 held out
    code = main(["check", str(tmp_path / "det"), str(good), "--quiet", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == (4 if data["blind"] else 0) and data["n_good"] == 3
    assert [t["kind"] for t in data["per_type"]] == ["stain", "scratch", "bump", "dent", "hole"]
    main(["check", str(tmp_path / "det"), str(good), "--quiet", "--kinds", "hole", "patch"])
    out = capsys.readouterr().out
    assert "hole" in out and "patch" in out and "stain" not in out and "overall AUROC" in out
    real_check = detectability.check
    monkeypatch.setattr(detectability, "check",
                        lambda *a, **kw: real_check(*a, **kw).model_copy(update={"auroc": 0.5, "blind": True}))
    assert main(["check", str(tmp_path / "det"), str(good), "--quiet"]) == 4
    monkeypatch.setattr(detectability, "check",
                        lambda *a, **kw: real_check(*a, **kw).model_copy(update={"auroc": 0.9, "blind": False}))
    assert main(["check", str(tmp_path / "det"), str(good), "--quiet"]) == 0


def test_update_checks_its_new_held_out_parts_or_keeps_the_fits_report():
    det = mafr.MAFRDetector(tiny_config()).fit(_parts(range(10)), seed=0, progress=False)
    assert det.fit_info_["detectability"]["after"] == "fit"
    det.update(_parts(range(60, 64)), seed=0)  # 1 new part held out: too few to check
    assert det.fit_info_["detectability"]["after"] == "fit"
    det.update(_parts(range(70, 80)), seed=0)  # 2 held out: checked again
    d = det.fit_info_["detectability"]
    assert d["after"] == "update" and d["n_good"] == 2
    assert ("blind_detector" in det.predict(*(lambda s: (s.rgb, s.xyz))(_parts([90])[0])).flags) == d["blind"]
