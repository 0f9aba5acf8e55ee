"""MVTec 3D-AD preprocessing without open3d (docs/method.md): plane removal, square padding,
largest cluster."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mafr.datasets import (
    MVTec3D,
    generate_sample,
    keep_largest_component,
    pad_to_square,
    preprocess_dataset,
    preprocess_sample,
    remove_background_plane,
    write_dataset,
)
from mafr.datasets.preprocess import fit_border_plane, pad_array_to_square


def _valid(xyz: np.ndarray) -> np.ndarray:
    return np.any(xyz != 0, axis=-1)


@pytest.fixture(scope="module")
def scene():
    """The same part with the table measured and without it."""
    plane, layers = generate_sample("dome", "bump", seed=21, size=224, background="plane", return_layers=True)
    none = generate_sample("dome", "bump", seed=21, size=224, background="none")
    return plane, none, layers


def test_plane_removal_zeroes_the_table_and_keeps_the_part(scene):
    plane, none, _ = scene
    original = plane.xyz.copy()
    out = remove_background_plane(plane.xyz, seed=0)
    np.testing.assert_array_equal(plane.xyz, original)  # input untouched
    assert out.dtype == plane.xyz.dtype and out.shape == plane.xyz.shape
    part = _valid(none.xyz)
    table = _valid(plane.xyz) & ~part
    assert table.sum() > 20000
    assert not (_valid(out) & table).any()
    kept = (_valid(out) & part).sum() / part.sum()
    assert kept > 0.95, kept
    np.testing.assert_array_equal(out[_valid(out)], plane.xyz[_valid(out)])  # survivors unchanged


@pytest.mark.parametrize("category", ["puck", "ring", "block"])
def test_plane_removal_other_shapes(category):
    plane = generate_sample(category, "hole", seed=4, background="plane")
    none = generate_sample(category, "hole", seed=4, background="none")
    out = remove_background_plane(plane.xyz)
    part = _valid(none.xyz)
    assert not (_valid(out) & ~part).any()
    assert (_valid(out) & part).sum() > 0.95 * part.sum()


def test_plane_fit_is_deterministic_under_seed_and_accurate(scene):
    plane, _, layers = scene
    a = fit_border_plane(plane.xyz, seed=3)
    b = fit_border_plane(plane.xyz, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(remove_background_plane(plane.xyz, seed=3),
                                  remove_background_plane(plane.xyz, seed=3))
    assert np.linalg.norm(a[:3]) == pytest.approx(1.0)
    table = _valid(plane.xyz) & ~layers["part"]
    residual = np.abs(plane.xyz[table].astype(np.float64) @ a[:3] + a[3])
    assert residual.mean() < 0.0004  # sensor noise is 0.2 mm
    tilt = np.degrees(np.arccos(abs(a[2])))
    assert 0.1 < tilt < 3.0  # the synthetic table is tilted by up to ~2 degrees


def test_plane_removal_needs_border_points(scene):
    _, none, _ = scene
    with pytest.raises(ValueError, match="too few valid points in the scan's border"):
        remove_background_plane(none.xyz)
    with pytest.raises(ValueError, match="too few valid points in the 10-pixel border"):
        remove_background_plane(none.xyz, remove_distance=0.005)  # the reference's fixed rule
    with pytest.raises(ValueError, match="H x W x 3 point map"):
        remove_background_plane(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="border must be an integer"):
        remove_background_plane(np.ones((30, 30, 3), np.float32), border=15, remove_distance=0.005)


@pytest.mark.parametrize(
    "shape,side,top,left",
    [((224, 224), 300, 38, 38), ((600, 800), 800, 100, 0), ((800, 800), 800, 0, 0),
     ((801, 300), 900, 49, 300), ((101, 99), 200, 49, 50)],
)
def test_pad_to_square_sizes_and_centring(shape, side, top, left):
    h, w = shape
    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 256, size=(h, w, 3), dtype=np.uint8)
    xyz = rng.uniform(0.1, 1.0, size=(h, w, 3)).astype(np.float32)
    prgb, pxyz = pad_to_square(rgb, xyz)
    assert prgb.shape == (side, side, 3) and pxyz.shape == (side, side, 3)
    assert prgb.dtype == np.uint8 and pxyz.dtype == np.float32
    np.testing.assert_array_equal(prgb[top:top + h, left:left + w], rgb)
    np.testing.assert_array_equal(pxyz[top:top + h, left:left + w], xyz)
    assert _valid(pxyz).sum() == h * w and (prgb.sum(-1) > 0).sum() == h * w
    mask = pad_array_to_square(np.ones((h, w), bool))
    assert mask.shape == (side, side) and mask[top, left] and mask.sum() == h * w


def test_pad_to_square_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same height and width"):
        pad_to_square(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="multiple must be a positive integer"):
        pad_to_square(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32), multiple=0)


def test_largest_component_removes_a_detached_blob():
    part = generate_sample("puck", None, seed=8).xyz
    noisy = part.copy()
    # A blob floating 3 cm above the table, away from the part in the image.
    noisy[5:15, 5:15] = [-0.12, -0.12, 0.47]
    # And a blob right next to the part in the image but 2 cm nearer the camera.
    valid = _valid(part)
    rows = np.nonzero(valid.any(axis=1))[0]
    r = (rows[0] + rows[-1]) // 2
    edge = min(np.nonzero(valid[y])[0][0] for y in range(r, r + 5))  # leftmost part pixel
    assert not valid[r:r + 5, edge - 6:edge].any()
    noisy[r:r + 5, edge - 6:edge] = part[r, np.nonzero(valid[r])[0][0]] - [0, 0, 0.02]
    original = noisy.copy()
    out = keep_largest_component(noisy)
    np.testing.assert_array_equal(noisy, original)
    np.testing.assert_array_equal(out, part)


def test_largest_component_window_bridges_small_gaps():
    xyz = np.zeros((20, 41, 3), np.float32)
    ys, xs = np.mgrid[0:20, 0:41]
    xyz[..., 0], xyz[..., 1], xyz[..., 2] = xs * 0.001, ys * 0.001, 0.5
    xyz[:, 20:22] = 0  # a two-pixel crack splits the slab; 3 mm across < eps
    left = keep_largest_component(xyz)  # 8-neighbours: halves 20 and 19 columns wide
    assert _valid(left)[:, :20].all() and not _valid(left)[:, 22:].any()
    both = keep_largest_component(xyz, window=3)
    np.testing.assert_array_equal(both, xyz)
    assert not _valid(keep_largest_component(xyz[:4, :5], min_points=30)).any()


def test_preprocess_sample_runs_the_three_steps(scene):
    plane, none, _ = scene
    rgb, xyz = preprocess_sample(plane.rgb, plane.xyz, seed=0)
    assert rgb.shape == (300, 300, 3) and xyz.shape == (300, 300, 3) and rgb.dtype == np.uint8
    inner = (slice(38, 262), slice(38, 262))
    part = _valid(none.xyz)
    assert (_valid(xyz[inner]) & part).sum() > 0.95 * part.sum()
    assert not (_valid(xyz[inner]) & ~part).any()
    # like the reference, the photograph is only padded, never blackened
    np.testing.assert_array_equal(rgb[inner], plane.rgb)
    assert not rgb[:38].any() and not xyz[:38].any()
    masked, xyz2 = preprocess_sample(plane.rgb, plane.xyz, seed=0, mask_background=True)
    np.testing.assert_array_equal(xyz2, xyz)
    removed = _valid(plane.xyz) & ~_valid(xyz[inner])
    assert removed.any() and (masked[inner][removed] == 0).all()  # asked for: removed points go black
    kept = _valid(xyz[inner])
    np.testing.assert_array_equal(masked[inner][kept], plane.rgb[kept])


def test_preprocess_dataset_writes_the_same_layout(tmp_path):
    src = write_dataset(tmp_path / "raw", ["ring"], n_train=1, n_validation=0, n_test_good=1,
                        n_test_per_defect=1, size=96, seed=1, background="plane")
    (src / "ring" / "calibration").mkdir()
    (src / "ring" / "calibration" / "camera_parameters.json").write_text("{}")
    dst = preprocess_dataset(src, tmp_path / "pre", progress=False)
    assert (dst / "ring" / "calibration" / "camera_parameters.json").read_text() == "{}"
    raw, pre = MVTec3D(src, "ring", "test"), MVTec3D(dst, "ring", "test")
    assert [s.name for s in raw] == [s.name for s in pre]
    for a, b in zip(raw, pre):
        assert np.asarray(Image.open(b.rgb)).shape == (100, 100, 3)
        np.testing.assert_array_equal(b.mask, pad_array_to_square(a.mask))
        assert b.label == a.label and b.defect_type == a.defect_type
    assert len(MVTec3D(dst, "ring", "train")) == 1
    with pytest.raises(ValueError, match="must differ"):
        preprocess_dataset(src, src)
