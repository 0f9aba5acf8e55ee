"""Framing (mafr.framing and MAFRConfig.framing): the window the network sees around a part."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr import framing
from mafr.datasets import generate_sample
from mafr.errors import CorruptModelError

from .conftest import resave_without


def _mask(h, w, top, bottom, left, right):
    m = np.zeros((h, w), dtype=bool)
    m[top:bottom, left:right] = True
    return m


def test_image_framing_is_the_square_padded_image():
    assert framing.window(_mask(30, 50, 5, 9, 7, 20), None) == (0, 0, 50)


def test_part_window_is_centred_on_the_part_with_the_fitted_side():
    valid = _mask(100, 100, 40, 60, 20, 50)  # 20 x 30 part centred at (50, 35)
    top, left, side = framing.window(valid, 0.45)
    assert side == 45
    assert (top + side // 2, left + side // 2) == (50, 35)


def test_a_part_larger_than_the_fitted_window_widens_it():
    valid = _mask(100, 100, 10, 90, 10, 90)  # 80 px: the 0.45 window (45 px) cannot hold it
    top, left, side = framing.window(valid, 0.45)
    assert side == math.ceil(80 * (1 + framing.OWN_MARGIN))
    assert top <= 10 and top + side >= 90 and left <= 10 and left + side >= 90


def test_fit_side_is_the_largest_part_plus_the_margin():
    masks = [_mask(200, 100, 0, 40, 0, 30), _mask(200, 100, 0, 20, 0, 60)]
    assert framing.fit_side(masks) == pytest.approx(60 / 200 * (1 + framing.FIT_MARGIN))
    with pytest.raises(ValueError, match="no fit part"):
        framing.fit_side([np.zeros((10, 10), bool)])


def test_a_scan_that_fills_the_frame_is_shown_whole_not_inside_a_border():
    everything = np.ones((40, 40), bool)  # e.g. the background plane still measured
    side = framing.fit_side([everything])
    assert side == pytest.approx(1.1)
    assert framing.window(everything, side) == (0, 0, 40)


def test_no_valid_point_falls_back_to_the_whole_image():
    assert framing.window(np.zeros((20, 30), bool), 0.5) == (0, 0, 30)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(8, 60), w=st.integers(8, 60), data=st.data(), fraction=st.floats(0.05, 1.5),
)
def test_the_window_never_crops_a_valid_point_and_paste_undoes_crop(h, w, data, fraction):
    top = data.draw(st.integers(0, h - 1))
    bottom = data.draw(st.integers(top + 1, h))
    left = data.draw(st.integers(0, w - 1))
    right = data.draw(st.integers(left + 1, w))
    valid = _mask(h, w, top, bottom, left, right)
    win = framing.window(valid, fraction)
    y, x, side = win
    assert y <= top and y + side >= bottom and x <= left and x + side >= right
    assert side <= max(h, w)
    image = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    before = image.copy()
    cut = framing.crop(image, win)
    assert cut.shape == (side, side, 3)
    np.testing.assert_array_equal(image, before)  # the input is not modified
    back = framing.paste(np.moveaxis(cut, -1, 0), win, h, w)
    # Every input pixel inside the window comes back where it was; outside it, zero.
    inside = np.zeros((h, w), bool)
    inside[max(y, 0) : y + side, max(x, 0) : x + side] = True
    np.testing.assert_array_equal(np.moveaxis(back, 0, -1)[inside], image[inside])
    assert not back[:, ~inside].any()


def _shifted(sample, dy, dx):
    """The same part moved by (dy, dx) pixels on an otherwise identical background."""
    rgb = np.roll(sample.rgb, (dy, dx), axis=(0, 1))
    xyz = np.roll(sample.xyz, (dy, dx), axis=(0, 1))
    return rgb, xyz


@pytest.fixture(scope="module")
def framed():
    config = mafr.MAFRConfig(preset="offline", train={"steps": 20, "early_stop_patience": None})
    assert config.framing == "part"
    good = [generate_sample("puck", seed=s, size=160) for s in range(5)]
    return mafr.MAFRDetector(config).fit(good, seed=0, progress=False), good


def test_framed_detector_sets_the_side_from_its_fit_parts(framed):
    det, good = framed
    expected = framing.fit_side([np.any(s.xyz != 0, axis=-1) for s in good])
    assert det.framing_.side == pytest.approx(expected) and det.framing_.axis is None  # align="none"
    assert 0.2 < det.framing_.side < 1.0  # the part fills part of the frame: the window zooms in


def test_framed_scores_follow_the_part_not_its_place_in_the_image(framed):
    det, _ = framed
    part = generate_sample("puck", seed=11, size=160, defect="bump")
    ys, xs = np.nonzero(np.any(part.xyz != 0, axis=-1))
    assert ys.min() > 8 and xs.max() < 160 - 8  # room to move without leaving the frame
    here = det.predict(part.rgb, part.xyz)
    moved = det.predict(*_shifted(part, 6, -5))
    # The window moves with the part, so the network sees the same pixels (only the background
    # that enters at the rolled border differs, and it lies outside the window).
    assert moved.score == pytest.approx(here.score, rel=1e-5)
    np.testing.assert_allclose(np.roll(here.anomaly_map, (6, -5), axis=(0, 1)), moved.anomaly_map, atol=1e-5)
    assert here.anomaly_map.shape == part.rgb.shape[:2]


def test_image_framing_keeps_the_whole_image(framed):
    _, good = framed
    config = mafr.MAFRConfig(preset="offline", framing="image", train={"steps": 5, "early_stop_patience": None})
    det = mafr.MAFRDetector(config).fit(good[:3], seed=0, progress=False)
    assert det.framing_.side is None and "framing.side" not in det.state_tensors()


def test_framing_is_saved_and_a_missing_side_is_a_corrupt_detector(framed, tmp_path):
    det, _ = framed
    part = generate_sample("puck", seed=12, size=160)
    det.save_pretrained(tmp_path / "d")
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "d")
    assert again.framing_ == det.framing_
    assert f"side {det.framing_.side:.3f} x the image's longer side" in (tmp_path / "d" / "README.md").read_text()
    assert again.predict(part.rgb, part.xyz).score == pytest.approx(det.predict(part.rgb, part.xyz).score, rel=1e-6)

    # A consistent but wrong save (checksum re-recorded): the framing check must catch it.
    resave_without(tmp_path / "d", "framing.side")
    with pytest.raises(CorruptModelError, match="framing.side"):
        mafr.MAFRDetector.from_pretrained(tmp_path / "d")


def test_configs_saved_before_framing_load_with_the_whole_image():
    saved = mafr.MAFRConfig(preset="offline").to_json_dict()
    del saved["framing"]
    det = mafr.MAFRDetector(saved)
    assert det.config.framing == "image"
    # A plain dict naming a preset is not a saved config: it gets the preset's framing.
    assert mafr.MAFRDetector({"preset": "offline"}).config.framing == "part"
