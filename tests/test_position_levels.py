"""Levels per position (docs/concepts.md, "Levels per position") and where the part is in an image
alone (mafr.datasets.implant.part_pixels)."""

import numpy as np
import pytest
import torch

import mafr
from mafr.calibration import uses_position_levels
from mafr.datasets.implant import implant_defect, part_pixels
from mafr.datasets.synthetic import generate_sample
from mafr.scoring import POSITION_FLOOR, position_level, position_normalised

from .conftest import tiny_config
from .test_fail_closed import _rewrite


def test_levels_per_position_are_on_for_images_alone_unless_asked_otherwise():
    sc = mafr.MAFRConfig().scoring
    assert sc.position_levels == "auto"
    assert uses_position_levels(sc, "rgb") and not uses_position_levels(sc, "rgb+xyz")
    assert not uses_position_levels(sc, "xyz")
    on = mafr.MAFRConfig(scoring={"position_levels": "on"}).scoring
    off = mafr.MAFRConfig(scoring={"position_levels": "off"}).scoring
    assert uses_position_levels(on, "rgb+xyz") and not uses_position_levels(off, "rgb")
    with pytest.raises(ValueError):
        mafr.MAFRConfig(scoring={"position_levels": "yes"})


def test_a_place_where_every_good_part_lights_up_does_not_set_the_score():
    gen = torch.Generator().manual_seed(0)
    goods = torch.rand(6, 48, 48, generator=gen) * 0.2
    goods[:, 20:24, :] += 3.0  # a specular band, at the same place on every good part
    level = position_level(goods.sum(0), goods.shape[0])
    assert level.shape == (48, 48) and bool((level > 0).all())
    part = torch.rand(1, 48, 48, generator=gen) * 0.2
    part[:, 20:24, :] += 3.0
    part[:, 38:41, 10:13] += 1.0  # a defect, dimmer than the band
    raw_peak = divmod(int(part[0].argmax()), 48)
    peak = divmod(int(position_normalised(part, level)[0].argmax()), 48)
    assert 20 <= raw_peak[0] < 24  # the band sets the raw map's peak
    assert 38 <= peak[0] < 41 and 10 <= peak[1] < 13  # in units of normal, the defect does
    # the floor: where good parts leave the map at zero, a value is divided by a share of the mean
    # level of the places they reach (an 8 x 8 map is not smoothed: 8 // 48 = 0)
    one_row = position_level(torch.zeros(8, 8).index_fill_(0, torch.tensor([0]), 2.0), 2)
    assert torch.allclose(one_row[1:], torch.full((7, 8), POSITION_FLOOR))
    assert torch.allclose(one_row[0], torch.full((8,), 1.0 + POSITION_FLOOR))


@pytest.fixture(scope="module")
def image_detector():
    parts = [generate_sample("puck", seed=s, size=64) for s in range(6)]
    return mafr.MAFRDetector(tiny_config(modalities="rgb")).fit([p.rgb for p in parts], seed=0, progress=False)


def test_an_image_detector_calibrates_a_level_per_position_and_saves_it(image_detector, tmp_path):
    det = image_detector
    level = det.calibration_["position"]
    side = det.config.rgb.image_size
    assert level.shape == (side, side) and bool(torch.isfinite(level).all()) and bool((level > 0).all())
    probe = generate_sample("puck", "stain", seed=40, size=64)
    before = det.predict(probe.rgb)
    det.save_pretrained(tmp_path / "det")
    loaded = mafr.MAFRDetector.from_pretrained(tmp_path / "det")
    assert torch.equal(loaded.calibration_["position"], level)
    after = loaded.predict(probe.rgb)
    assert after.score == pytest.approx(before.score) and after.is_anomalous == before.is_anomalous
    # 3D and fused detectors keep their levels per distance from the part's edge only
    both = mafr.MAFRDetector(tiny_config()).fit([generate_sample("puck", seed=s, size=64) for s in range(4)],
                                                seed=0, progress=False)
    assert "position" not in both.calibration_


@pytest.mark.parametrize("bad", ["zero", "nan", "shape"])
def test_a_saved_level_per_position_that_cannot_be_divided_by_is_corrupt(image_detector, tmp_path, bad):
    image_detector.save_pretrained(tmp_path / "det")

    def edit(tensors):
        level = tensors["calibration.position"].clone()
        if bad == "zero":
            level[3, 3] = 0.0
        elif bad == "nan":
            level[0, 0] = float("nan")
        else:
            level = level[:-1]
        tensors["calibration.position"] = level.contiguous()

    _rewrite(tmp_path / "det", edit)
    with pytest.raises(mafr.CorruptModelError, match="calibration.position"):
        mafr.MAFRDetector.from_pretrained(tmp_path / "det")


def _image_with_a_part(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(20, 3, size=(120, 160, 3)).clip(0, 255)  # a dark backdrop with sensor noise
    img[30:90, 50:120] = 140  # the part
    img[30:90, 70:72] = 60  # a groove across it, still part
    return img.astype(np.uint8)


def test_an_image_alone_part_is_where_its_colour_stands_out_from_the_border():
    img = _image_with_a_part()
    part = part_pixels(img, None)
    inside = part[30:90, 50:120]
    assert inside.mean() > 0.95  # the groove is closed over
    outside = part.copy()
    outside[26:94, 46:124] = False  # the closing may round the corners out by a few pixels
    assert outside.mean() < 0.01
    for seed in range(5):  # implants land on the part, not the backdrop
        d = implant_defect(img, None, "stain", seed=seed)
        rows, cols = np.nonzero(d.mask)
        assert 30 <= rows.mean() < 90 and 50 <= cols.mean() < 120
    # nothing stands out (the part fills the frame): every pixel is the part
    assert part_pixels(np.full((64, 64, 3), 90, np.uint8), None).all()
