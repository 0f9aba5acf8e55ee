import torch

from mafr.model import CBAM, Decoder, FusionAutoencoder, FusionEncoder


def test_cbam_channel_gate_sums_avg_and_max_branches():
    torch.manual_seed(0)
    cbam = CBAM(32, reduction=4, kernel_size=7, mode="grid")
    x = torch.randn(2, 5, 6, 32)
    avg, mx = x.mean(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    mlp = cbam.channel_attention.fc
    expected = torch.sigmoid(mlp(avg) + mlp(mx))
    torch.testing.assert_close(cbam.channel_attention.gate(x, "grid"), expected)
    assert expected.shape == (2, 1, 1, 32)


def test_cbam_spatial_gate_is_conv_over_mean_and_max():
    torch.manual_seed(1)
    cbam = CBAM(16, reduction=4, kernel_size=7)
    x = torch.randn(1, 9, 9, 16)
    desc = torch.stack([x.mean(-1), x.amax(-1)], 1)
    expected = torch.sigmoid(torch.nn.functional.conv2d(desc, cbam.spatial_attention.conv.weight, padding=3))
    torch.testing.assert_close(cbam.spatial_attention.gate(x, "grid"), expected.permute(0, 2, 3, 1))


def test_cbam_full_forward_applies_channel_then_spatial_gate():
    torch.manual_seed(2)
    cbam = CBAM(16, reduction=4)
    x = torch.randn(1, 7, 7, 16)
    y = x * cbam.channel_attention.gate(x, "grid")
    y = y * cbam.spatial_attention.gate(y, "grid")
    torch.testing.assert_close(cbam(x), y)


def test_pointwise_cbam_equals_grid_cbam_on_1x1_maps():
    # The reference reshapes each position to a 1 x 1 map; pointwise mode must equal that.
    torch.manual_seed(3)
    grid, point = CBAM(16, 4, 7, "grid"), CBAM(16, 4, 7, "pointwise")
    point.load_state_dict(grid.state_dict())
    x = torch.randn(3, 4, 5, 16)
    per_position = torch.stack(
        [grid(x[b, i, j].view(1, 1, 1, 16)).view(16) for b in range(3) for i in range(4) for j in range(5)]
    ).view(3, 4, 5, 16)
    torch.testing.assert_close(point(x), per_position)


def test_pointwise_cbam_does_not_mix_positions_but_grid_does():
    torch.manual_seed(4)
    for mode, mixes in (("pointwise", False), ("grid", True)):
        cbam = CBAM(8, 2, 7, mode)
        x = torch.randn(1, 6, 6, 8)
        x2 = x.clone()
        x2[0, 0, 0] += 5.0
        changed = (cbam(x2) - cbam(x)).abs().amax(-1)[0]
        changed[0, 0] = 0
        assert bool((changed > 1e-6).any()) is mixes


def test_encoder_shares_one_layernorm_and_reference_key_names():
    enc = FusionEncoder(1920, 960, 960)
    keys = set(enc.state_dict())
    assert keys == {
        "input_fc.weight", "input_fc.bias", "layers.0.weight", "layers.0.bias",
        "output_fc.weight", "output_fc.bias", "layer_norm.weight", "layer_norm.bias",
    }
    dec = Decoder(960, 768)
    prefixes = {k.rsplit(".", 1)[0] for k in dec.state_dict()}
    assert prefixes == {
        "input_fc", "layers.0", "layers.1", "output_fc", "norm", "cbam.channel_attention.fc.0",
        "cbam.channel_attention.fc.2", "cbam.spatial_attention.conv", "skip",
    }
    assert "cbam.spatial_attention.conv.bias" not in dec.state_dict()


def test_paper_sizes_and_skip_identity_when_sizes_match():
    ae = FusionAutoencoder(768, 1152)
    assert ae.encoder.input_fc.weight.shape == (960, 1920)
    assert ae.encoder.output_fc.weight.shape == (960, 960)
    assert ae.decoder_2d.output_fc.weight.shape == (768, 768)
    assert ae.decoder_3d.output_fc.weight.shape == (1152, 1152)
    assert isinstance(Decoder(64, 64).skip, torch.nn.Identity)
    ae.eval()
    r, x = torch.randn(1, 3, 3, 768), torch.randn(1, 3, 3, 1152)
    out_r, out_x = ae(r, x)
    assert out_r.shape == r.shape and out_x.shape == x.shape
    # eval is deterministic (dropout off)
    torch.testing.assert_close(ae(r, x)[0], out_r)


def test_encoder_forward_matches_spec_order():
    torch.manual_seed(5)
    enc = FusionEncoder(12, 6, 6, dropout=0.0)
    x = torch.randn(2, 3, 3, 12)
    ln = enc.layer_norm
    h = ln(torch.nn.functional.gelu(enc.input_fc(x)))
    h = ln(torch.nn.functional.gelu(enc.layers[0](h)))
    torch.testing.assert_close(enc(x), enc.output_fc(h))


def test_se_gate_is_mlp_of_the_grid_average_and_pointwise_equals_1x1_maps():
    from mafr.model import SqueezeExcitation

    torch.manual_seed(5)
    se = SqueezeExcitation(16, reduction=4, mode="grid")
    x = torch.randn(2, 5, 6, 16)
    expected = x * torch.sigmoid(se.fc(x.mean(dim=(1, 2), keepdim=True)))
    torch.testing.assert_close(se(x), expected)
    point = SqueezeExcitation(16, reduction=4, mode="pointwise")
    point.load_state_dict(se.state_dict())
    one_by_one = torch.cat([se(x[:, i : i + 1, j : j + 1]) for i in range(5) for j in range(6)], dim=1)
    torch.testing.assert_close(point(x).reshape(2, 30, 1, 16), one_by_one.reshape(2, 30, 1, 16))


def test_attention_options_keys_and_parameter_counts():
    import pytest

    models = {a: FusionAutoencoder(40, 24, attention=a) for a in ("cbam", "se", "none")}
    keys = {a: set(m.decoder_2d.state_dict()) for a, m in models.items()}
    # CBAM keeps the reference's key names (converted checkpoints load); SE and none drop the
    # spatial gate, none has no gate at all.
    assert "cbam.spatial_attention.conv.weight" in keys["cbam"]
    assert {k for k in keys["se"] if k.startswith("se.")} == {"se.fc.0.weight", "se.fc.0.bias", "se.fc.2.weight", "se.fc.2.bias"}
    assert not any(k.startswith(("cbam.", "se.")) for k in keys["none"])
    counts = {a: sum(p.numel() for p in m.parameters()) for a, m in models.items()}
    assert counts["cbam"] > counts["se"] > counts["none"]
    rgb, xyz = torch.randn(1, 4, 4, 40), torch.randn(1, 4, 4, 24)
    for m in models.values():
        out_rgb, out_xyz = m.eval()(rgb, xyz)
        assert out_rgb.shape == rgb.shape and out_xyz.shape == xyz.shape
    with pytest.raises(ValueError, match="attention must be"):
        FusionAutoencoder(40, 24, attention="eca")
