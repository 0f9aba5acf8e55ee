"""Is it the score or the features? A nearest-neighbour probe on the offline preset's features of
the shared real scans (docs/ablations.md, "What the check says on real parts").

Each grid position's distance to its nearest neighbour among all positions of the fit parts
(features standardised per channel over the fit parts; 3D only where measured), the image score
its maximum: no autoencoder. With ``--radius R`` the neighbours are sought only within ``R`` grid
cells of the same position (a fixtured line: the parts lie in the same place). ``tire`` is
scored on its real defects (images alone; also AUPRO@30 % of the distance map, brought back
onto the image and bilinear to 224 x 224 as ``mafr.evaluation`` does, and that of the photo's
own brightness, a map that knows nothing of defects); ``cable_gland`` on its validation parts, each also with one
implanted defect of each kind (``mafr.datasets.implant_defect``). Prints one JSON line per set
and feature kind.

    python benchmarks/real_knn_probe.py [--root ../shared/data/mvtec3d] [--shots 10] [--radius R]
        [--sets tire cable_gland]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import mafr
from mafr.datasets import MVTec3D
from mafr.datasets.implant import implant_defect
from mafr.io import load_rgb, load_xyz, resize_nearest
from mafr.metrics import aupro, image_auroc
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


#: Stands in for an unmeasured fit position: never the nearest while a measured one is near.
_FAR = 1e6


def _nearest(test: torch.Tensor, bank: torch.Tensor, valid: torch.Tensor, radius: int | None) -> torch.Tensor:
    """``(B, g, g)`` distance of each test position ``(B, g, g, C)`` to its nearest measured fit
    position (``bank`` ``(K, g, g, C)``, ``valid`` ``(K, g, g)``): among all of them, or within
    ``radius`` cells of the same place (anywhere, where none within it was measured)."""
    b, g = test.shape[0], test.shape[1]
    rows = test.reshape(b, -1, test.shape[-1])
    anywhere = torch.cdist(rows, bank[valid][None]).min(-1).values.view(b, g, g)
    if radius is None:
        return anywhere
    far = torch.where(valid[..., None], bank, torch.full_like(bank, _FAR))
    out = test.new_empty(b, g, g)
    for i in range(g):
        for j in range(g):
            near = far[:, max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
            out[:, i, j] = torch.cdist(test[:, i, j], near.reshape(-1, near.shape[-1])).min(-1).values
    return torch.where(out < _FAR / 2, out, anywhere)


def _on_image(grid_map: torch.Tensor, height: int, width: int, size: int = 224) -> np.ndarray:
    """A ``(g, g)`` map of the network's square input back on the image, as the detector's maps
    come back (the square is the image padded at the bottom and right, ``framing="image"``),
    then bilinear to ``size x size`` as ``mafr.evaluation`` compares maps with masks."""
    side = max(height, width)
    up = F.interpolate(grid_map[None, None], size=(size, size), mode="bilinear", align_corners=False)
    up = F.interpolate(up, size=(side, side), mode="bilinear", align_corners=False)[..., :height, :width]
    return F.interpolate(up, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _brightness(rgb: np.ndarray, size: int = 224) -> np.ndarray:
    """The image's grey level, bilinear to ``size x size`` and box-smoothed over 15 px: a map
    that knows nothing of defects, the floor an AUPRO has to be read against."""
    grey = torch.from_numpy(rgb.astype(np.float32).mean(-1))[None, None]
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    return F.avg_pool2d(grey, 15, stride=1, padding=7, count_include_pad=False)[0, 0].numpy()


def probe(root: Path, category: str, shots: int, radius: int | None = None) -> list[dict]:
    modalities = "rgb" if category == "tire" else "rgb+xyz"
    train = list(MVTec3D(root, category, "train"))[:shots]
    test, labels, types = _test_set(root, category)
    det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", modalities=modalities))
    fit_feats, test_feats = det.extract_features(train), det.extract_features(test)
    out = []
    for which in (["rgb"] if modalities == "rgb" else ["rgb", "xyz"]):
        rows = torch.cat([x[v] if which == "xyz" else x for x, v in (_rows(f, which) for f in fit_feats)])
        mean, std = rows.mean(0), rows.std(0) + 1e-6
        grids = lambda feats: torch.stack([getattr(f, which) for f in feats])  # noqa: E731
        # Unmeasured fit positions never serve as a neighbour; unmeasured test positions score 0.
        valid = torch.stack([f.valid_grid for f in fit_feats]) | (which == "rgb")
        bank = (grids(fit_feats) - mean) / std
        dist = torch.cat([_nearest((grids(test_feats[s : s + 16]) - mean) / std, bank, valid, radius)
                          for s in range(0, len(test_feats), 16)])
        if which == "xyz":
            dist = dist * torch.stack([f.valid_grid for f in test_feats])
        scores = [float(d.max()) for d in dist]
        per_type = {}
        for t in sorted(set(types) - {"good"}):
            idx = [i for i, tt in enumerate(types) if tt in (t, "good")]
            per_type[t] = round(image_auroc([labels[i] for i in idx], [scores[i] for i in idx]), 4)
        row = {"set": category, "features": which, "fit_parts": len(train), "radius": radius,
               "image_auroc": round(image_auroc(labels, scores), 4), "per_type": per_type}
        if category == "tire":
            maps, bright, masks = [], [], []
            for d, s in zip(dist, test):
                rgb = load_rgb(s.rgb)
                maps.append(_on_image(d, *rgb.shape[:2]))
                bright.append(_brightness(rgb))  # what a map that knows nothing of defects reaches
                masks.append(resize_nearest(np.asarray(s.mask) > 0, 224, 224) if s.mask is not None
                             else np.zeros((224, 224), bool))
            row["aupro@0.3"] = round(aupro(masks, maps, limit=0.3), 4)
            row["brightness_aupro@0.3"] = round(aupro(masks, bright, limit=0.3), 4)
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data/mvtec3d")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--radius", type=int, default=None, help="seek neighbours within this many grid cells of the same place")
    p.add_argument("--sets", nargs="+", default=["tire", "cable_gland"], choices=("tire", "cable_gland"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the real scans' supports are set aside; not what is probed
    root = Path(args.root)
    if not root.is_dir():
        print(json.dumps({"skipped": f"no real data at {root}"}))
        return 0
    for category in args.sets:
        for row in probe(root, category, args.shots, args.radius):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
