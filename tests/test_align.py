"""Turning parts to a common axis before framing (``MAFRConfig.align``, mafr.framing)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr import framing, preparation, results
from mafr.datasets.synthetic import camera_intrinsics, generate_sample
from mafr.errors import CorruptModelError

from .conftest import resave_without, tiny_config


def _bar(degrees, length=60, width=12, size=128):
    """A filled ``length`` x ``width`` bar whose long axis lies ``degrees`` counter-clockwise
    from the rows as the image is shown (rows grow downwards)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    x, y = cols - size / 2, size / 2 - rows
    t = math.radians(degrees)
    along, across = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def _disc(size=128, radius=30):
    rows, cols = np.mgrid[0:size, 0:size]
    return (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= radius**2


@settings(max_examples=30, deadline=None)
@given(st.floats(-89.0, 89.0))
def test_the_long_axis_is_found_counter_clockwise_as_shown(degrees):
    angle, elongation, row, col = framing.long_axis(_bar(degrees))
    assert abs(((angle - degrees) + 90) % 180 - 90) < 1.5
    assert 4.0 < elongation < 6.0  # a 60 x 12 bar: its extents' ratio
    assert abs(row - 64) < 1 and abs(col - 64) < 1


def test_too_few_pixels_have_no_axis_and_round_parts_no_fitted_axis():
    tiny = np.zeros((20, 20), dtype=bool)
    tiny[5:8, 5:9] = True
    assert framing.long_axis(tiny) is None
    assert framing.long_axis(_disc())[1] < 1.05
    assert framing.fit_axis([_disc(), _disc(radius=25)]) is None
    # One part without a clear long axis is enough: turning it would follow noise.
    assert framing.fit_axis([_bar(5), _disc(), _bar(-3)]) is None
    assert framing.fit_axis([]) is None


def test_the_fitted_axis_averages_lines_not_angles():
    assert framing.fit_axis([_bar(10), _bar(-6)]) == pytest.approx(2.0, abs=1.0)
    # 88 and -88 degrees are lines 4 degrees apart (about the columns), not 176.
    axis = framing.fit_axis([_bar(88), _bar(-88)])
    assert abs(((axis - 90) + 90) % 180 - 90) < 1.0


@pytest.mark.parametrize("own, axis", [(17.0, 0.0), (-12.0, 3.0), (85.0, -85.0), (-80.0, 80.0)])
def test_a_part_is_turned_the_short_way_onto_the_axis(own, axis):
    rgb = np.zeros((128, 128, 3), dtype=np.uint8)
    valid = _bar(own)
    rgb[valid] = 200
    xyz = np.where(valid[..., None], np.array([0.01, 0.02, 0.4], dtype=np.float32), 0).astype(np.float32)
    turn = framing.turn_for(valid, axis)
    assert abs(turn.degrees) < 90 and abs(turn.degrees) == pytest.approx(abs(((axis - own) + 90) % 180 - 90), abs=1.0)
    win, new_rgb, new_xyz = framing.turned_window(rgb, xyz, valid, turn, None)
    assert win == (0, 0, 128)  # the whole image, as it is framed without a window
    now = framing.long_axis((new_xyz != 0).any(axis=-1))[0]
    assert abs(((now - axis) + 90) % 180 - 90) < 1.5
    assert abs(((framing.long_axis(new_rgb[..., 0] > 100)[0] - axis) + 90) % 180 - 90) < 1.5  # colour moved with it


def _projection_error(rgb_size, xyz):
    """Largest distance (px) between each measured pixel and where the generator's camera projects its point."""
    k = camera_intrinsics(rgb_size)
    rows, cols = np.nonzero((xyz != 0).any(axis=-1))
    p = xyz[rows, cols].astype(np.float64)
    u, v = k[0, 0] * p[:, 0] / p[:, 2] + k[0, 2], k[1, 1] * p[:, 1] / p[:, 2] + k[1, 2]
    return float(max(np.abs(u - cols).max(), np.abs(v - rows).max()))


@pytest.mark.parametrize("degrees", [17.0, -30.0])
def test_turned_points_stay_on_their_pixels_rays(degrees):
    """A part turned as on a turntable: every point still lies (within the nearest-neighbour
    resampling's pixel) on the ray of the pixel it moved to. Turning the geometry the other
    way, or not at all, puts the cylinder's ends tens of pixels from their rays."""
    part = generate_sample("cylinder", seed=4, size=160)
    valid = (part.xyz != 0).any(axis=-1)
    own = _projection_error(160, part.xyz)
    turn = framing.Turn(degrees, *framing.long_axis(valid)[2:])
    before = (part.rgb.copy(), part.xyz.copy())
    _, _, xyz = framing.turned_window(part.rgb, part.xyz, valid, turn, None)
    assert np.array_equal(part.rgb, before[0]) and np.array_equal(part.xyz, before[1])  # inputs left alone
    assert _projection_error(160, xyz) <= own + 1.0
    wrong_way = xyz.copy()
    measured = (wrong_way != 0).any(axis=-1)
    centre = part.xyz[valid, :2].mean(axis=0)
    d = wrong_way[measured, :2] - centre
    t = math.radians(2 * degrees)  # undo the turn and turn the other way
    wrong_way[measured, 0] = centre[0] + math.cos(t) * d[:, 0] - math.sin(t) * d[:, 1]
    wrong_way[measured, 1] = centre[1] + math.sin(t) * d[:, 0] + math.cos(t) * d[:, 1]
    assert _projection_error(160, wrong_way) > own + 5.0


def _cylinder_detector(**overrides):
    config = tiny_config(align="axis", framing="part", **overrides)
    good = [generate_sample("cylinder", seed=s, size=96) for s in range(4)]
    return mafr.MAFRDetector(config).fit(good, seed=0, progress=False)


@pytest.fixture(scope="module")
def aligned():
    return _cylinder_detector()


def test_a_fit_on_elongated_parts_sets_their_axis_and_turns_each_part(aligned):
    assert aligned.framing_.axis is not None and aligned.framing_.side is not None
    part = generate_sample("cylinder", seed=9, size=96)
    prep = preparation.prepare(part, aligned.config, aligned.device, aligned.framing_)
    own = framing.long_axis((part.xyz != 0).any(axis=-1))[0]
    assert prep.turn is not None
    assert prep.turn.degrees == pytest.approx(((aligned.framing_.axis - own) + 90) % 180 - 90)


def test_maps_come_back_in_the_input_pixels(aligned):
    """The network sees the turned part; every map of a result lies over the part as the input
    shows it. Turned back the wrong way (or not at all), the part's own outline would miss it."""
    part = generate_sample("cylinder", seed=9, size=96)
    prep = preparation.prepare(part, aligned.config, aligned.device, aligned.framing_)
    assert abs(prep.turn.degrees) > 3  # the check below could not tell a turn from none otherwise
    back = results.to_input_resolution(prep.valid.float()[None], prep)[0] > 0.5
    truth = (part.xyz != 0).any(axis=-1)
    assert (back & truth).sum() / (back | truth).sum() > 0.85
    unturned = results.to_input_resolution(prep.valid.float()[None], preparation.Prepared(
        prep.image, prep.xyz, prep.valid, prep.height, prep.width, prep.rgb, prep.depth, prep.valid_input,
        prep.flags, prep.window, prep.framing, framing.Turn(-prep.turn.degrees, prep.turn.row, prep.turn.col)))[0] > 0.5
    assert (unturned & truth).sum() / (unturned | truth).sum() < 0.85
    result = aligned.predict(part.rgb, part.xyz)
    assert result.anomaly_map.shape == part.rgb.shape[:2] and np.array_equal(result.valid_mask, truth)
    assert np.array_equal(result.rgb, part.rgb)


def test_round_parts_and_images_alone_are_never_turned():
    config = tiny_config(align="axis", framing="part")
    pucks = [generate_sample("puck", seed=s, size=96) for s in range(3)]
    assert preparation.fit_window(pucks, config).axis is None
    cylinders = [generate_sample("cylinder", seed=s, size=96) for s in range(3)]
    assert preparation.fit_window(cylinders, tiny_config(align="axis", modalities="rgb")).axis is None
    assert preparation.fit_window(cylinders, tiny_config(align="none", framing="part")).axis is None


def test_the_axis_is_saved_and_a_missing_one_is_a_corrupt_detector(aligned, tmp_path):
    part = generate_sample("cylinder", seed=9, size=96)
    aligned.save_pretrained(tmp_path / "d")
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "d")
    assert again.framing_ == aligned.framing_
    assert "turned so its long axis lies at" in (tmp_path / "d" / "README.md").read_text()
    assert again.predict(part.rgb, part.xyz).score == pytest.approx(aligned.predict(part.rgb, part.xyz).score, rel=1e-6)

    resave_without(tmp_path / "d", "framing.axis")
    with pytest.raises(CorruptModelError, match="framing.axis"):
        mafr.MAFRDetector.from_pretrained(tmp_path / "d")


def test_a_fit_without_a_clear_axis_saves_that_it_has_none(tmp_path):
    config = tiny_config(align="axis", train={"steps": 5})
    det = mafr.MAFRDetector(config).fit([generate_sample("puck", seed=s, size=96) for s in range(3)], progress=False)
    assert det.framing_.axis is None and det.state_tensors()["framing.axis"].numel() == 0
    det.save_pretrained(tmp_path / "d")
    assert mafr.MAFRDetector.from_pretrained(tmp_path / "d").framing_.axis is None


def test_configs_saved_before_align_load_judging_parts_as_they_lie():
    saved = mafr.MAFRConfig(preset="offline").to_json_dict()
    del saved["align"]
    assert mafr.MAFRDetector(saved).config.align == "none"
    with pytest.raises(Exception, match="align"):
        mafr.MAFRConfig(align="sideways")


def test_a_zero_turn_frames_and_maps_back_as_a_part_that_lies_still():
    """The turned path's pixel conventions are those of the plain one: with no turn, the same
    window, colour, geometry and maps (so a turn changes what it should and nothing else)."""
    part = generate_sample("cylinder", seed=2, size=120, background="plane")
    valid = (part.xyz != 0).any(axis=-1) & (part.xyz[..., 2] < np.percentile(part.xyz[..., 2], 30))
    xyz = np.where(valid[..., None], part.xyz, 0).astype(np.float32)
    still = framing.Turn(0.0, *framing.long_axis(valid)[2:])
    for side in (0.8, 1.0):  # a window inside the image, and one that leaves it (black there)
        win, rgb, got = framing.turned_window(part.rgb, xyz, valid, still, side)
        assert win == framing.window(valid, side)
        assert np.array_equal(rgb, framing.crop(part.rgb, win))
        np.testing.assert_allclose(got, framing.crop(xyz, win), atol=1e-6)
    assert win[0] < 0 or win[1] < 0 or win[0] + win[2] > 120 or win[1] + win[2] > 120
    win = framing.window(valid, 0.8)
    maps = torch.rand(3, 16, 16)
    plain = preparation.Prepared(None, None, None, 120, 120, None, None, None, (), win, None, None)
    np.testing.assert_allclose(framing.turned_back(maps, win, still, 120, 120),
                               results.to_input_resolution(maps, plain), atol=1e-5)
