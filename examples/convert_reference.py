"""Convert the MAFR reference code's checkpoints into a saved mafr detector. Runs offline.

What it shows: the layout the reference training script writes (three ``torch.save(state_dict)``
files per category), ``mafr.convert.convert_reference_checkpoints``, what the converted detector
holds (``mafr info``), and that its fusion autoencoder carries the checkpoint's weights exactly.

THE WEIGHTS HERE ARE RANDOM. No real reference checkpoint ships with mafr, so this script first
writes a stand-in trio with random weights, at full size (DINO ViT-B/8: 768 channels, PointMAE:
1152 channels, latent 960) and in the exact reference layout and file naming. A detector converted
from it runs, but its scores mean nothing.
Extractor weights: the converted detector uses the ``"reference"`` preset (DINO ViT-B/8 + PointMAE
with published weights, point-wise CBAM, 224 x 224 grid); this script never runs the extractors, so
nothing is downloaded.

    python examples/convert_reference.py [--out convert_reference_out]

With real files (the reference code saves them in ``<checkpoint_folder>/<category>/``):

    mafr convert reference checkpoints/checkpoints_CFM_mvtec_CBAM bagel_detector --category bagel
    mafr convert pointmae pointmae_pretrain.pth        # the 3D extractor's weights, once
    mafr info bagel_detector

The reference checkpoints hold no decision threshold, so the converted detector flags nothing
(threshold inf) until you give one: score known-good parts (e.g. MVTec 3D-AD's validation split),
pick a threshold above their scores, and pass it with ``--threshold`` (or set ``det.threshold_``
and ``det.save_pretrained(...)`` again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mafr
from mafr.cli import main as mafr_cli
from mafr.convert import convert_reference_checkpoints

RGB, XYZ, LATENT = 768, 1152, 960  # DINO ViT-B/8, PointMAE (3 x 384), the reference's latent


def random_linear(gen: torch.Generator, out_dim: int, in_dim: int, prefix: str) -> dict[str, torch.Tensor]:
    bound = in_dim**-0.5  # torch's default nn.Linear initialisation range
    return {
        f"{prefix}.weight": (torch.rand(out_dim, in_dim, generator=gen) * 2 - 1) * bound,
        f"{prefix}.bias": (torch.rand(out_dim, generator=gen) * 2 - 1) * bound,
    }


def fake_reference_trio(folder: Path, category: str, seed: int = 0) -> list[Path]:
    """RANDOM weights in the reference layout: fusion_encoder_/decoder_2D_/decoder_3D_{category}_250ep_1bs.pth."""
    gen = torch.Generator().manual_seed(seed)
    encoder = {
        **random_linear(gen, LATENT, RGB + XYZ, "input_fc"),
        **random_linear(gen, LATENT, LATENT, "layers.0"),
        **random_linear(gen, LATENT, LATENT, "output_fc"),
        "layer_norm.weight": torch.ones(LATENT),
        "layer_norm.bias": torch.zeros(LATENT),
    }

    def decoder(out_dim: int) -> dict[str, torch.Tensor]:
        return {
            **random_linear(gen, out_dim, LATENT, "input_fc"),
            **random_linear(gen, out_dim, out_dim, "layers.0"),
            **random_linear(gen, out_dim, out_dim, "layers.1"),
            **random_linear(gen, out_dim, out_dim, "output_fc"),
            "norm.weight": torch.ones(out_dim),
            "norm.bias": torch.zeros(out_dim),
            **random_linear(gen, out_dim // 16, out_dim, "cbam.channel_attention.fc.0"),
            **random_linear(gen, out_dim, out_dim // 16, "cbam.channel_attention.fc.2"),
            "cbam.spatial_attention.conv.weight": (torch.rand(1, 2, 7, 7, generator=gen) * 2 - 1) * 98**-0.5,
            **random_linear(gen, out_dim, LATENT, "skip"),
        }

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for prefix, state in (("fusion_encoder", encoder), ("decoder_2D", decoder(RGB)), ("decoder_3D", decoder(XYZ))):
        path = folder / f"{prefix}_{category}_250ep_1bs.pth"
        torch.save(state, path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("convert_reference_out"))
    parser.add_argument("--category", default="bagel")
    args = parser.parse_args()

    checkpoints = args.out / "checkpoints"
    paths = fake_reference_trio(checkpoints / args.category, args.category)
    print("stand-in reference checkpoints (RANDOM weights):")
    for p in paths:
        print(f"  {p}  {p.stat().st_size / 1e6:.1f} MB")

    # The folder may be the checkpoint folder or its <category> subfolder; files are found by name.
    detector_dir = convert_reference_checkpoints(checkpoints, args.out / "detector", args.category)
    print(f"\nconverted to {detector_dir}/ -- `mafr info {detector_dir}`:\n")
    mafr_cli(["info", str(detector_dir)])

    # The converted autoencoder holds the checkpoint's tensors bit for bit.
    det = mafr.MAFRDetector.from_pretrained(detector_dir)
    source = torch.load(paths[1], weights_only=True)  # decoder_2D
    ours = det.autoencoder_.decoder_2d.state_dict()
    worst = max(float((ours[k] - v).abs().max()) for k, v in source.items())
    print(f"\ndecoder_2D: {len(source)} tensors, largest difference to the checkpoint {worst}")
    print(f"threshold: {det.threshold_} -> nothing is flagged until a threshold is set (see this file's docstring)")


if __name__ == "__main__":
    main()
