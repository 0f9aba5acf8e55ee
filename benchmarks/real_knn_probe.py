"""Is it the score or the features? A nearest-neighbour probe on the offline preset's features of
the shared real scans (docs/ablations.md, "What the check says on real parts").

Each grid position's distance to its nearest neighbour among all positions of the fit parts
(features standardised per channel over the fit parts; 3D only where measured), the image score
its maximum: no autoencoder. ``tire`` is scored on its real defects (images alone);
``cable_gland`` on its validation parts, each also with one implanted defect of each kind
(``mafr.datasets.implant_defect``). Prints one JSON line per set and feature kind.

    python benchmarks/real_knn_probe.py [--root ../shared/data/mvtec3d] [--shots 10]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

import mafr
from mafr.datasets import MVTec3D
from mafr.datasets.implant import implant_defect
from mafr.io import load_rgb, load_xyz
from mafr.metrics import image_auroc
from mafr.types import Sample


def _test_set(root: Path, category: str):
    if category == "tire":
        test = list(MVTec3D(root, category, "test"))
        return test, [s.label for s in test], [s.defect_type for s in test]
    test, labels, types = [], [], []
    for i, s in enumerate(MVTec3D(root, category, "validation")):
        rgb = load_rgb(s.rgb)
        xyz = load_xyz(s.xyz, rgb.shape[:2])
        test.append(Sample(rgb=rgb, xyz=xyz))
        labels.append(0)
        types.append("good")
        for k, kind in enumerate(("stain", "patch", "bump", "hole")):
            d = implant_defect(rgb, xyz, kind, seed=100 * i + k)
            test.append(Sample(rgb=d.rgb, xyz=d.xyz))
            labels.append(1)
            types.append(kind)
    return test, labels, types


def _rows(f, which: str):
    x = f.rgb if which == "rgb" else f.xyz
    return x.reshape(-1, x.shape[-1]), f.valid_grid.reshape(-1)


def probe(root: Path, category: str, shots: int) -> list[dict]:
    modalities = "rgb" if category == "tire" else "rgb+xyz"
    train = list(MVTec3D(root, category, "train"))[:shots]
    test, labels, types = _test_set(root, category)
    det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", modalities=modalities))
    fit_feats, test_feats = det.extract_features(train), det.extract_features(test)
    out = []
    for which in (["rgb"] if modalities == "rgb" else ["rgb", "xyz"]):
        bank = torch.cat([x[v] if which == "xyz" else x for x, v in (_rows(f, which) for f in fit_feats)])
        mean, std = bank.mean(0), bank.std(0) + 1e-6
        bank = (bank - mean) / std
        scores = []
        for f in test_feats:
            x, v = _rows(f, which)
            d = torch.cdist((x - mean) / std, bank).min(1).values
            scores.append(float((d * v if which == "xyz" else d).max()))
        per_type = {}
        for t in sorted(set(types) - {"good"}):
            idx = [i for i, tt in enumerate(types) if tt in (t, "good")]
            per_type[t] = round(image_auroc([labels[i] for i in idx], [scores[i] for i in idx]), 4)
        out.append({"set": category, "features": which, "fit_parts": len(train),
                    "image_auroc": round(image_auroc(labels, scores), 4), "per_type": per_type})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data/mvtec3d")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the real scans' supports are set aside; not what is probed
    root = Path(args.root)
    if not root.is_dir():
        print(json.dumps({"skipped": f"no real data at {root}"}))
        return 0
    for category in ("tire", "cable_gland"):
        for row in probe(root, category, args.shots):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
