"""Fail closed (issue 11): every way a detector could silently call a part good is a typed error
or a flagged result. One test per row of the issue's table, then fault tests on saved detectors,
atomic saves and concurrent predicts."""

import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mafr
from mafr.cli import EXIT_ANOMALOUS, main
from mafr.datasets.synthetic import camera_intrinsics, generate_sample

from .conftest import tiny_config


@pytest.fixture(scope="module")
def fitted():
    parts = [generate_sample("dome", None, seed=s, size=64) for s in range(4)]
    return mafr.MAFRDetector(tiny_config(train={"steps": 8})).fit(parts, seed=0, progress=False)


@pytest.fixture(scope="module")
def hole():
    return generate_sample("dome", "hole", seed=11, size=64)


@pytest.fixture
def saved(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "det")
    return tmp_path / "det"


def _rewrite(directory: Path, edit) -> None:
    """Change the tensors of a saved detector and record the new checksum, as a consistent but
    wrong save would: the tensor checks, not the checksum, must catch it."""
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    cfg = json.loads((directory / "config.json").read_text())
    cfg["checksums"]["model.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "config.json").write_text(json.dumps(cfg))


def _cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


# ----------------------------------------------------------------------------- the table
def test_nan_weight_tensor_is_refused_on_load(saved):
    key = next(k for k in load_file(str(saved / "model.safetensors")) if k.startswith("autoencoder.") and k.endswith("weight"))
    _rewrite(saved, lambda t: t[key].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(mafr.CorruptModelError, match=rf"{key}.*NaN"):
        mafr.MAFRDetector.from_pretrained(saved)


def test_nan_threshold_refused_and_cli_exits_2(saved, hole, tmp_path, capsys):
    _rewrite(saved, lambda t: t.__setitem__("threshold", torch.tensor([float("nan")], dtype=torch.float64)))
    with pytest.raises(mafr.CorruptModelError, match="threshold is nan"):
        mafr.MAFRDetector.from_pretrained(saved)
    Image.fromarray(hole.rgb).save(tmp_path / "p.png")
    np.save(tmp_path / "p.npy", hole.xyz)
    code, err = _cli(["predict", str(saved), str(tmp_path / "p.png"), str(tmp_path / "p.npy")], capsys)
    assert code == 2 and err.startswith("mafr: error:") and "threshold" in err and "Traceback" not in err


def test_nan_threshold_set_in_memory_raises_on_predict(fitted, hole):
    det = mafr.MAFRDetector.__new__(mafr.MAFRDetector)
    det.__dict__.update(fitted.__dict__)
    det.threshold_ = float("nan")
    with pytest.raises(mafr.CorruptModelError, match="threshold"):
        det.predict(hole.rgb, hole.xyz)


def test_zero_std_statistic_is_refused(saved):
    _rewrite(saved, lambda t: t["stats.rgb_std"].zero_())
    with pytest.raises(mafr.CorruptModelError, match=r"stats.rgb_std.*non-positive"):
        mafr.MAFRDetector.from_pretrained(saved)


def test_zero_std_set_in_memory_never_judges_good(fitted, hole):
    det = mafr.MAFRDetector.__new__(mafr.MAFRDetector)
    det.__dict__.update(fitted.__dict__)
    det.stats_ = {**fitted.stats_, "rgb_std": torch.zeros_like(fitted.stats_["rgb_std"])}
    with pytest.raises(mafr.CorruptModelError, match="non-finite"):
        det.predict(hole.rgb, hole.xyz)


def test_zero_intrinsics_point_cloud_is_refused(fitted, hole):
    pts = hole.xyz[(hole.xyz != 0).any(-1)]
    with pytest.raises(mafr.InvalidInputError, match="positive focal lengths"):
        fitted.predict(hole.rgb, mafr.PointCloud(points=pts, intrinsics=np.zeros((3, 3))))


def test_degenerate_projection_is_refused(fitted, hole):
    pts = hole.xyz[(hole.xyz != 0).any(-1)]
    k = camera_intrinsics(64)
    k[0, 0] = k[1, 1] = 1e-6  # positive but every point lands on the principal point
    with pytest.raises(mafr.InvalidInputError, match="degenerate projection"):
        fitted.predict(hole.rgb, mafr.PointCloud(points=pts, intrinsics=k))


def test_one_pixel_strip_is_refused(fitted):
    rgb = np.random.default_rng(0).integers(0, 255, (1, 1000, 3), dtype=np.uint8)
    xyz = np.zeros((1, 1000, 3), np.float32)
    xyz[..., 2] = 0.5
    with pytest.raises(mafr.InvalidInputError, match="too small"):
        fitted.predict(rgb, xyz)


def test_config_json_list_is_corrupt_in_python_and_cli(saved, hole, tmp_path, capsys):
    (saved / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(mafr.CorruptModelError, match="JSON object"):
        mafr.MAFRDetector.from_pretrained(saved)
    Image.fromarray(hole.rgb).save(tmp_path / "p.png")
    np.save(tmp_path / "p.npy", hole.xyz)
    code, err = _cli(["predict", str(saved), str(tmp_path / "p.png"), str(tmp_path / "p.npy")], capsys)
    assert code == 2 and "JSON object" in err and "Traceback" not in err


def test_weights_of_the_wrong_shape_are_corrupt(saved, capsys):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model"]["latent_dim"] = 7  # the weights were fitted with another latent width
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mafr.CorruptModelError, match="does not match the config"):
        mafr.MAFRDetector.from_pretrained(saved)
    _rewrite(saved, lambda t: None)  # drop the config digest: the shapes themselves must not fit
    with pytest.raises(mafr.CorruptModelError, match="do not fit the config"):
        mafr.MAFRDetector.from_pretrained(saved)
    code, err = _cli(["info", str(saved)], capsys)  # info reads but does not build: still fine
    assert code == 0


def test_random_bytes_in_tensor_data_fail_the_checksum(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-200:-100] = np.random.default_rng(0).integers(0, 256, 100, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(mafr.CorruptModelError, match="checksum"):
        mafr.MAFRDetector.from_pretrained(saved)


def test_all_black_image_is_refused(fitted, hole):
    with pytest.raises(mafr.InvalidInputError, match="uniform"):
        fitted.predict(np.zeros_like(hole.rgb), hole.xyz)


def test_one_valid_xyz_pixel_and_one_pixel_image_are_refused(fitted, hole):
    one = np.zeros_like(hole.xyz)
    one[32, 32] = hole.xyz[32, 32] if hole.xyz[32, 32].any() else [0, 0, 0.5]
    with pytest.raises(mafr.InvalidInputError, match="valid 3D pixel"):
        fitted.predict(hole.rgb, one)
    with pytest.raises(mafr.InvalidInputError, match="too small"):
        fitted.predict(np.full((1, 1, 3), 128, np.uint8), np.full((1, 1, 3), 0.5, np.float32))


def test_interrupted_save_keeps_the_previous_detector(fitted, saved, hole, monkeypatch):
    before = mafr.MAFRDetector.from_pretrained(saved).predict(hole.rgb, hole.xyz).score
    import safetensors.torch as st

    def killed(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt  # the process dies while the weights are written

    monkeypatch.setattr(st, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        fitted.save_pretrained(saved)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert mafr.MAFRDetector.from_pretrained(saved).predict(hole.rgb, hole.xyz).score == before


def test_kill_between_renames_never_loads_a_mix(fitted, saved, monkeypatch):
    other = mafr.MAFRDetector(tiny_config(train={"steps": 3}))
    other.fit([generate_sample("dome", None, seed=s, size=64) for s in range(3)], seed=1, progress=False)
    real = os.replace
    calls = []

    def dies_after_first(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(saved)
    monkeypatch.undo()
    assert Path(calls[0]).name == "model.safetensors"  # weights first, config.json last
    with pytest.raises(mafr.CorruptModelError, match="checksum"):
        mafr.MAFRDetector.from_pretrained(saved)


def test_stale_extractor_files_are_removed_and_ignored(fitted, tmp_path, hole):
    fitted.save_pretrained(tmp_path / "d", include_extractors=True)
    assert (tmp_path / "d" / "rgb_extractor.safetensors").is_file() and (tmp_path / "d" / "point_extractor").is_dir()
    other = mafr.MAFRDetector(tiny_config(train={"steps": 3}, extractor_seed=5))
    other.fit([generate_sample("dome", None, seed=s, size=64) for s in range(3)], seed=1, progress=False)
    other.save_pretrained(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "d")
    assert again.predict(hole.rgb, hole.xyz).score == other.predict(hole.rgb, hole.xyz).score


def test_extractor_files_not_listed_in_config_are_not_used(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "d", include_extractors=True)
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert "rgb_extractor.safetensors" in cfg["checksums"]
    del cfg["checksums"]["rgb_extractor.safetensors"]
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    assert mafr.MAFRDetector.from_pretrained(tmp_path / "d").config.rgb.weights is None


@pytest.mark.parametrize("content", [b"", b"\x00" * 4096, "truncate"])
def test_truncated_empty_zeroed_weights_are_corrupt_and_cli_exits_2(saved, content, tmp_path, capsys, hole):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:300] if content == "truncate" else content)
    cfg = json.loads((saved / "config.json").read_text())
    cfg.pop("checksums")  # so the safetensors reader itself meets the damage
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(mafr.DegenerateInputWarning, match="no checksums"), pytest.raises(mafr.CorruptModelError, match="safetensors"):
        mafr.MAFRDetector.from_pretrained(saved)
    Image.fromarray(hole.rgb).save(tmp_path / "p.png")
    np.save(tmp_path / "p.npy", hole.xyz)
    code, err = _cli(["predict", str(saved), str(tmp_path / "p.png"), str(tmp_path / "p.npy")], capsys)
    assert code == 2 != EXIT_ANOMALOUS and "Traceback" not in err


def test_bad_seed_is_refused_before_any_extraction(monkeypatch):
    det = mafr.MAFRDetector(tiny_config())
    monkeypatch.setattr(det, "extract_features", lambda *a, **k: pytest.fail("features extracted before the check"))
    for seed in ("a", 1.5, True, None):
        with pytest.raises(mafr.InputTypeError, match="seed must be an integer"):
            det.fit([generate_sample("dome", None, seed=0, size=64)], seed=seed)
    with pytest.raises(mafr.InvalidInputError, match="seed must be in"):
        det.fit([generate_sample("dome", None, seed=0, size=64)], seed=-1)


def test_unreadable_part_in_a_fit_folder_is_named(tmp_path, capsys):
    for i in range(3):
        s = generate_sample("dome", None, seed=i, size=64)
        Image.fromarray(s.rgb).save(tmp_path / f"p{i}.png")
        np.save(tmp_path / f"p{i}.npy", s.xyz)
    (tmp_path / "p1.png").write_bytes((tmp_path / "p1.png").read_bytes()[:60])
    with pytest.raises(mafr.UnreadableFileError, match=r"part 2 of 3 .*p1\.png.*truncated"):
        mafr.MAFRDetector(tiny_config()).fit([(tmp_path / f"p{i}.png", tmp_path / f"p{i}.npy") for i in range(3)], progress=False)
    code, err = _cli(["fit", str(tmp_path), str(tmp_path / "out"), "--preset", "offline", "--quiet"], capsys)
    assert code == 2 and "p1.png" in err


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(mafr.ModelNotFoundError, match="detector directory not found"):
        mafr.MAFRDetector.from_pretrained("./missing_dir")
    with pytest.raises(FileNotFoundError):
        mafr.MAFRDetector.from_pretrained(tmp_path / "nope")


def test_config_reaching_outside_the_model_needs_trust(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["rgb"]["timm_kwargs"]["pretrained_cfg_overlay"] = {"file": "/etc/passwd"}
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mafr.UntrustedConfigError, match="pretrained_cfg_overlay"):
        mafr.MAFRDetector.from_pretrained(saved)
    cfg["rgb"]["timm_kwargs"].pop("pretrained_cfg_overlay")
    for field, value in (("model_name", "resnet50"), ("weights", "/tmp/elsewhere.safetensors")):
        bad = json.loads(json.dumps(cfg))
        bad["rgb"][field] = value
        (saved / "config.json").write_text(json.dumps(bad))
        with pytest.raises(mafr.UntrustedConfigError, match=field):
            mafr.MAFRDetector.from_pretrained(saved)
    cfg["points"]["weights"] = "someone/pointmae"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mafr.UntrustedConfigError, match="points.weights"):
        mafr.MAFRDetector.from_pretrained(saved)

    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2, "drop_rate": 0.0}  # drop_rate: not allow-listed
    own = mafr.MAFRDetector(tiny_config(rgb={"timm_kwargs": kwargs}, train={"steps": 2}))
    own.fit([generate_sample("dome", None, seed=s, size=64) for s in range(2)], progress=False)
    own.save_pretrained(saved.parent / "own")
    with pytest.raises(mafr.UntrustedConfigError, match="drop_rate"):
        mafr.MAFRDetector.from_pretrained(saved.parent / "own")
    det = mafr.MAFRDetector.from_pretrained(saved.parent / "own", trust_config=True)
    assert det.config.rgb.timm_kwargs["drop_rate"] == 0.0


def test_config_edited_after_the_save_does_not_match_its_weights(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["scoring"]["box5_passes"] = 0  # valid, same shapes, different scores
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mafr.CorruptModelError, match="does not match the config"):
        mafr.MAFRDetector.from_pretrained(saved)


@pytest.mark.parametrize("kind", ["png", "tiff"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_garbage_files_are_named(fitted, hole, tmp_path, kind, damage):
    Image.fromarray(hole.rgb).save(tmp_path / "p.png")
    import tifffile

    tifffile.imwrite(tmp_path / "p.tiff", hole.xyz)
    target = tmp_path / f"p.{kind}"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(len(data)))
    with pytest.raises(mafr.UnreadableFileError, match=rf"p\.{kind}") as info:
        fitted.predict(tmp_path / "p.png", tmp_path / "p.tiff")
    assert info.value.path == target and isinstance(info.value, OSError)


# ----------------------------------------------------------------------------- flags
def test_suspicious_inputs_are_flagged_and_warned(fitted, hole):
    little = np.zeros_like(hole.xyz)
    v, u = np.mgrid[28:36, 28:36]
    little[28:36, 28:36] = np.stack([u * 1e-3, v * 1e-3, np.full(u.shape, 0.5)], -1)  # 64 pixels, under 2%
    with pytest.warns(mafr.DegenerateInputWarning, match="little_3d"):
        res = fitted.predict(hole.rgb, little)
    assert "little_3d" in res.flags and res.summary()["flags"] == list(res.flags)
    with pytest.warns(mafr.DegenerateInputWarning, match="small_image"):
        good = generate_sample("dome", None, seed=3, size=64)
        small = fitted.predict(good.rgb[22:42, 22:42], good.xyz[22:42, 22:42])
    assert "small_image" in small.flags


def test_ordinary_part_has_no_flags(fitted, hole):
    res = fitted.predict(hole.rgb, hole.xyz)
    assert res.flags == () and np.isfinite(res.anomaly_map).all() and np.isfinite(res.score)


# ----------------------------------------------------------------------------- faults per file
def _nan(t):
    k = next(k for k in t if k.startswith("autoencoder."))
    t[k] = torch.full_like(t[k], float("nan"))


def _dtype(t):
    t["stats.xyz_std"] = t["stats.xyz_std"].to(torch.int64) + 1


def _ae_dtype(t):
    k = next(k for k in t if k.startswith("autoencoder.") and t[k].is_floating_point())
    t[k] = t[k].double()


def _shape(t):
    t["stats.rgb_mean"] = t["stats.rgb_mean"][:-1]
    t["stats.rgb_std"] = t["stats.rgb_std"][:-1]


def _ae_shape(t):
    k = next(k for k in t if k.startswith("autoencoder.") and t[k].ndim >= 2)
    t[k] = t[k][:-1]


def _missing(t):
    del t["stats.xyz_mean"]


def _missing_threshold(t):
    del t["threshold"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (_nan, "NaN"),
        (_dtype, "float"),
        (_ae_dtype, "dtype"),
        (_shape, "channels"),
        (_ae_shape, "do not fit"),
        (_missing, "missing stats.xyz_mean"),
        (_missing_threshold, "missing threshold"),
        (lambda t: t.__setitem__("threshold", torch.tensor([-float("inf")], dtype=torch.float64)), "threshold"),
        (lambda t: t.__setitem__("calibration.scale", torch.tensor([float("inf")])), "calibration.scale"),
        (lambda t: t.__setitem__("replay.x", torch.tensor([float("nan")])), "replay.x"),
    ],
)
def test_corrupt_tensors_are_refused(saved, edit, match):
    _rewrite(saved, edit)
    with pytest.raises(mafr.CorruptModelError, match=match):
        mafr.MAFRDetector.from_pretrained(saved)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage", "missing"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_damaged_files_are_refused(saved, name, damage):
    path = saved / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        flipped = bytearray(data)
        for i in range(len(data) // 2, len(data), max(1, len(data) // 50)):
            flipped[i] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:
        path.unlink()
    with pytest.raises((mafr.CorruptModelError, mafr.ModelNotFoundError)):
        mafr.MAFRDetector.from_pretrained(saved)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.__setitem__("version", "1"), "version"),
        (lambda c: c.__setitem__("version", 99), "newer mafr"),
        (lambda c: c.__setitem__("grid_size", -3), "grid_size"),
        (lambda c: c.__setitem__("fit", [1]), "'fit'"),
        (lambda c: c.__setitem__("checksums", ["x"]), "checksums"),
        (lambda c: c["checksums"].__setitem__("../../etc/passwd", "0"), "outside the detector"),
        (lambda c: c["checksums"].pop("model.safetensors"), "no checksum"),
    ],
)
def test_bad_config_fields_are_refused(saved, edit, match):
    cfg = json.loads((saved / "config.json").read_text())
    edit(cfg)
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mafr.CorruptModelError, match=match):
        mafr.MAFRDetector.from_pretrained(saved)


def test_errors_keep_their_builtin_bases():
    assert issubclass(mafr.InvalidInputError, ValueError) and issubclass(mafr.CorruptModelError, ValueError)
    assert issubclass(mafr.InputTypeError, TypeError) and issubclass(mafr.UnreadableFileError, OSError)
    assert issubclass(mafr.ModelNotFoundError, FileNotFoundError) and issubclass(mafr.NotFittedError, RuntimeError)
    assert all(issubclass(e, mafr.MAFRError) for e in (mafr.InvalidInputError, mafr.CorruptModelError, mafr.NotFittedError))


# ----------------------------------------------------------------------------- concurrency
def test_predict_from_threads_equals_sequential(saved):
    det = mafr.MAFRDetector.from_pretrained(saved)  # extractors not built yet: threads race to build them
    parts = [generate_sample("dome", d, seed=20 + i, size=64) for i, d in enumerate([None, "hole", "bump", None])]
    results = [None] * len(parts)

    def work(i):
        results[i] = det.predict(parts[i].rgb, parts[i].xyz)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = mafr.MAFRDetector.from_pretrained(saved)
    for part, res in zip(parts, results):
        seq = fresh.predict(part.rgb, part.xyz)
        assert res.score == pytest.approx(seq.score, rel=1e-5)
        np.testing.assert_allclose(res.anomaly_map, seq.anomaly_map, rtol=1e-4, atol=1e-6)
