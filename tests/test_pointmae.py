"""PointMAE encoder: fast path, an independent reference forward, conversion, IO and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import mafr
from mafr.convert import convert_pointmae_checkpoint
from mafr.extractors.pointmae import PointMAEConfig, PointMAEEncoder

TINY = dict(num_groups=32, group_size=16, embed_dim=48, depth=4, num_heads=4, out_indices=(1, 2, 3))


def tiny_config(**overrides) -> PointMAEConfig:
    return PointMAEConfig(**{**TINY, **overrides})


def surface_points(n: int, seed: int = 0) -> torch.Tensor:
    """Points on a bumpy sphere 0.4 m in front of the origin, as a (1, n, 3) cloud."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    r = 0.05 * (1 + 0.1 * torch.sin(5 * d[:, :1]))
    return (d * r + torch.tensor([0.0, 0.0, 0.4], dtype=torch.float64)).float()[None]


# ---------------------------------------------------------------- the published layout, by hand


def official_shapes(c: int, depth: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of Point-MAE's MaskTransformer encoder (models/Point_MAE.py), written out."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (cin, cout) in {"first_conv.0": (3, 128), "first_conv.3": (128, 256),
                              "second_conv.0": (512, 512), "second_conv.3": (512, c)}.items():
        shapes[f"encoder.{name}.weight"] = (cout, cin, 1)
        shapes[f"encoder.{name}.bias"] = (cout,)
    for name, ch in {"first_conv.1": 128, "second_conv.1": 512}.items():
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"encoder.{name}.{p}"] = (ch,)
        shapes[f"encoder.{name}.num_batches_tracked"] = ()
    shapes.update({"pos_embed.0.weight": (128, 3), "pos_embed.0.bias": (128,),
                   "pos_embed.2.weight": (c, 128), "pos_embed.2.bias": (c,)})
    for i in range(depth):
        b = f"blocks.blocks.{i}."
        shapes.update({
            b + "norm1.weight": (c,), b + "norm1.bias": (c,),
            b + "attn.qkv.weight": (3 * c, c),  # no qkv bias
            b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
            b + "norm2.weight": (c,), b + "norm2.bias": (c,),
            b + "mlp.fc1.weight": (hidden, c), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (c, hidden), b + "mlp.fc2.bias": (c,),
        })
    shapes.update({"norm.weight": (c,), "norm.bias": (c,)})
    return shapes


def random_state_dict(
    c: int = 48, depth: int = 4, hidden: int = 192, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights in the official layout: activations O(1), BN statistics non-trivial."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(c, depth, hidden).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif key.endswith("running_mean"):
            sd[key] = torch.randn(shape, generator=g) * 0.2
        elif "norm" in key or key.endswith(("conv.1.weight", "conv.1.bias")):  # LN / BN affine
            noise = torch.randn(shape, generator=g)
            sd[key] = 1 + 0.2 * noise if key.endswith("weight") else 0.1 * noise
        elif key.endswith("weight"):
            fan_in = shape[1] if len(shape) > 1 else 1
            sd[key] = torch.randn(shape, generator=g) / fan_in**0.5
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    # points are centimetres from their centre: scale the first layers so they see O(1) inputs
    sd["encoder.first_conv.0.weight"] *= 20.0
    sd["pos_embed.0.weight"] *= 5.0
    return sd


def write_official_checkpoint(path: Path, sd: dict[str, torch.Tensor]) -> None:
    """torch.save a Point-MAE-style pre-training checkpoint: DataParallel prefix, decoder junk."""
    base = {f"module.MAE_encoder.{k}": v for k, v in sd.items()}
    c = sd["norm.weight"].shape[0]
    base.update({
        "module.mask_token": torch.zeros(1, 1, c),
        "module.decoder_pos_embed.0.weight": torch.zeros(128, 3),
        "module.MAE_decoder.blocks.0.norm1.weight": torch.ones(c),
        "module.MAE_decoder.norm.weight": torch.ones(c),
        "module.increase_dim.0.weight": torch.zeros(96, c, 1),
    })
    torch.save({"base_model": base, "epoch": 1, "metrics": {"acc": 0.0}}, path)


# ---------------------------------------------------------------- an independent forward pass


def ref_fps(p: torch.Tensor, m: int) -> list[int]:
    chosen = [0]
    min_d = ((p - p[0]) ** 2).sum(-1)
    for _ in range(m - 1):
        nxt = int(torch.argmax(min_d))
        chosen.append(nxt)
        min_d = torch.minimum(min_d, ((p - p[nxt]) ** 2).sum(-1))
    return chosen


def ref_mini_pointnet(sd: dict[str, torch.Tensor], groups: torch.Tensor) -> torch.Tensor:
    """groups (G, K, 3) -> (G, C): Point-MAE's Encoder with Conv1d and inference-mode BN."""
    def conv(x, name):
        return F.conv1d(x, sd[f"encoder.{name}.weight"], sd[f"encoder.{name}.bias"])

    def bn(x, name):
        p = f"encoder.{name}."
        return F.batch_norm(
            x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
            training=False, eps=1e-5,
        )

    k = groups.shape[1]
    f = conv(groups.transpose(1, 2), "first_conv.0")
    f = conv(F.relu(bn(f, "first_conv.1")), "first_conv.3")
    glob = f.max(dim=2, keepdim=True).values
    f = torch.cat([glob.expand(-1, -1, k), f], dim=1)
    f = conv(F.relu(bn(conv(f, "second_conv.0"), "second_conv.1")), "second_conv.3")
    return f.max(dim=2).values


def ref_forward(
    sd: dict[str, torch.Tensor], cfg: dict, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/method.md's description of the 3D extractor, written out for one cloud."""
    p = points[0]
    centres = p[ref_fps(p, cfg["num_groups"])]
    d = ((centres[:, None] - p[None]) ** 2).sum(-1)
    groups = p[d.argsort(dim=1)[:, : cfg["group_size"]]] - centres[:, None]
    x = ref_mini_pointnet(sd, groups)
    pos = F.gelu(centres @ sd["pos_embed.0.weight"].T + sd["pos_embed.0.bias"])
    pos = pos @ sd["pos_embed.2.weight"].T + sd["pos_embed.2.bias"]
    c, h = cfg["embed_dim"], cfg["num_heads"]

    def ln(t, name):
        return F.layer_norm(t, (c,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    outs = {}
    for i in range(cfg["depth"]):
        b = f"blocks.blocks.{i}."
        x = x + pos
        q, k, v = (ln(x, b + "norm1") @ sd[b + "attn.qkv.weight"].T).split(c, dim=-1)
        q, k, v = (t.reshape(-1, h, c // h).transpose(0, 1) for t in (q, k, v))  # (H, G, hd)
        att = torch.softmax((q @ k.transpose(1, 2)) * (c // h) ** -0.5, dim=-1)
        a = (att @ v).transpose(0, 1).reshape(-1, c)
        x = x + a @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        m = F.gelu(ln(x, b + "norm2") @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        x = x + m @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        outs[i] = ln(x, "norm")
    return torch.cat([outs[i] for i in cfg["out_indices"]], dim=-1)[None], centres[None]


# ---------------------------------------------------------------- tests


def test_fast_mini_pointnet_equals_conv1d_formulation() -> None:
    model = PointMAEEncoder(tiny_config())
    sd = random_state_dict(seed=1)
    model.load_weights(sd)
    g = torch.Generator().manual_seed(0)
    groups = torch.randn(2, 70, 16, 3, generator=g) * 0.05  # 140 groups: 3 chunks, one partial
    fast = model.encoder(groups)
    ref = ref_mini_pointnet(sd, groups.reshape(-1, 16, 3)).reshape(2, 70, -1)
    assert fast.shape == (2, 70, 48)
    assert ref.abs().mean() > 0.1  # a non-trivial comparison
    assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-4)
    # weights loaded later are used: the BN folding is not stale
    sd2 = random_state_dict(seed=2)
    model.load_state_dict(sd2)
    ref2 = ref_mini_pointnet(sd2, groups.reshape(-1, 16, 3)).reshape(2, 70, -1)
    assert torch.allclose(model.encoder(groups), ref2, atol=1e-4, rtol=1e-4)


def test_converted_official_checkpoint_matches_independent_forward(tmp_path: Path) -> None:
    sd = random_state_dict(seed=3)
    src = tmp_path / "pointmae_pretrain.pth"
    write_official_checkpoint(src, sd)
    dst = convert_pointmae_checkpoint(
        src, tmp_path / "converted", out_indices=(1, 2, 3), num_heads=4, num_groups=32,
        group_size=16,
    )
    assert dst == tmp_path / "converted"
    # decoder and mask token dropped, prefixes stripped, every encoder name kept
    assert sorted(load_file(str(dst / "model.safetensors"))) == sorted(sd)
    model = PointMAEEncoder.from_pretrained(dst)
    assert model.config == tiny_config()
    points = surface_points(500, seed=5)
    feats, centres = model(points)
    ref_feats, ref_centres = ref_forward(sd, TINY, points)
    assert feats.shape == (1, 32, 144) and centres.shape == (1, 32, 3)
    assert torch.equal(centres, ref_centres)
    assert torch.allclose(feats, ref_feats, atol=1e-4, rtol=1e-4)


def test_forward_batch_dtype_and_inputs_untouched() -> None:
    model = PointMAEEncoder(tiny_config())
    model.load_weights(random_state_dict(seed=4))
    a, b = surface_points(300, seed=1), surface_points(300, seed=2)
    batch = torch.cat([a, b]).double()
    before = batch.clone()
    feats, centres = model(batch)
    assert torch.equal(batch, before)
    assert feats.dtype == torch.float32 and not feats.requires_grad
    fa, ca = model(a)
    assert torch.allclose(feats[:1], fa, atol=1e-5) and torch.equal(centres[:1], ca)
    model.train()  # inference semantics regardless of the module mode
    assert torch.equal(model(a)[0], fa)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = tiny_config(fps_max_points=200)
    model = PointMAEEncoder(cfg)
    model.load_weights(random_state_dict(seed=6))
    out = model.save_pretrained(tmp_path / "m")
    written = json.loads((out / "config.json").read_text())
    header = {"architecture": "pointmae_encoder", "format_version": 1}
    assert written == {**header, **cfg.model_dump(mode="json")}
    points = surface_points(400, seed=7)
    feats, centres = model(points)
    for source in (out, out / "model.safetensors"):  # directory, or the file with its header config
        loaded = PointMAEEncoder.from_pretrained(source)
        assert loaded.config == cfg
        f2, c2 = loaded(points)
        assert torch.equal(f2, feats) and torch.equal(c2, centres)


def _hub_cache(root: Path, model: PointMAEEncoder) -> str:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "models--org--pointmae-tiny"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_from_pretrained_hub_cache_offline(tmp_path: Path) -> None:
    model = PointMAEEncoder.random(tiny_config(), seed=3)
    cache = tmp_path / "hub"
    commit = _hub_cache(cache, model)
    points = surface_points(300, seed=8)
    expected = model(points)[0]
    repo = "org/pointmae-tiny"
    loaded = PointMAEEncoder.from_pretrained(repo, cache_dir=cache, local_files_only=True)
    assert torch.equal(loaded(points)[0], expected)
    pinned = PointMAEEncoder.from_pretrained(
        repo, revision=commit, cache_dir=cache, local_files_only=True
    )
    assert pinned.config == model.config

    # a fresh interpreter with HF_HUB_OFFLINE=1 and the cache found through HF_HUB_CACHE
    out = tmp_path / "features.safetensors"
    code = (
        "import sys, torch; from safetensors.torch import save_file;"
        "from mafr.extractors.pointmae import PointMAEEncoder;"
        "m = PointMAEEncoder.from_pretrained('org/pointmae-tiny');"
        "save_file({'f': m(torch.load(sys.argv[1]))[0]}, sys.argv[2])"
    )
    torch.save(points, tmp_path / "points.pt")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "home"),
        # Prepended, not replaced: the caller's path may hold this package's dependencies.
        "PYTHONPATH": os.pathsep.join(p for p in (str(Path(mafr.__file__).resolve().parents[1]),
                                                  os.environ.get("PYTHONPATH", "")) if p),
    }
    env.pop("HF_HUB_ENABLE_HF_TRANSFER", None)
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "points.pt"), str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert torch.allclose(load_file(str(out))["f"], expected, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="model.safetensors.*org/not-cached"):
        PointMAEEncoder.from_pretrained("org/not-cached", cache_dir=cache, local_files_only=True)


def test_random_is_deterministic_and_seeded() -> None:
    state = torch.random.get_rng_state()
    a = PointMAEEncoder.random(tiny_config(), seed=0).state_dict()
    b = PointMAEEncoder.random(tiny_config(), seed=0).state_dict()
    c = PointMAEEncoder.random(tiny_config(), seed=1).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    qkv = "blocks.blocks.0.attn.qkv.weight"
    assert not torch.equal(a[qkv], c[qkv])
    assert a[qkv].std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(a["encoder.first_conv.1.running_var"], torch.ones(128))
    assert torch.equal(a["encoder.first_conv.1.running_mean"], torch.zeros(128))
    assert all(bool(torch.isfinite(v).all()) for v in a.values())
    assert torch.equal(a["norm.weight"], torch.ones(48))
    assert torch.equal(a["pos_embed.2.bias"], torch.zeros(48))


def test_config_and_names() -> None:
    assert PointMAEConfig().out_dim == 1152
    model = PointMAEEncoder(tiny_config())
    official = official_shapes(48, 4, 192)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    with pytest.raises(ValueError, match="divisible"):
        PointMAEConfig(embed_dim=50, num_heads=4)
    with pytest.raises(ValueError, match=r"out_indices must lie in .* = \[0, 3\], got \[4\]"):
        tiny_config(out_indices=(1, 4))
    with pytest.raises(ValueError, match="extra"):
        PointMAEConfig(bogus=1)


def test_forward_input_errors() -> None:
    model = PointMAEEncoder(tiny_config())
    with pytest.raises(ValueError, match="NaN"):
        bad = surface_points(100)
        bad[0, 7, 2] = float("nan")
        model(bad)
    with pytest.raises(ValueError, match=r"shape \(B, N, 3\).*\(100, 3\)"):
        model(surface_points(100)[0])
    msg = "at least 32 valid points for 32 groups of 16 points, got 20"
    with pytest.raises(ValueError, match=msg):
        model(surface_points(20))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.ones(1, 100, 3, dtype=torch.int64))


def test_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        PointMAEEncoder.from_pretrained(tmp_path)  # a directory without weights
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        PointMAEEncoder.from_pretrained(tmp_path / "missing" / "model.safetensors")
    model = PointMAEEncoder(tiny_config())
    out = model.save_pretrained(tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "format_version": 2}))
    with pytest.raises(ValueError, match="format_version 2.*upgrade mafr"):
        PointMAEEncoder.from_pretrained(out)
    (out / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(out / "model.safetensors"))
    sd["extra.weight"] = torch.zeros(1)
    del sd["norm.bias"]
    save_file(sd, str(out / "model.safetensors"))
    msg = r"missing keys \[norm.bias\]; unexpected keys \[extra.weight\]"
    with pytest.raises(ValueError, match=msg):
        PointMAEEncoder.from_pretrained(out)


def test_converter_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected a file at"):
        convert_pointmae_checkpoint(tmp_path / "nope.pth", tmp_path / "out")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        convert_pointmae_checkpoint(text, tmp_path / "out")
    other = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, other)
    with pytest.raises(ValueError, match=r"found a dict with keys \[model, epoch\]"):
        convert_pointmae_checkpoint(other, tmp_path / "out")
    no_encoder = tmp_path / "finetuned.pth"
    finetuned = {
        "module.cls_token": torch.zeros(1, 1, 4),
        "module.blocks.blocks.0.norm1.weight": torch.ones(4),
    }
    torch.save({"base_model": finetuned}, no_encoder)
    with pytest.raises(ValueError, match=r"no Point-MAE encoder keys.*cls_token"):
        convert_pointmae_checkpoint(no_encoder, tmp_path / "out")
    four_blocks = tmp_path / "tiny.pth"
    write_official_checkpoint(four_blocks, random_state_dict())
    with pytest.raises(ValueError, match="4 blocks, so out_indices must be given"):
        convert_pointmae_checkpoint(four_blocks, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.full
def test_full_size_random_encoder() -> None:
    model = PointMAEEncoder.random()
    points = surface_points(20000, seed=11)
    feats, centres = model(points)
    assert feats.shape == (1, 1024, 1152) and centres.shape == (1, 1024, 3)
    assert bool(torch.isfinite(feats).all())
    # every centre is one of the input points, and they are distinct
    assert bool((centres[0][:, None] == points[0][None]).all(dim=-1).any(dim=1).all())
    assert centres[0].unique(dim=0).shape[0] == 1024
