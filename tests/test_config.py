import json

import pytest
from pydantic import ValidationError

from mafr import CONFIG_VERSION, MAFRConfig


def test_defaults_are_the_paper_numbers():
    c = MAFRConfig()
    assert c.rgb.model_name == "vit_base_patch8_224.dino" and c.rgb.image_size == 224
    assert (c.points.num_groups, c.points.group_size, c.points.embed_dim, c.points.depth) == (1024, 128, 384, 12)
    assert c.points.out_indices == (3, 7, 11)
    assert c.scoring.fusion == "product" and (c.scoring.box5_passes, c.scoring.box7_passes) == (5, 3)
    assert c.model.cbam == "grid" and c.model.dropout == 0.1


def test_presets_fill_only_what_was_not_given():
    ref = MAFRConfig(preset="reference")
    # mafr_training_mvtec.sh of the reference trains 100 epochs at batch 1 (docs/method.md)
    assert ref.grid_size == 224 and ref.model.cbam == "pointwise" and ref.train.epochs == 100
    assert ref.train.batch_size == 1 and ref.points.fps_max_points is None
    assert ref.train.smoothness_first_two_channels
    assert ref.points.idw_power == 2 and ref.model.feature_norm == "none"
    assert ref.train.loss_form == "reference" and ref.scoring.maps == "reference"
    assert ref.train.calibration_fraction == 0.0 and ref.train.lr == 1e-3
    ref2 = MAFRConfig(preset="reference", grid_size=56, model={"cbam": "grid"})
    assert ref2.grid_size == 56 and ref2.model.cbam == "grid" and ref2.train.epochs == 100
    assert ref2.model.feature_norm == "none"
    paper = MAFRConfig()
    assert paper.points.idw_power == 1 and paper.model.feature_norm == "zscore"
    assert paper.train.loss_form == "mafr" and paper.scoring.maps == "mafr"
    off = MAFRConfig(preset="offline")
    assert off.rgb.kind == "offline" and off.points.kind == "deviation" and off.scoring.fusion == "calibrated"
    assert off.points.resize == "mean" and paper.points.resize == "nearest" and ref.points.resize == "nearest"
    assert off.rgb.ring_radii == (21, 33) and paper.rgb.ring_radii == ()
    assert off.points.deviation_scales == (9.0, 18.0)
    assert off.framing == "part" and paper.framing == "image" and ref.framing == "image"
    assert off.points.deviation_peaks and not paper.points.deviation_peaks and not ref.points.deviation_peaks
    assert off.points.deviation_peak_sigma == paper.points.deviation_peak_sigma == (3.0,)
    assert off.scoring.edge_cap == 7 and paper.scoring.edge_cap == 3
    assert off.scoring.levels_parts == "all" and paper.scoring.levels_parts == "held_out"
    assert ref.scoring.levels_parts == "held_out"
    assert off.scoring.level_quantile == 0.97 and paper.scoring.level_quantile == 0.9
    assert off.rgb.rarity_on_part and not paper.rgb.rarity_on_part
    assert off.rgb.ring_normal_weight == 0.02 and paper.rgb.ring_normal_weight == ref.rgb.ring_normal_weight == 0.0
    assert off.rgb.ring_normal_sigma == 8.0
    assert off.scoring.channel_reduce_2d == "max" and paper.scoring.channel_reduce_2d == ref.scoring.channel_reduce_2d == "rms"
    assert off.grid_size == 56 and paper.grid_size == 28 and ref.grid_size == 224
    assert off.train.loss_form == ref.train.loss_form == "reference" and paper.train.loss_form == "mafr"
    assert off.train.smoothness_first_two_channels and not paper.train.smoothness_first_two_channels
    # An offline detector saved on the earlier 28 x 28 grid reloads with the grid it was fitted on.
    assert MAFRConfig.model_validate({**off.to_json_dict(), "grid_size": 28}).grid_size == 28
    with pytest.raises(ValidationError):
        MAFRConfig(preset="offline", rgb={"ring_radii": (0, 5)})
    for bad in ((), (1.0, 2.0, 3.0), (0.0,), (float("nan"), 3.0)):
        with pytest.raises(ValidationError, match="deviation_peak_sigma"):
            MAFRConfig(preset="offline", points={"deviation_peak_sigma": bad})
    assert off.scoring.level_bins == (0.5, 0.8, 0.95) and MAFRConfig().scoring.level_bins == ()
    for bad in ((0.8, 0.5), (0.5, 0.5), (0.0,), (1.0,), (float("nan"),)):
        with pytest.raises(ValidationError, match="level_bins"):
            MAFRConfig(preset="offline", scoring={"level_bins": bad})


def test_a_config_saved_before_a_field_existed_keeps_the_behaviour_it_was_fitted_with():
    from mafr.persistence import decode_config as _decode_config

    saved = MAFRConfig(preset="offline").to_json_dict()
    del saved["points"]["resize"], saved["rgb"]["ring_radii"], saved["points"]["deviation_peaks"]  # as before they existed
    del saved["scoring"]["edge_cap"], saved["scoring"]["levels_parts"], saved["scoring"]["level_quantile"]
    del saved["framing"], saved["rgb"]["rarity_on_part"], saved["scoring"]["channel_reduce_2d"]
    del saved["points"]["deviation_peak_sigma"], saved["points"]["deviation_order"], saved["scoring"]["level_bins"]
    del saved["rgb"]["ring_normal_weight"], saved["rgb"]["ring_normal_sigma"]
    old = _decode_config(saved)
    assert old.framing == "image"
    assert old.rgb.rarity_on_part is False and old.scoring.channel_reduce_2d == "rms"
    assert old.points.resize == "nearest" and old.rgb.ring_radii == () and old.points.deviation_peaks is False
    assert old.scoring.edge_cap == 3 and old.scoring.levels_parts == "held_out" and old.scoring.level_quantile == 0.9
    assert old.points.deviation_peak_sigma == (3.0,)  # one width for every scale, as then
    assert old.points.deviation_order == (2,)
    assert old.scoring.level_bins == ()  # one level per distance band, as then
    assert old.rgb.ring_normal_weight == 0.0  # colours alone, as then
    new = _decode_config(MAFRConfig(preset="offline").to_json_dict())
    assert new.points.resize == "mean" and new.rgb.ring_radii == (21, 33) and new.points.deviation_peaks is True
    assert new.framing == "part" and new.rgb.rarity_on_part is True and new.scoring.channel_reduce_2d == "max"
    assert new.scoring.edge_cap == 7 and new.scoring.levels_parts == "all" and new.scoring.level_quantile == 0.97
    assert new.scoring.level_bins == (0.5, 0.8, 0.95) and new.rgb.ring_normal_weight == 0.02
    # Bins a detector was saved with are the bins it loads with, whatever the preset says.
    other = MAFRConfig(preset="offline", scoring={"level_bins": (0.25, 0.5, 0.75)}).to_json_dict()
    assert _decode_config(other).scoring.level_bins == (0.25, 0.5, 0.75)


def test_json_round_trip():
    c = MAFRConfig(preset="offline", grid_size=14, train={"steps": 5})
    again = MAFRConfig.model_validate(json.loads(json.dumps(c.to_json_dict())))
    assert again == c


def test_newer_version_is_refused_with_upgrade_hint():
    with pytest.raises(ValidationError, match="newer mafr.*pip install -U mafr"):
        MAFRConfig.model_validate({"version": CONFIG_VERSION + 1})


def test_unknown_fields_and_bad_values_are_refused():
    with pytest.raises(ValidationError, match="grid_sise"):
        MAFRConfig(grid_sise=10)
    with pytest.raises(ValidationError):
        MAFRConfig(scoring={"fusion": "mean"})
    with pytest.raises(ValidationError):
        MAFRConfig(preset="fast")


def test_assignment_keeps_sections_typed_and_validated():
    c = MAFRConfig()
    c.grid_size = 56
    assert c.grid_size == 56 and c.rgb.kind == "timm" and type(c.rgb).__name__ == "RGBConfig"
    with pytest.raises(ValidationError):
        c.grid_size = 2
    assert c.grid_size == 56


def test_sub_config_object_keeps_preset_for_unset_fields():
    from mafr.config import RGBConfig

    c = MAFRConfig(preset="offline", rgb=RGBConfig(image_size=112))
    assert c.rgb.kind == "offline" and c.rgb.image_size == 112


def test_fps_subsample_smaller_than_groups_is_refused():
    with pytest.raises(ValidationError, match="fps_max_points"):
        MAFRConfig(points={"fps_max_points": 100})
