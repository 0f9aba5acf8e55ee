"""Device, precision and threads: the device code paths run on CPU here; CUDA-only tests skip
without a GPU."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr import training as training_module
from mafr import runtime
from mafr.datasets.synthetic import generate_sample

from .conftest import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _parts(n=4):
    return [generate_sample("dome", seed=s, size=64) for s in range(n)]


@pytest.fixture(scope="module")
def fitted():
    return mafr.MAFRDetector(tiny_config(), device="cpu").fit(_parts(), progress=False)


# ------------------------------------------------------------------ device
def test_auto_picks_cuda_when_available_else_cpu():
    assert runtime.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert mafr.MAFRDetector(tiny_config()).device == runtime.resolve_device("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        mafr.MAFRDetector(tiny_config(), device="cuda")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=12).filter(lambda s: s.strip().lower() not in {"cpu", "cuda", "mps", "auto"} and not s.strip().lower().startswith("cuda:")))
def test_unknown_device_strings_are_refused(text):
    with pytest.raises(ValueError, match="device must be"):
        runtime.resolve_device(text)


@given(st.one_of(st.integers(), st.floats(), st.none(), st.lists(st.integers())))
def test_device_of_the_wrong_type_is_refused(value):
    with pytest.raises(TypeError, match="device must be a str or torch.device"):
        mafr.MAFRDetector(tiny_config(), device=value)


def test_to_returns_the_detector_and_moves_its_state(fitted):
    assert fitted.to("cpu") is fitted and fitted.device == torch.device("cpu")
    assert next(fitted.autoencoder_.parameters()).device.type == "cpu"
    assert all(v.device.type == "cpu" for v in fitted.stats_.values())


def test_results_are_cpu_numpy(fitted):
    probe = generate_sample("dome", "bump", seed=9, size=64)
    res = fitted.predict(probe.rgb, probe.xyz)
    for arr in (res.anomaly_map, res.map_2d, res.map_3d):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (64, 64)
    assert isinstance(res.score, float)


def test_a_saved_detector_remembers_no_device(fitted, tmp_path):
    det = mafr.MAFRDetector(tiny_config(), device="cpu", precision="bf16", threads=1).fit(_parts(3), progress=False)
    det.save_pretrained(tmp_path / "d")
    raw = json.loads((tmp_path / "d" / "config.json").read_text())
    assert not {"device", "precision", "threads"} & set(raw)
    loaded = mafr.MAFRDetector.from_pretrained(tmp_path / "d")
    assert loaded.device == runtime.resolve_device("auto") and loaded.precision == "fp32" and loaded.threads is None
    again = mafr.MAFRDetector.from_pretrained(tmp_path / "d", device="cpu", precision="bf16", threads=1)
    assert (again.device.type, again.precision, again.threads) == ("cpu", "bf16", 1)


def test_blocked_loss_reads_train_the_same_network(monkeypatch):
    """Off the CPU losses are read every few steps; the arithmetic must not change."""
    cfg = tiny_config(train={"steps": 12, "early_stop_patience": None})
    per_step = mafr.MAFRDetector(cfg, device="cpu").fit(_parts(), progress=False)
    monkeypatch.setattr(training_module, "sync_every", lambda device: 5)
    blocked = mafr.MAFRDetector(cfg, device="cpu").fit(_parts(), progress=False)
    assert blocked.fit_info_["steps"] == per_step.fit_info_["steps"] == 12
    for (k, a), b in zip(per_step.autoencoder_.state_dict().items(), blocked.autoencoder_.state_dict().values()):
        assert torch.equal(a, b), k


def test_blocked_loss_reads_stop_early_at_most_one_block_late(monkeypatch):
    cfg = tiny_config(train={"steps": 400, "early_stop_patience": 5, "early_stop_tol": 0.5})
    per_step = mafr.MAFRDetector(cfg, device="cpu").fit(_parts(), progress=False)
    monkeypatch.setattr(training_module, "sync_every", lambda device: 7)
    blocked = mafr.MAFRDetector(cfg, device="cpu").fit(_parts(), progress=False)
    n, m = per_step.fit_info_["steps"], blocked.fit_info_["steps"]
    assert n < 400 and n <= m < n + 7


# ------------------------------------------------------------------ precision
@given(st.text(max_size=8).filter(lambda s: s not in runtime.PRECISIONS))
def test_unknown_precision_is_refused(text):
    with pytest.raises(ValueError, match="precision must be one of"):
        mafr.MAFRDetector(tiny_config(), device="cpu", precision=text)


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        mafr.MAFRDetector(tiny_config(), device="cpu", precision="fp16")


def test_bf16_fit_and_predict_on_cpu_give_fp32_results():
    det = mafr.MAFRDetector(tiny_config(), device="cpu", precision="bf16").fit(_parts(), progress=False)
    assert det.autoencoder_.encoder.input_fc.weight.dtype == torch.float32  # autocast, not a bf16 copy
    probe = generate_sample("dome", "bump", seed=9, size=64)
    res = det.predict(probe.rgb, probe.xyz)
    assert np.isfinite(res.score) and res.anomaly_map.dtype == np.float32
    assert np.isfinite(det.threshold_)


def test_extractors_built_inside_inference_mode_hold_ordinary_parameters():
    # Found on a GPU: a detector whose extractors were first built inside predict (inference
    # mode), then moved with det.to(), failed under bf16 autocast ("Inference tensors do not track
    # version counter"). Building them outside inference mode is the fix; it is checkable here.
    det = mafr.MAFRDetector(tiny_config(), device="cpu", precision="bf16")
    with torch.inference_mode():
        modules = (det.rgb_extractor, det.point_extractor)
    assert not any(p.is_inference() for m in modules for p in m.parameters())
    for m in modules:  # what a device move does to each parameter, then a bf16 forward
        m.to(torch.float64).to(torch.float32)
    det.fit(_parts(), progress=False)
    probe = generate_sample("dome", "bump", seed=9, size=64)
    assert np.isfinite(det.predict(probe.rgb, probe.xyz).score)


def test_grouping_ignores_a_callers_autocast():
    from mafr.extractors import PointMAEConfig, PointMAEEncoder

    enc = PointMAEEncoder.random(PointMAEConfig(num_groups=16, group_size=8, embed_dim=24, depth=2, num_heads=4, out_indices=(1,)))
    points = torch.randn(1, 500, 3)
    _, centres = enc(points)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, centres_bf16 = enc(points)
    assert centres_bf16.dtype == torch.float32 and torch.equal(centres, centres_bf16)


# ------------------------------------------------------------------ threads
def test_threads_apply_inside_calls_and_are_restored():
    seen = []

    class Recording:
        def __init__(self, items):
            self.items = items

        def __iter__(self):
            seen.append(torch.get_num_threads())
            return iter(self.items)

    before = torch.get_num_threads()
    mafr.MAFRDetector(tiny_config(train={"steps": 2}), device="cpu", threads=1).fit(Recording(_parts(2)), progress=False)
    assert seen == [1] and torch.get_num_threads() == before


@given(st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=3)))
def test_bad_thread_counts_are_refused(value):
    with pytest.raises(ValueError, match="threads must be a positive int"):
        mafr.MAFRDetector(tiny_config(), device="cpu", threads=value)


def test_cli_default_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv("MAFR_THREADS", "3")
    assert runtime.default_cli_threads() == 3
    monkeypatch.delenv("MAFR_THREADS")
    assert 1 <= runtime.default_cli_threads() <= 8
    monkeypatch.setenv("MAFR_THREADS", "many")
    with pytest.raises(ValueError, match="MAFR_THREADS"):
        runtime.default_cli_threads()


# ------------------------------------------------------------------ CUDA
@cuda
def test_cuda_fit_and_predict_match_cpu_and_return_cpu_numpy():
    parts = _parts()
    cpu = mafr.MAFRDetector(tiny_config(), device="cpu").fit(parts, progress=False)
    gpu = mafr.MAFRDetector(tiny_config(), device="cuda").fit(parts, progress=False)
    assert next(gpu.autoencoder_.parameters()).device.type == "cuda"
    probe = generate_sample("dome", "bump", seed=9, size=64)
    a, b = cpu.predict(probe.rgb, probe.xyz), gpu.predict(probe.rgb, probe.xyz)
    assert isinstance(b.anomaly_map, np.ndarray) and b.anomaly_map.dtype == np.float32
    assert np.isfinite(b.score) and b.score == pytest.approx(a.score, rel=0.2)


@cuda
def test_cuda_farthest_point_sampling_chooses_the_cpu_paths_centres():
    from mafr.extractors import _fps_kernel
    from mafr.extractors.pointops import _fps_torch, farthest_point_sample

    g = torch.Generator().manual_seed(4)
    clouds = torch.rand(3, 8192, 3, generator=g) + torch.tensor([0.0, 0.0, 0.5])
    want = farthest_point_sample(clouds, 1024)
    got = farthest_point_sample(clouds.cuda(), 1024)
    assert got.device.type == "cuda" and torch.equal(got.cpu(), want)
    assert torch.equal(_fps_torch(clouds.cuda(), 1024, 0, None).cpu(), want)  # the fallback loop
    if _fps_kernel.triton is not None:
        assert torch.equal(_fps_kernel.farthest_point_sample_kernel(clouds.cuda(), 1024, 0, None).cpu(), want)


@cuda
def test_cuda_update_mixes_replayed_and_new_parts():
    # Replayed parts are stored on the CPU, new ones extracted on the GPU (failed on an H100).
    det = mafr.MAFRDetector(tiny_config(), device="cuda").fit(_parts(), progress=False)
    new = [generate_sample("dome", seed=s, size=64) for s in range(30, 34)]
    assert det.update(new, seed=0) is det and np.isfinite(det.threshold_)
    probe = generate_sample("dome", "bump", seed=9, size=64)
    assert np.isfinite(det.predict(probe.rgb, probe.xyz).score)


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision(precision, tmp_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    det = mafr.MAFRDetector(tiny_config(), device="cuda", precision=precision).fit(_parts(), progress=False)
    det.save_pretrained(tmp_path / "d")
    loaded = mafr.MAFRDetector.from_pretrained(tmp_path / "d", device="cpu")
    probe = generate_sample("dome", "bump", seed=9, size=64)
    assert np.isfinite(det.predict(probe.rgb, probe.xyz).score) and np.isfinite(loaded.predict(probe.rgb, probe.xyz).score)
    if precision == "fp16":
        with pytest.raises(ValueError, match="needs a GPU"):
            det.to("cpu")
    else:
        assert det.to("cpu").predict(probe.rgb, probe.xyz).anomaly_map.shape == (64, 64)


# ------------------------------------------------------------------ CLI
def test_cli_threads_are_checked_and_restored(tmp_path, capsys):
    from mafr.cli import main

    before = torch.get_num_threads()
    rc = main(["fit", str(tmp_path / "none"), str(tmp_path / "out"), "--threads", "0", "--quiet"])
    assert rc == 2 and "threads must be a positive int" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "no-detector"), "--threads", str(before % 2 + 1), "--quiet",
               str(tmp_path / "a.png"), str(tmp_path / "a.tiff")])
    assert rc == 2 and torch.get_num_threads() == before


def test_cli_unknown_device_is_one_error_line(tmp_path, capsys):
    from mafr.cli import main

    from PIL import Image

    parts = tmp_path / "parts"
    parts.mkdir()
    part = generate_sample("dome", seed=0, size=64)
    Image.fromarray(part.rgb).save(parts / "p.png")
    np.save(parts / "p.npy", part.xyz)
    rc = main(["fit", str(parts), str(tmp_path / "out"), "--preset", "offline", "--device", "tpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "device must be" in err[0]
