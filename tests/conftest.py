"""Shared fixtures: a tiny detector configuration (same code paths, small widths) and
generated parts."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

import mafr  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config(**overrides) -> mafr.MAFRConfig:
    """A ViT with 2 blocks of width 32 at 64 x 64 input (8 x 8 patches), a 3-block PointMAE of
    width 48 with 32 groups of 16 points, an 8 x 8 autoencoder grid, and a short fit."""
    base = dict(
        extractor_weights="random",
        grid_size=8,
        rgb={"image_size": 64, "timm_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
        points={
            "num_groups": 32, "group_size": 16, "embed_dim": 48, "depth": 3, "num_heads": 4,
            "out_indices": (0, 1, 2), "fps_max_points": None,
        },
        train={"steps": 40, "batch_size": 2, "early_stop_patience": None},
    )
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return mafr.MAFRConfig(**base)


@pytest.fixture
def tiny():
    return tiny_config


def resave_without(directory, key: str) -> None:
    """Drop tensor ``key`` from a saved detector and re-record its checksum: a consistent but
    wrong save, which only the loader's own checks can catch."""
    import hashlib
    import json

    from safetensors.torch import load_file, save_file

    weights = directory / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[key]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    cfg = json.loads((directory / "config.json").read_text())
    cfg["checksums"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (directory / "config.json").write_text(json.dumps(cfg))


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="also run tests marked `full` (full-size architectures)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or os.environ.get("MAFR_FULL_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="full-size architecture test: run with --full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)
