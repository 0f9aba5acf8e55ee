"""The synthetic generator: determinism, defect masks, which modality each defect changes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mafr.datasets import CATEGORIES, DEFECTS, generate_sample
from mafr.datasets.synthetic import CAMERA_HEIGHT, camera_intrinsics
from mafr.types import Sample


def _pair(category: str, defect: str, seed: int = 11, **kw):
    good, good_layers = generate_sample(category, None, seed=seed, return_layers=True, **kw)
    bad, bad_layers = generate_sample(category, defect, seed=seed, return_layers=True, **kw)
    return good, good_layers, bad, bad_layers


def test_same_seed_same_arrays_and_different_seeds_differ():
    a = generate_sample("dome", "crack", seed=3)
    b = generate_sample("dome", "crack", seed=3)
    c = generate_sample("dome", "crack", seed=4)
    assert isinstance(a, Sample)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.rgb, c.rgb)
    assert not np.array_equal(a.xyz, c.xyz)
    assert not np.array_equal(a.mask, c.mask)


def test_types_shapes_and_labels():
    s = generate_sample("ring", "stain", seed=0, size=96)
    assert s.rgb.shape == (96, 96, 3) and s.rgb.dtype == np.uint8
    assert s.xyz.shape == (96, 96, 3) and s.xyz.dtype == np.float32
    assert s.mask.shape == (96, 96) and s.mask.dtype == bool
    assert (s.label, s.defect_type, s.name) == (1, "stain", "ring/stain/0")
    g = generate_sample("ring", seed=0, size=96)
    assert (g.label, g.defect_type) == (0, "good")
    assert not g.mask.any()


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_defect_has_a_mask_on_the_part_of_plausible_size(category):
    for defect in DEFECTS:
        s, layers = generate_sample(category, defect, seed=7, return_layers=True)
        part = layers["part"]
        assert s.label == 1 and s.defect_type == defect
        assert s.mask.any(), (category, defect)
        assert not (s.mask & ~part).any(), f"{category}/{defect}: mask leaves the part"
        fraction = s.mask.sum() / part.sum()
        assert 0.015 < fraction < 0.12, (category, defect, fraction)


def test_good_parts_have_empty_masks_for_all_categories():
    for category in CATEGORIES:
        s = generate_sample(category, "good", seed=2, size=64)
        assert s.label == 0 and not s.mask.any()


@pytest.mark.parametrize("category", ["dome", "block"])
def test_stain_changes_colour_only(category):
    good, gl, bad, bl = _pair(category, "stain")
    np.testing.assert_array_equal(good.xyz, bad.xyz)
    np.testing.assert_array_equal(gl["height"], bl["height"])
    m = bad.mask
    np.testing.assert_array_equal(good.rgb[~m], bad.rgb[~m])
    darker = good.rgb[m].astype(float).mean() - bad.rgb[m].astype(float).mean()
    assert darker > 30, darker  # clearly visible


@pytest.mark.parametrize("defect,sign", [("bump", -1.0), ("dent", 1.0)])
@pytest.mark.parametrize("category", ["puck", "ring"])
def test_bump_and_dent_change_geometry_only(category, defect, sign):
    good, gl, bad, bl = _pair(category, defect)
    m = bad.mask
    # Albedo untouched; xyz and rgb identical outside the mask (shading follows the geometry).
    np.testing.assert_array_equal(gl["albedo"], bl["albedo"])
    np.testing.assert_array_equal(good.xyz[~m], bad.xyz[~m])
    np.testing.assert_array_equal(good.rgb[~m], bad.rgb[~m])
    both = np.all(good.xyz[m] != 0, axis=-1) & np.all(bad.xyz[m] != 0, axis=-1)
    dz = bad.xyz[m][both, 2] - good.xyz[m][both, 2]
    # A bump comes towards the camera (smaller z), a dent goes away; peak 3-5 mm.
    assert 0.0025 < np.max(sign * dz) < 0.0055
    assert np.any(good.rgb[m] != bad.rgb[m])


@pytest.mark.parametrize("defect", ["crack", "hole"])
def test_crack_and_hole_change_both_modalities_inside_the_mask(defect):
    good, gl, bad, bl = _pair("dome", defect)
    m = bad.mask
    np.testing.assert_array_equal(good.xyz[~m], bad.xyz[~m])
    np.testing.assert_array_equal(good.rgb[~m], bad.rgb[~m])
    assert (bl["height"][m] < gl["height"][m] - 0.001).any()  # a groove / depression
    assert bad.rgb[m].astype(float).mean() < good.rgb[m].astype(float).mean() - 25  # dark
    if defect == "hole":
        lost = np.any(good.xyz != 0, -1) & ~np.any(bad.xyz != 0, -1)
        assert lost.sum() > 20 and not (lost & ~m).any()  # no measurement inside the hole


def test_background_none_metres_zeros_off_part_and_pinhole_consistency():
    s, layers = generate_sample("puck", None, seed=5, return_layers=True)
    valid = np.any(s.xyz != 0, axis=-1)
    assert not (valid & ~layers["part"]).any()
    assert valid.sum() > 0.95 * layers["part"].sum()  # a few dropouts only
    z = s.xyz[..., 2][valid]
    assert 0.47 < z.min() and z.max() < 0.51  # metres, ~0.5 m camera, ~2 cm part
    k = camera_intrinsics(224)
    v, u = np.nonzero(valid)
    x, y, zz = s.xyz[valid].T.astype(np.float64)
    np.testing.assert_allclose(k[0, 0] * x / zz + k[0, 2], u, atol=1e-3)
    np.testing.assert_allclose(k[1, 1] * y / zz + k[1, 2], v, atol=1e-3)
    # The part fills ~60% of the image width.
    cols = np.nonzero(layers["part"].any(axis=0))[0]
    assert 0.5 < (cols.max() - cols.min() + 1) / 224 < 0.7


def test_background_plane_measures_the_table_and_keeps_the_part():
    plane, layers = generate_sample("ring", "dent", seed=9, background="plane", return_layers=True)
    none = generate_sample("ring", "dent", seed=9, background="none")
    np.testing.assert_array_equal(plane.rgb, none.rgb)
    np.testing.assert_array_equal(plane.mask, none.mask)
    on = np.any(none.xyz != 0, axis=-1)
    np.testing.assert_array_equal(plane.xyz[on], none.xyz[on])
    table = ~layers["part"]
    table_valid = np.any(plane.xyz != 0, axis=-1) & table
    assert table_valid.sum() > 0.98 * table.sum()
    zt = plane.xyz[..., 2][table_valid]
    assert abs(np.median(zt) - CAMERA_HEIGHT) < 0.01
    assert zt.std() < 0.01  # a flat, slightly tilted table


def test_generation_is_fast():
    generate_sample("block", "crack", seed=0)  # warm-up
    times = []
    for seed in range(3):
        t = time.perf_counter()
        generate_sample("block", "crack", seed=seed)
        times.append(time.perf_counter() - t)
    assert min(times) < 0.1, times


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"category": "sphere"}, "category must be one of"),
        ({"category": "dome", "defect": "scratch"}, "defect must be"),
        ({"category": "dome", "size": 16}, "size must be an integer >= 32"),
        ({"category": "dome", "background": "table"}, "background must be one of"),
        ({"category": "dome", "seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    category = kwargs.pop("category")
    defect = kwargs.pop("defect", None)
    with pytest.raises(ValueError, match=match):
        generate_sample(category, defect, **kwargs)
