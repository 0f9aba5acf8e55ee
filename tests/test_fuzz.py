"""Property-based fuzzing of the input boundary and of saved detectors (issue 11): whatever comes
in, the outcome is a clear mafr error or a finite, well-formed result; a corrupted detector never
loads. Example counts are kept small so the whole file runs well within a minute."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mafr
from mafr.datasets.synthetic import camera_intrinsics, generate_sample

from .conftest import tiny_config

FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)


@pytest.fixture(scope="module")
def fitted():
    parts = [generate_sample("dome", None, seed=s, size=64) for s in range(3)]
    return mafr.MAFRDetector(tiny_config(train={"steps": 3})).fit(parts, seed=0, progress=False)


@pytest.fixture(scope="module")
def part():
    return generate_sample("dome", "bump", seed=5, size=64)


def _judge(det, rgb, xyz):
    """Predict; a mafr error is a pass, anything else must be a finite, well-formed result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mafr.DegenerateInputWarning)
        try:
            res = det.predict(rgb, xyz)
        except mafr.MAFRError as err:
            assert str(err)  # names the cause
            return None
    h, w = np.asarray(res.rgb).shape[:2]
    for m in (res.anomaly_map, res.map_2d, res.map_3d):
        assert m.shape == (h, w) and m.dtype == np.float32 and np.isfinite(m).all() and (m >= 0).all()
    assert np.isfinite(res.score) and np.isfinite(res.threshold) and res.is_anomalous == (res.score > res.threshold)
    assert set(res.flags) <= {"small_image", "little_3d", "no_threshold"}
    return res


DTYPES = st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_, np.uint16])


@FUZZ
@given(h=st.integers(0, 80), w=st.integers(0, 80), c=st.integers(1, 4), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_rgb_shapes_and_dtypes(fitted, part, h, w, c, dtype, seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, c)).astype(dtype)
    xyz = part.xyz if (h, w) == (64, 64) else part.xyz  # aspect mismatches are part of the fuzz
    _judge(fitted, rgb, xyz)


SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30, 1e-30, 3.4e38])


@FUZZ
@given(
    n_bad=st.integers(0, 50), value=SPECIAL, dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32]),
    keep=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
)
def test_xyz_values_dtypes_and_missing_patterns(fitted, part, n_bad, value, dtype, keep, seed):
    rng = np.random.default_rng(seed)
    xyz = part.xyz.astype(np.float64)
    xyz[rng.random(xyz.shape[:2]) > keep] = 0.0  # drop a share of the measurements
    flat = xyz.reshape(-1)
    flat[rng.integers(0, flat.size, n_bad)] = value
    with np.errstate(all="ignore"):
        _judge(fitted, part.rgb, xyz.astype(dtype))


MATRIX_VALUE = st.one_of(st.floats(-1e4, 1e4, allow_nan=False), st.sampled_from([0.0, np.nan, np.inf, -1.0, 1e-9, 1e12]))


@FUZZ
@given(
    k=st.lists(MATRIX_VALUE, min_size=9, max_size=9),
    use_camera=st.booleans(),
    ext=st.one_of(st.none(), st.lists(MATRIX_VALUE, min_size=16, max_size=16)),
)
def test_intrinsics_and_extrinsics(fitted, part, k, use_camera, ext):
    pts = part.xyz[(part.xyz != 0).any(-1)]
    K = camera_intrinsics(64) if use_camera else np.asarray(k).reshape(3, 3)
    try:
        cloud = mafr.PointCloud(points=pts, intrinsics=K, extrinsics=None if ext is None else np.asarray(ext).reshape(4, 4))
    except ValueError:  # pydantic's ValidationError: refused when the cloud is built, with a message
        return
    with np.errstate(all="ignore"):
        _judge(fitted, part.rgb, cloud)


@FUZZ
@given(h=st.integers(1, 300), w=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_tiny_and_elongated_sizes(fitted, part, h, w, seed):
    from mafr.io import resize_nearest

    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    _judge(fitted, rgb, resize_nearest(part.xyz, h, w))


@settings(max_examples=1, deadline=None)
@given(st.just(None))
def test_huge_coordinates_are_judged_or_refused(fitted, part, _):
    for scale in (1e3, 1e6, 1e12, 1e30):
        _judge(fitted, part.rgb, (part.xyz.astype(np.float64) * scale))


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "det"
    fitted.save_pretrained(path)
    return path


@FUZZ
@given(name=st.sampled_from(["model.safetensors", "config.json"]), data=st.data())
def test_corrupted_bytes_never_load_silently(saved, tmp_path_factory, name, data):
    import shutil

    copy = tmp_path_factory.mktemp("c") / "det"
    shutil.copytree(saved, copy)
    raw = bytearray((copy / name).read_bytes())
    n = data.draw(st.integers(1, 8))
    for _ in range(n):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255).filter(lambda b, old=raw[i]: b != old))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    (copy / name).write_bytes(bytes(raw))
    if name == "config.json":
        try:
            edited = json.loads(bytes(raw))
        except ValueError:
            edited = None
        original = json.loads((saved / name).read_text())
        if isinstance(edited, dict) and {k: v for k, v in edited.items() if k not in ("fit", "metrics", "mafr_version")} == {
            k: v for k, v in original.items() if k not in ("fit", "metrics", "mafr_version")
        }:
            return  # only the fit description changed (e.g. a digit of fit_seconds): nothing to refuse
    with pytest.raises(mafr.MAFRError):
        mafr.MAFRDetector.from_pretrained(copy)


@FUZZ
@given(seed=st.integers(0, 2**16), keep=st.floats(0.0, 1.0), relief_mm=st.floats(-3.0, 3.0), stride=st.sampled_from([1, 2]))
def test_deviation_rises_and_sinks_are_finite_non_negative_and_zero_where_unmeasured(seed, keep, relief_mm, stride):
    # Any measured pattern (from none to all pixels) and relief: the rises and sinks stay finite,
    # never negative, and exactly zero where nothing was measured.
    import torch

    from mafr.extractors.offline import SurfaceDeviationExtractor

    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:40, 0:40].astype(np.float64)
    z = 0.5 + 0.0002 * u + relief_mm * 1e-3 * np.exp(-((u - 20) ** 2 + (v - 20) ** 2) / 18.0) + rng.normal(0, 2e-4, u.shape)
    xyz = torch.tensor(np.stack([u * 5e-4, v * 5e-4, z], -1), dtype=torch.float32)[None]
    valid = torch.from_numpy(rng.random(u.shape) < keep)[None]
    xyz = xyz * valid.unsqueeze(-1)
    out = SurfaceDeviationExtractor((3.0, 6.0), stride=stride, peaks=True)(xyz, valid)[0]
    assert out.shape == (5, 40, 40) and bool(torch.isfinite(out).all())
    assert float(out[:4].min()) >= 0.0
    assert float(out[:, ~valid[0]].abs().sum()) == 0.0
