"""Dataset readers: MVTec 3D-AD layout (via the synthetic writer) and Eyecandies' own layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mafr.datasets import (
    DEFECTS,
    EYECANDIES_CATEGORIES,
    Eyecandies,
    MVTec3D,
    categories,
    generate_sample,
    load_xyz_tiff,
    write_dataset,
)
from mafr.datasets.eyecandies import FOCAL_LENGTH, parse_simple_yaml
from mafr.datasets.synthetic import sample_seed
from mafr.types import DepthMap

SIZE = 64
COUNTS = dict(n_train=2, n_validation=1, n_test_good=2, n_test_per_defect=1)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec") / "data"
    return write_dataset(root, ["dome", "ring"], size=SIZE, seed=5, **COUNTS)


def test_written_layout_and_counts(synthetic_root):
    assert categories(synthetic_root) == ["dome", "ring"]
    assert len(MVTec3D(synthetic_root, "dome", "train")) == 2
    assert len(MVTec3D(synthetic_root, "dome", "validation")) == 1
    test = MVTec3D(synthetic_root, "ring", "test")
    assert len(test) == 2 + len(DEFECTS)
    assert test.defect_types == sorted(["good", *DEFECTS])
    files = sorted(p.relative_to(synthetic_root).as_posix() for p in synthetic_root.rglob("*") if p.is_file())
    assert "dome/train/good/rgb/001.png" in files and "dome/train/good/xyz/001.tiff" in files
    assert "dome/test/crack/gt/000.png" in files and "dome/test/good/gt/001.png" in files
    assert not any("/train/good/gt" in f or "/validation/good/gt" in f for f in files)
    assert len(files) == 2 * ((2 + 1) * 2 + (2 + len(DEFECTS)) * 3)


def test_reader_returns_what_was_generated(synthetic_root):
    test = MVTec3D(synthetic_root, "dome", "test")
    seen = set()
    for sample in test:
        split, kind, stem = sample.name.split("/")
        assert split == "test" and sample.defect_type == kind
        assert sample.label == int(kind != "good")
        assert isinstance(sample.rgb, Path) and sample.rgb.suffix == ".png"
        assert isinstance(sample.xyz, Path) and sample.xyz.suffix == ".tiff"
        ref = generate_sample("dome", None if kind == "good" else kind, size=SIZE,
                              seed=sample_seed(5, "dome", "test", kind, int(stem)))
        np.testing.assert_array_equal(sample.mask, ref.mask)
        np.testing.assert_array_equal(np.asarray(Image.open(sample.rgb)), ref.rgb)
        np.testing.assert_array_equal(load_xyz_tiff(sample.xyz), ref.xyz)
        assert sample.mask.any() == bool(sample.label)
        seen.add(kind)
    assert seen == {"good", *DEFECTS}
    gt = np.asarray(Image.open(synthetic_root / "dome/test/hole/gt/000.png"))
    assert gt.dtype == np.uint8 and set(np.unique(gt)) == {0, 255}
    train = MVTec3D(synthetic_root, "dome", "train")
    assert [s.name for s in train] == ["train/good/000", "train/good/001"]
    assert all(s.mask is None and s.label == 0 for s in train)
    assert train[-1].name == train[1].name and len(train[0:2]) == 2
    with pytest.raises(IndexError):
        train[2]


def test_same_seed_writes_byte_identical_files(tmp_path, synthetic_root):
    again = write_dataset(tmp_path / "again", ["dome", "ring"], size=SIZE, seed=5, **COUNTS)
    files = sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (synthetic_root / rel).read_bytes() == (again / rel).read_bytes(), rel
    # Different samples of one split get different seeds.
    a = np.asarray(Image.open(synthetic_root / "dome/train/good/rgb/000.png"))
    b = np.asarray(Image.open(synthetic_root / "dome/train/good/rgb/001.png"))
    assert not np.array_equal(a, b)


def test_missing_paths_and_bad_arguments(tmp_path, synthetic_root):
    with pytest.raises(FileNotFoundError, match="cube"):
        MVTec3D(synthetic_root, "cube", "train")
    with pytest.raises(FileNotFoundError, match="expected the MVTec 3D-AD layout"):
        MVTec3D(tmp_path / "nowhere", "dome", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        MVTec3D(synthetic_root, "dome", "val")
    with pytest.raises(ValueError, match="categories must be"):
        write_dataset(tmp_path / "x", ["sphere"])
    with pytest.raises(ValueError, match="n_train must be a non-negative integer"):
        write_dataset(tmp_path / "x", ["dome"], n_train=-1)
    flat = tmp_path / "flat.tiff"
    tifffile.imwrite(flat, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"H x W x 3 point map, got shape \(4, 5\)"):
        load_xyz_tiff(flat)


# --------------------------------------------------------------------------------------------
# Eyecandies: a hand-built fixture in the dataset's own layout.

H, W = 12, 16


def _write_eyecandies_sample(folder: Path, sid: str, depth_png: np.ndarray, dmin: float, dmax: float,
                             metadata: str | None, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(6):
        img = np.full((H, W, 3), 40 * k, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{sid}_image_{k}.png")
    Image.fromarray(depth_png.astype(np.uint16)).save(folder / f"{sid}_depth.png")
    (folder / f"{sid}_info_depth.yaml").write_text(
        f"normalization:\n  max: {dmax}\n  min: {dmin}\n"
    )
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / f"{sid}_normals.png")
    (folder / f"{sid}_pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    if metadata is not None:
        (folder / f"{sid}_metadata.yaml").write_text(metadata)
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{sid}_{name}.png")


@pytest.fixture(scope="module")
def eyecandies_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eyecandies")
    ramp = np.linspace(0, 65535, H * W).round().reshape(H, W)
    empty = np.zeros((H, W), bool)
    spot = empty.copy()
    spot[3:6, 4:9] = True
    train = root / "CandyCane" / "train" / "data"
    for i in range(3):
        _write_eyecandies_sample(train, f"{i:03d}", ramp, 0.5, 0.9, None, {"mask": empty})
    test = root / "CandyCane" / "test_public" / "data"
    good_meta = "anomalous: 0\n"
    bad_meta = "anomalous: 1\nbumps: 0\ncolors: 1\ndents: 0\nnormals: 0\n"
    _write_eyecandies_sample(test, "00", ramp, 0.6, 1.0, good_meta,
                             {"mask": empty, "bumps_mask": empty, "colors_mask": empty,
                              "dents_mask": empty, "normals_mask": empty})
    _write_eyecandies_sample(test, "01", ramp[::-1, ::-1], 0.7, 0.8, bad_meta,
                             {"mask": spot, "bumps_mask": empty, "colors_mask": spot,
                              "dents_mask": spot, "normals_mask": empty})
    private = root / "CandyCane" / "test_private" / "data"
    _write_eyecandies_sample(private, "00", ramp, 0.5, 0.9, None, {})
    return root


def test_eyecandies_depth_in_metres_and_intrinsics(eyecandies_root):
    data = Eyecandies(eyecandies_root, "CandyCane", "train", lighting=0)
    assert len(data) == 3 and data.ids == ["000", "001", "002"]
    s = data[1]
    assert isinstance(s.xyz, DepthMap)
    depth = np.asarray(s.xyz.depth)
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert depth[0, 0] == pytest.approx(0.5) and depth[-1, -1] == pytest.approx(0.9)
    raw = np.linspace(0, 65535, H * W).round().reshape(H, W)
    np.testing.assert_allclose(depth, raw / 65535 * 0.4 + 0.5, rtol=0, atol=1e-6)
    f = FOCAL_LENGTH * W / 512
    np.testing.assert_allclose(s.xyz.intrinsics, [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    assert s.rgb == eyecandies_root / "CandyCane/train/data/001_image_0.png"
    assert (s.label, s.defect_type, s.name) == (0, "good", "train/001")
    assert s.mask is not None and not s.mask.any()


def test_eyecandies_labels_masks_lighting_and_aliases(eyecandies_root):
    test = Eyecandies(eyecandies_root, "candy cane", "test")  # case/space-insensitive, alias
    assert test.category == "CandyCane" and test.split == "test_public" and len(test) == 2
    good, bad = test[0], test[1]
    assert (good.label, good.defect_type, good.name) == (0, "good", "test_public/00")
    assert not good.mask.any()
    assert bad.label == 1 and bad.defect_type == "colors+dents"
    expected = np.zeros((H, W), bool)
    expected[3:6, 4:9] = True
    np.testing.assert_array_equal(bad.mask, expected)
    np.testing.assert_allclose(np.asarray(bad.xyz.depth)[0, 0], 0.8, atol=1e-6)  # flipped ramp
    assert bad.rgb.name == "01_image_4.png"  # default lighting: the left spotlight
    mean = Eyecandies(eyecandies_root, "CandyCane", "test_public", lighting="mean")[0].rgb
    assert mean.dtype == np.uint8 and mean.shape == (H, W, 3)
    assert np.all(mean == 100)  # mean of 0, 40, ..., 200
    private = Eyecandies(eyecandies_root, "CandyCane", "test_private")[0]
    assert private.label is None and private.mask is None and private.defect_type is None


def test_eyecandies_errors(eyecandies_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="known categories"):
        Eyecandies(eyecandies_root, "Lollipop", "train")
    with pytest.raises(FileNotFoundError, match="split folder not found"):
        Eyecandies(eyecandies_root, "CandyCane", "val")
    with pytest.raises(ValueError, match="lighting must be an integer 0-5 or 'mean'"):
        Eyecandies(eyecandies_root, "CandyCane", "train", lighting=6)
    with pytest.raises(ValueError, match="split must be one of"):
        Eyecandies(eyecandies_root, "CandyCane", "training")
    assert "Lollipop" in EYECANDIES_CATEGORIES and len(EYECANDIES_CATEGORIES) == 10
    broken = tmp_path / "Confetto" / "train" / "data"
    _write_eyecandies_sample(broken, "000", np.zeros((H, W)), 0.5, 0.9, None, {})
    (broken / "000_info_depth.yaml").write_text("scale: 3\n")
    with pytest.raises(ValueError, match="normalization"):
        Eyecandies(tmp_path, "Confetto", "train")[0]


def test_simple_yaml_parser():
    text = (
        "# depth info\nnormalization:\n  max: 1.25\n  min: 5.0e-1\nsize: [512, 512]\n"
        "name: 'candy'\nflags:\n  - 1\n  - 0\nnested:\n  inner:\n    ok: true\nlast: null\n"
    )
    assert parse_simple_yaml(text) == {
        "normalization": {"max": 1.25, "min": 0.5},
        "size": [512, 512],
        "name": "candy",
        "flags": [1, 0],
        "nested": {"inner": {"ok": True}},
        "last": None,
    }
