import numpy as np
import pytest
from PIL import Image

import mafr
from mafr.io import as_sample, load_rgb, load_sample, load_xyz


def _xyz(h=20, w=30):
    xyz = np.zeros((h, w, 3), np.float32)
    xyz[5:15, 5:25] = [0.01, 0.02, 0.5]
    return xyz


def test_rgb_sources_array_pil_path(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    for src in (arr, Image.fromarray(arr), tmp_path / "a.png", str(tmp_path / "a.png")):
        np.testing.assert_array_equal(load_rgb(src), arr)
    assert load_rgb(arr) is not arr


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        (np.zeros((20, 30), np.uint8), ValueError, "H x W x 3"),
        (np.zeros((20, 30, 4), np.uint8), ValueError, "3 colour channels"),
        (np.zeros((20, 30, 3), np.float32), TypeError, "uint8"),
        ([1, 2, 3], TypeError, "got list"),
    ],
)
def test_rgb_errors(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        load_rgb(bad)


def test_rgb_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_rgb(tmp_path / "nope.png")


def test_xyz_errors():
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = _xyz()
        bad[0, 0] = np.nan
        load_xyz(bad, (20, 30))
    with pytest.raises(ValueError, match="no valid 3D point"):
        load_xyz(np.zeros((20, 30, 3), np.float32), (20, 30))
    with pytest.raises(ValueError, match="aspect ratios"):
        load_xyz(_xyz(20, 20), (20, 30))
    with pytest.raises(TypeError, match="float"):
        load_xyz(np.ones((20, 30, 3), np.int32), (20, 30))
    with pytest.raises(ValueError, match="H x W x 3"):
        load_xyz(np.ones((20, 30), np.float32), (20, 30))


def test_xyz_same_aspect_is_resized_nearest_and_input_untouched(tmp_path):
    small = _xyz(10, 15)
    before = small.copy()
    out = load_xyz(small, (20, 30))
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out[::2, ::2], small)
    np.testing.assert_array_equal(small, before)
    import tifffile

    tifffile.imwrite(tmp_path / "x.tiff", _xyz(), photometric="minisblack")
    np.testing.assert_array_equal(load_xyz(tmp_path / "x.tiff", (20, 30)), _xyz())


def test_pointcloud_and_depthmap_inputs():
    K = np.array([[50.0, 0, 15], [0, 50.0, 10], [0, 0, 1]])
    depth = np.zeros((20, 30), np.float32)
    depth[5:15, 5:25] = 0.5
    from_depth = load_xyz(mafr.DepthMap(depth=depth, intrinsics=K), (20, 30))
    assert from_depth[10, 15, 2] == pytest.approx(0.5)
    pts = from_depth[depth > 0]
    from_cloud = load_xyz(mafr.PointCloud(points=pts, intrinsics=K), (20, 30))
    np.testing.assert_allclose(from_cloud, from_depth, atol=1e-6)
    with pytest.raises(ValueError, match="3 x 3"):
        mafr.PointCloud(points=pts, intrinsics=np.eye(4))
    with pytest.raises(ValueError, match="empty"):
        load_xyz(mafr.PointCloud(points=np.zeros((0, 3)), intrinsics=K), (20, 30))


def test_sample_forms():
    rgb = np.zeros((20, 30, 3), np.uint8)
    s = as_sample((rgb, _xyz()))
    assert isinstance(s, mafr.Sample)
    r, x = load_sample(mafr.Sample(rgb=rgb, xyz=_xyz()))
    assert r.shape == (20, 30, 3) and x.shape == (20, 30, 3)
    with pytest.raises(TypeError, match="mafr.Sample"):
        as_sample(rgb)
