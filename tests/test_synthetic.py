"""The synthetic generator: determinism, defect masks, which modality each defect changes."""

from __future__ import annotations

import numpy as np
import pytest

from mafr.datasets import BENCHMARK_SPLITS, CATEGORIES, DEFECT_SPECS, DEFECTS, generate_sample, write_benchmark
from mafr.datasets.synthetic import CAMERA_HEIGHT, CATEGORY_INFO, DEFAULT_SIZE, camera_intrinsics
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
        # Small defects by design (DEFECT_SPECS): 0.6-3% of the part, a crack a thin line.
        assert 0.004 < fraction < 0.06, (category, defect, fraction)


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
    change = np.abs(good.rgb[m].astype(float) - bad.rgb[m].astype(float)).mean()
    assert change > 8, change  # faint by design, but above the camera noise


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
    # A bump comes towards the camera (smaller z), a dent goes away; peak within the default
    # 0.3-1.0 mm (plus depth noise).
    low, high = DEFECT_SPECS[defect].height
    assert low - 0.0002 < np.max(sign * dz) < high + 0.0015
    assert np.any(good.rgb[m] != bad.rgb[m])


@pytest.mark.parametrize("defect", ["crack", "hole"])
def test_crack_and_hole_change_both_modalities_inside_the_mask(defect):
    good, gl, bad, bl = _pair("dome", defect)
    m = bad.mask
    np.testing.assert_array_equal(good.xyz[~m], bad.xyz[~m])
    np.testing.assert_array_equal(good.rgb[~m], bad.rgb[~m])
    assert (bl["height"][m] < gl["height"][m] - 0.0004).any()  # a groove / depression
    assert bad.rgb[m].astype(float).mean() < good.rgb[m].astype(float).mean() - 10  # darker
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
    k = camera_intrinsics(DEFAULT_SIZE)
    v, u = np.nonzero(valid)
    x, y, zz = s.xyz[valid].T.astype(np.float64)
    np.testing.assert_allclose(k[0, 0] * x / zz + k[0, 2], u, atol=1e-3)
    np.testing.assert_allclose(k[1, 1] * y / zz + k[1, 2], v, atol=1e-3)
    # The part fills ~60% of the image width.
    cols = np.nonzero(layers["part"].any(axis=0))[0]
    assert 0.5 < (cols.max() - cols.min() + 1) / DEFAULT_SIZE < 0.7


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


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"category": "sphere"}, "category must be one of"),
        ({"category": "dome", "defect": "scratch"}, "defect must be"),
        ({"category": "dome", "size": 16}, "size must be an integer >= 32"),
        ({"category": "dome", "background": "table"}, "background must be one of"),
        ({"category": "dome", "seed": -1}, "seed must be a non-negative integer"),
        ({"category": "dome", "defect": "bump", "defect_spec": {"depth": (0, 1)}}, "defect_spec keys"),
        ({"category": "dome", "defect": "bump", "defect_spec": {"height": (0.002, 0.001)}}, "0 <= low <= high"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    category = kwargs.pop("category")
    defect = kwargs.pop("defect", None)
    with pytest.raises(ValueError, match=match):
        generate_sample(category, defect, **kwargs)


def test_tuning_and_report_sets_share_no_category_and_no_seed():
    (tuning, tuning_seed), (report, report_seed) = BENCHMARK_SPLITS["tuning"], BENCHMARK_SPLITS["report"]
    assert not set(tuning) & set(report) and tuning_seed != report_seed
    assert set(tuning) | set(report) == set(CATEGORIES) and len(CATEGORIES) >= 6
    # Both sets hold a round part and a textured or multi-coloured one.
    for cats in (tuning, report):
        assert any("round" in CATEGORY_INFO[c] for c in cats)
        assert any(w in " ".join(CATEGORY_INFO[c] for c in cats) for w in ("brushed", "multi-coloured", "speckled"))


def test_default_resolution_is_at_least_400():
    s = generate_sample("plate", seed=1)
    assert s.rgb.shape[:2] == (DEFAULT_SIZE, DEFAULT_SIZE) and DEFAULT_SIZE >= 400


def test_plate_has_through_holes_that_show_no_part():
    s, layers = generate_sample("plate", seed=2, size=200, return_layers=True)
    part = layers["part"]
    rows, cols = np.nonzero(part)
    inner = np.zeros_like(part)
    inner[rows.min() + 5 : rows.max() - 5, cols.min() + 5 : cols.max() - 5] = True
    assert (inner & ~part).sum() > 4 * 20  # four holes inside the outline


def test_pose_and_lighting_vary_between_good_parts():
    a, b = generate_sample("tile", seed=1, size=128), generate_sample("tile", seed=2, size=128)
    assert abs(a.rgb.astype(float).mean() - b.rgb.astype(float).mean()) > 0.5
    assert not np.array_equal(np.any(a.xyz != 0, -1), np.any(b.xyz != 0, -1))


@pytest.mark.parametrize("defect", ["bump", "dent"])
def test_defect_spec_sets_the_height(defect):
    sign = -1.0 if defect == "bump" else 1.0
    peaks = []
    for height in (0.0002, 0.002):
        good = generate_sample("puck", None, seed=5, size=160, return_layers=True)[1]
        bad = generate_sample("puck", defect, seed=5, size=160, defect_spec={"height": (height, height)},
                              return_layers=True)[1]
        peaks.append(np.max(-sign * (bad["height"] - good["height"])))
    assert peaks[0] == pytest.approx(0.0002, rel=0.05) and peaks[1] == pytest.approx(0.002, rel=0.05)


def test_write_benchmark_writes_the_split_categories(tmp_path):
    write_benchmark(tmp_path, "tuning", n_train=1, n_test_good=1, n_test_per_defect=1, size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BENCHMARK_SPLITS["tuning"][0])
    assert len(list((tmp_path / "plate" / "test").iterdir())) == 1 + len(DEFECTS)
    with pytest.raises(ValueError, match="split must be one of"):
        write_benchmark(tmp_path, "validation")


def test_the_hard_benchmark_has_fainter_defects_on_other_parts(tmp_path):
    from mafr.datasets import BENCHMARK_DIFFICULTIES, HARD_DEFECT_SPECS

    assert set(HARD_DEFECT_SPECS) == set(DEFECT_SPECS) == set(DEFECTS)
    for kind, hard in HARD_DEFECT_SPECS.items():
        std = DEFECT_SPECS[kind]
        for field in ("area", "height", "contrast"):
            lo, hi = getattr(hard, field)
            slo, shi = getattr(std, field)
            assert lo <= slo and hi <= shi and (hi < shi or shi == 0), (kind, field)
    offsets = [offset for _, offset, _, _ in BENCHMARK_DIFFICULTIES.values()]
    seeds = {seed + off for _, seed in BENCHMARK_SPLITS.values() for off in offsets}
    assert len(seeds) == len(BENCHMARK_SPLITS) * len(offsets)  # no split x difficulty shares a data seed
    write_benchmark(tmp_path / "std", "tuning", n_train=1, n_test_good=1, n_test_per_defect=1, size=64)
    write_benchmark(tmp_path / "hard", "tuning", difficulty="hard", n_train=1, n_test_good=1, n_test_per_defect=1, size=64)
    std_files = sorted((tmp_path / "std" / "dome").rglob("*.png"))
    hard_files = sorted((tmp_path / "hard" / "dome").rglob("*.png"))
    assert [p.relative_to(tmp_path / "std") for p in std_files] == [p.relative_to(tmp_path / "hard") for p in hard_files]
    assert std_files[0].read_bytes() != hard_files[0].read_bytes()  # other parts, not the same ones
    with pytest.raises(ValueError, match="difficulty must be one of"):
        write_benchmark(tmp_path, "tuning", difficulty="brutal")
