"""Rotated copies of training parts (mafr/augment.py, ``config.train.rotations``)."""

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import mafr
from mafr import augment, preparation
from mafr.datasets.synthetic import generate_sample

from .conftest import tiny_config


def _prepared(seed=3, size=96):
    return preparation.prepare(generate_sample("cylinder", seed=seed, size=size), tiny_config(), torch.device("cpu"))


def _projection_error(prep, coef=None):
    """Largest distance (px) between where each measured point sits and where a pinhole camera
    (fitted to the unturned part when ``coef`` is None) projects it; and that camera."""
    rows, cols = prep.valid.nonzero().double().unbind(1)
    xyz = prep.xyz[prep.valid].double()
    a, b = (xyz[:, 0] / xyz[:, 2]).numpy(), (xyz[:, 1] / xyz[:, 2]).numpy()
    if coef is None:
        coef = [np.linalg.lstsq(np.stack([t, np.ones_like(t)], 1), p.numpy(), rcond=None)[0]
                for t, p in ((a, cols), (b, rows))]
    (fu, cu), (fv, cv) = coef
    return max(np.abs(fu * a + cu - cols.numpy()).max(), np.abs(fv * b + cv - rows.numpy()).max()), coef


@pytest.mark.parametrize("degrees", [8.0, -8.0, 30.0])
def test_a_turned_copy_keeps_the_camera_model(degrees):
    """Each point of the copy lies on its pixel's ray, as in the part itself: image and geometry
    turned together, the points' x, y turned about the camera axis (a wrong sign or a geometry
    left unturned puts points tens of pixels from their rays at 30 degrees)."""
    prep = _prepared()
    own, coef = _projection_error(prep)
    turned = augment.rotated(prep, degrees)
    err, _ = _projection_error(turned, coef)
    assert err <= own + 1.5
    assert abs(int(turned.valid.sum()) - int(prep.valid.sum())) <= 0.01 * int(prep.valid.sum())
    assert bool((turned.xyz[~turned.valid] == 0).all())


def test_no_turn_is_the_part_itself_and_the_input_is_left_alone():
    prep = _prepared()
    before = (prep.image.clone(), prep.xyz.clone(), prep.valid.clone())
    same = augment.rotated(prep, 0.0)
    torch.testing.assert_close(same.image, prep.image, atol=1e-5, rtol=0)
    torch.testing.assert_close(same.xyz, prep.xyz * prep.valid[..., None], atol=1e-6, rtol=0)
    assert torch.equal(same.valid, prep.valid)
    augment.rotated(prep, 12.0)
    for kept, now in zip(before, (prep.image, prep.xyz, prep.valid)):
        assert torch.equal(kept, now)


def test_the_image_turns_counter_clockwise_as_shown():
    prep = _prepared()
    prep.image = torch.zeros_like(prep.image)
    size = prep.image.shape[-1]
    prep.image[:, size // 2, size - 8] = 1.0  # a dot right of the centre
    turned = augment.rotated(prep, 90.0).image[0]
    row, col = divmod(int(turned.argmax()), size)
    assert row < size // 2 - 20 and abs(col - size // 2) <= 2  # now above it


def test_rotations_are_validated_and_saved(tmp_path):
    with pytest.raises(ValidationError, match="rotations"):
        mafr.MAFRConfig(train={"rotations": (200.0,)})
    cfg = tiny_config(train={"rotations": (-8.0, 8.0)})
    assert mafr.MAFRConfig.model_validate(json.loads(json.dumps(cfg.to_json_dict()))).train.rotations == (-8.0, 8.0)
    old = cfg.to_json_dict()
    del old["train"]["rotations"]  # a detector saved before the field existed
    from mafr.persistence import decode_config

    assert decode_config(old).train.rotations == ()


def test_fit_trains_on_copies_and_calibrates_on_the_parts_alone():
    parts = [generate_sample("cylinder", seed=s, size=64) for s in range(6)]
    plain = mafr.MAFRDetector(tiny_config()).fit(parts, seed=0, progress=False)
    cfg = tiny_config(train={"rotations": (-8.0, 8.0)})
    turned = mafr.MAFRDetector(cfg).fit(parts, seed=0, progress=False)
    again = mafr.MAFRDetector(cfg).fit(parts, seed=0, progress=False)
    info = turned.fit_info_
    assert info["rotated_copies"] == 2 * info["n_train"] and plain.fit_info_["rotated_copies"] == 0
    # The threshold is read from the held-out parts themselves, never from a copy.
    assert len(info["calibration_scores"]) == info["n_calibration"] == plain.fit_info_["n_calibration"]
    assert turned.threshold_ != plain.threshold_  # the copies changed what was learned
    assert again.threshold_ == turned.threshold_  # seeded: the same fit twice
    assert len(turned.replay_) == len(plain.replay_)  # the store keeps the parts, not their copies


def test_update_trains_on_copies_of_its_new_parts():
    parts = [generate_sample("cylinder", seed=s, size=64) for s in range(6)]
    new = [generate_sample("cylinder", seed=s, size=64) for s in range(20, 25)]
    det = mafr.MAFRDetector(tiny_config(train={"rotations": (10.0,)})).fit(parts, seed=0, progress=False)
    plain = mafr.MAFRDetector(tiny_config(train={"rotations": (10.0,)})).fit(parts, seed=0, progress=False)
    plain.config.train.rotations = ()
    det.update(new, seed=0)
    plain.update(new, seed=0)
    assert det.fit_info_["history"][-1]["n_train"] == plain.fit_info_["history"][-1]["n_train"] == 4
    assert det.threshold_ != plain.threshold_


def test_no_copies_where_levels_per_position_assume_a_fixed_pose():
    """Images alone set levels per position (parts in one place and pose): turned copies would
    contradict them, so none are made; asking for the levels on 3D parts does the same."""
    parts = [generate_sample("cylinder", seed=s, size=64) for s in range(4)]
    images = [(p.rgb, None) for p in parts]
    rgb_only = mafr.MAFRDetector(tiny_config(modalities="rgb", train={"rotations": (-8.0, 8.0)})).fit(images, progress=False)
    assert rgb_only.fit_info_["rotated_copies"] == 0
    on = tiny_config(train={"rotations": (-8.0, 8.0)}, scoring={"position_levels": "on"})
    assert mafr.MAFRDetector(on).fit(parts, progress=False).fit_info_["rotated_copies"] == 0


def test_copies_are_of_the_training_parts_and_studies_fit_as_fit_does(monkeypatch):
    """The copies are those of the parts the seed's split trains on (never a held-out part's: its
    copy would be a trained-on twin of a calibration part), and benchmarks that extract once
    and fit many times (``_fit_extracted``) get the same detector as ``fit``."""
    parts = [generate_sample("cylinder", seed=s, size=64) for s in range(6)]
    cfg = tiny_config(train={"rotations": (-8.0, 8.0)})
    turned_items = []
    original = augment.rotated_features
    monkeypatch.setattr(augment, "rotated_features",
                        lambda det, items, *a, **k: turned_items.extend(items) or original(det, items, *a, **k))
    fitted = mafr.MAFRDetector(cfg).fit(parts, seed=1, progress=False)
    held_out = fitted.replay_.held_out.tolist()  # the store keeps every part here, in order
    assert len(held_out) == len(parts) and any(held_out)
    assert [p.name for p in turned_items] == [p.name for p, h in zip(parts, held_out) if not h]
    study = mafr.MAFRDetector(cfg)
    study._fit_extracted(parts, study.extract_features(parts), seed=1)
    assert study.threshold_ == fitted.threshold_
    assert study.fit_info_["calibration_scores"] == fitted.fit_info_["calibration_scores"]
