"""Converting the MAFR reference code's checkpoint trio: exact weights, and an output that matches
an independent forward pass written here from docs/method.md ("Model")."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mafr
from mafr.cli import main
from mafr.convert import THRESHOLD_NOTE, convert_reference_checkpoints
from mafr.datasets.synthetic import generate_sample

from .conftest import tiny_config

# tiny_config's extractors: a width-32 ViT and a PointMAE of width 48 with 3 output blocks.
RGB, XYZ = 32, 3 * 48
CATEGORY = "cable"
TAG = "250ep_1bs"


def _config():
    return tiny_config(model={"cbam": "pointwise"})


def _linear(gen, out_dim, in_dim):
    return torch.randn(out_dim, in_dim, generator=gen) / math.sqrt(in_dim), 0.1 * torch.randn(out_dim, generator=gen)


def _norm(gen, dim):
    return 1 + 0.1 * torch.randn(dim, generator=gen), 0.1 * torch.randn(dim, generator=gen)


def reference_trio(latent=None, seed=0):
    """State dicts in the reference layout. decoder_2D stores CBAM's MLP as bias-free 1 x 1 convs,
    decoder_3D as Linear layers with bias; decoder_3D has no ``skip`` when latent == XYZ."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (RGB + XYZ) // 2
    latent = latent or hidden
    enc = {}
    for name, (o, i) in {"input_fc": (hidden, RGB + XYZ), "layers.0": (hidden, hidden), "output_fc": (latent, hidden)}.items():
        enc[f"{name}.weight"], enc[f"{name}.bias"] = _linear(gen, o, i)
    enc["layer_norm.weight"], enc["layer_norm.bias"] = _norm(gen, hidden)

    def decoder(out_dim, conv_fc):
        d = {}
        for name, (o, i) in {"input_fc": (out_dim, latent), "layers.0": (out_dim, out_dim),
                             "layers.1": (out_dim, out_dim), "output_fc": (out_dim, out_dim)}.items():
            d[f"{name}.weight"], d[f"{name}.bias"] = _linear(gen, o, i)
        d["norm.weight"], d["norm.bias"] = _norm(gen, out_dim)
        red = max(1, out_dim // 16)
        for key, (o, i) in {"fc.0": (red, out_dim), "fc.2": (out_dim, red)}.items():
            w, b = _linear(gen, o, i)
            if conv_fc:
                d[f"cbam.channel_attention.{key}.weight"] = w.reshape(o, i, 1, 1)
            else:
                d[f"cbam.channel_attention.{key}.weight"], d[f"cbam.channel_attention.{key}.bias"] = w, b
        d["cbam.spatial_attention.conv.weight"] = 0.3 * torch.randn(1, 2, 7, 7, generator=gen)
        if latent != out_dim:
            d["skip.weight"], d["skip.bias"] = _linear(gen, out_dim, latent)
        return d

    return {"fusion_encoder": enc, "decoder_2D": decoder(RGB, conv_fc=True), "decoder_3D": decoder(XYZ, conv_fc=False)}


def write_trio(folder, trio, category=CATEGORY, tag=TAG, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, state in trio.items():
        if prefix not in skip:
            torch.save(state, folder / f"{prefix}_{category}_{tag}.pth")
    return folder


# ---------------------------------------------------------------- independent reference forward
def ref_encoder(s, x):
    h = F.layer_norm(F.gelu(F.linear(x, s["input_fc.weight"], s["input_fc.bias"])), (x.shape[-1] // 2,),
                     s["layer_norm.weight"], s["layer_norm.bias"])
    h = F.layer_norm(F.gelu(F.linear(h, s["layers.0.weight"], s["layers.0.bias"])), h.shape[-1:],
                     s["layer_norm.weight"], s["layer_norm.bias"])  # the same LayerNorm again
    return F.linear(h, s["output_fc.weight"], s["output_fc.bias"])


def ref_cbam_1x1(s, v):
    """CBAM on each vector as a (C, 1, 1) map, computed the long way: pooling, (conv) MLP, a 7 x 7
    convolution over the zero-padded 1 x 1 [mean, max] map."""
    x = v.reshape(-1, v.shape[-1], 1, 1)

    def mlp(d):
        w0, w2 = s["cbam.channel_attention.fc.0.weight"], s["cbam.channel_attention.fc.2.weight"]
        if w0.ndim == 4:
            return F.conv2d(F.relu(F.conv2d(d, w0)), w2)
        h = F.relu(F.linear(d.flatten(1), w0, s["cbam.channel_attention.fc.0.bias"]))
        return F.linear(h, w2, s["cbam.channel_attention.fc.2.bias"]).reshape(d.shape)

    x = x * torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1)))
    conv = s["cbam.spatial_attention.conv.weight"]
    desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
    x = x * torch.sigmoid(F.conv2d(desc, conv, padding=conv.shape[-1] // 2))
    return x.reshape(v.shape)


def ref_decoder(s, z):
    h = z
    for name in ("input_fc", "layers.0", "layers.1"):
        h = F.gelu(F.layer_norm(F.linear(h, s[f"{name}.weight"], s[f"{name}.bias"]), s["norm.weight"].shape,
                                s["norm.weight"], s["norm.bias"]))
    skip = F.linear(z, s["skip.weight"], s["skip.bias"]) if "skip.weight" in s else z
    return F.linear(ref_cbam_1x1(s, h), s["output_fc.weight"], s["output_fc.bias"]) + skip


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("latent", [None, XYZ])
def test_converted_weights_and_forward_match_reference(tmp_path, latent):
    trio = reference_trio(latent)
    write_trio(tmp_path / "ckpt" / CATEGORY, trio)  # the reference's <folder>/<category>/ layout
    out = convert_reference_checkpoints(tmp_path / "ckpt", tmp_path / "det", CATEGORY, config=_config())
    det = mafr.MAFRDetector.from_pretrained(out, device="cpu")  # compared with CPU tensors
    assert det.config.model.cbam == "pointwise"
    assert det.config.model.latent_dim == latent  # None = the default half width
    assert det.config.model.cbam_reduction == 16 and det.config.model.cbam_kernel == 7

    got = det.autoencoder_.state_dict()
    expected = {f"encoder.{k}": v for k, v in trio["fusion_encoder"].items()}
    for part, prefix in (("decoder_2d", "decoder_2D"), ("decoder_3d", "decoder_3D")):
        for k, v in trio[prefix].items():
            expected[f"{part}.{k}"] = v.flatten(1) if v.ndim == 4 and "channel_attention" in k else v
    # Conv-shaped fc weights had no bias: the converter must have put zeros there.
    for key in ("fc.0", "fc.2"):
        k = f"decoder_2d.cbam.channel_attention.{key}.bias"
        assert not got[k].any()
        expected[k] = torch.zeros_like(got[k])
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    assert ("decoder_3d.skip.weight" in got) == (latent is None)

    gen = torch.Generator().manual_seed(1)
    rgb, xyz = torch.randn(2, 3, 5, RGB, generator=gen), torch.randn(2, 3, 5, XYZ, generator=gen)
    with torch.no_grad():
        out_rgb, out_xyz = det.autoencoder_(rgb, xyz)
        z = ref_encoder(trio["fusion_encoder"], torch.cat([rgb, xyz], -1))
        exp_rgb, exp_xyz = ref_decoder(trio["decoder_2D"], z), ref_decoder(trio["decoder_3D"], z)
    torch.testing.assert_close(out_rgb, exp_rgb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_xyz, exp_xyz, rtol=1e-5, atol=1e-5)


def test_converted_detector_state_round_trips_and_predicts(tmp_path, capsys):
    write_trio(tmp_path / "ckpt", reference_trio())
    out = convert_reference_checkpoints(tmp_path / "ckpt", tmp_path / "det", CATEGORY, config=_config())
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    det = mafr.MAFRDetector.from_pretrained(out, device="cpu")  # compared with CPU tensors
    assert det.threshold_ == math.inf
    assert det.fit_info_["converted_from"] == [f"{p}_{CATEGORY}_{TAG}.pth" for p in ("fusion_encoder", "decoder_2D", "decoder_3D")]
    assert det.fit_info_["threshold_note"] == THRESHOLD_NOTE
    for name, dim in (("rgb", RGB), ("xyz", XYZ)):
        assert torch.equal(det.stats_[f"{name}_mean"], torch.zeros(dim))
        assert torch.equal(det.stats_[f"{name}_std"], torch.ones(dim))
    card = (out / "README.md").read_text()
    assert "No threshold" in card and "Converted from the reference" in card and CATEGORY in card
    part = generate_sample("puck", seed=3, size=64)
    res = det.predict(part.rgb, part.xyz)
    # No threshold, no decision: neither "good" nor an empty defect mask (fail closed).
    assert np.isfinite(res.score) and res.is_anomalous is None and res.defect_mask is None
    assert "no_threshold" in res.flags and res.summary()["is_anomalous"] is None
    # From the command line: strict JSON (null), and an exit status of its own, not 0 ("good").
    Image.fromarray(part.rgb).save(tmp_path / "p.png")
    np.save(tmp_path / "p.npy", part.xyz)
    assert main(["predict", str(out), str(tmp_path / "p.png"), str(tmp_path / "p.npy")]) == 3
    captured = capsys.readouterr()
    line = json.loads(captured.out)
    assert line["threshold"] is None and line["is_anomalous"] is None
    assert "no decision threshold" in captured.err and "calibrate(good_parts)" in captured.err
    assert line["score"] == pytest.approx(res.score, rel=1e-4)

    out2 = convert_reference_checkpoints(tmp_path / "ckpt", tmp_path / "det2", CATEGORY, config=_config(), threshold=2.5)
    det2 = mafr.MAFRDetector.from_pretrained(out2, device="cpu")
    assert det2.threshold_ == 2.5
    assert det2.predict(part.rgb, part.xyz).is_anomalous == (res.score > 2.5)


def test_cli_convert_reference(tmp_path, capsys):
    write_trio(tmp_path / "ckpt", reference_trio())
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(_config().to_json_dict()))
    code = main(["convert", "reference", str(tmp_path / "ckpt"), str(tmp_path / "det"), "--category", CATEGORY,
                 "--config", str(cfg), "--threshold", "3", "--json", "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold"] == 3.0 and report["out_dir"] == str(tmp_path / "det")
    assert mafr.MAFRDetector.from_pretrained(tmp_path / "det").threshold_ == 3.0


def test_missing_ambiguous_and_foreign_files_give_clear_errors(tmp_path, capsys):
    trio = reference_trio()
    write_trio(tmp_path / "a", trio, skip=("decoder_3D",))
    with pytest.raises(FileNotFoundError, match=rf"missing decoder_3D_{CATEGORY}_{TAG}\.pth.*found decoder_2D_"):
        convert_reference_checkpoints(tmp_path / "a", tmp_path / "o", CATEGORY, config=_config())
    # "cable" must not pick up "cable_gland".
    write_trio(tmp_path / "b", trio, category="cable_gland")
    with pytest.raises(FileNotFoundError, match=r"no reference checkpoints for 'cable'.*fusion_encoder_cable_gland_250ep_1bs\.pth"):
        convert_reference_checkpoints(tmp_path / "b", tmp_path / "o", CATEGORY, config=_config())
    write_trio(tmp_path / "c", trio)
    write_trio(tmp_path / "c", trio, tag="100ep_1bs")
    with pytest.raises(ValueError, match=r"several reference trainings.*100ep_1bs, 250ep_1bs"):
        convert_reference_checkpoints(tmp_path / "c", tmp_path / "o", CATEGORY, config=_config())
    assert convert_reference_checkpoints(tmp_path / "c", tmp_path / "o", CATEGORY, config=_config(), tag="100ep_1bs").is_dir()

    bad = {k: dict(v) for k, v in trio.items()}
    bad["decoder_2D"]["cbam.channel_attn.fc.0.weight"] = bad["decoder_2D"].pop("cbam.channel_attention.fc.0.weight")
    write_trio(tmp_path / "d", bad)
    with pytest.raises(ValueError, match=r"decoder_2D_cable_250ep_1bs\.pth does not have the reference layout.*"
                                         r"missing keys \['cbam.channel_attention.fc.0.weight'\].*"
                                         r"unexpected keys \['cbam.channel_attn.fc.0.weight'\]"):
        convert_reference_checkpoints(tmp_path / "d", tmp_path / "o", CATEGORY, config=_config())

    # Weights for 32 + 144 channels do not fit the reference preset's DINO + PointMAE (768 + 1152).
    write_trio(tmp_path / "e", trio)
    with pytest.raises(ValueError, match=r"take 32 RGB \+ 144 3D channels.*give 768 \+ 1152"):
        convert_reference_checkpoints(tmp_path / "e", tmp_path / "o", CATEGORY)

    (tmp_path / "f").mkdir()
    torch.save({"not": "tensors"}, tmp_path / "f" / f"fusion_encoder_{CATEGORY}_{TAG}.pth")
    write_trio(tmp_path / "f", trio, skip=("fusion_encoder",))
    assert main(["convert", "reference", str(tmp_path / "f"), str(tmp_path / "o"), "--category", CATEGORY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mafr: error: ") and "not a state dict of tensors" in err and "\n" not in err
