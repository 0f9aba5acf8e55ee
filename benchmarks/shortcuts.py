"""What each speed shortcut of the ``"paper"`` preset costs in accuracy, one at a time, on the
generated benchmark's report set (docs/method.md, "Deviations of the paper preset").

The pretrained DINO ViT-B/8 and Point-MAE weights cannot be downloaded on the project's machines,
so the weight-free extractors of the offline preset stand in for them: the shortcuts that act
after feature extraction (normalisation, loss, training schedule, grid, map smoothing, hole
filling) are measured; the two that act inside the 3D extractor (FPS subsampling, interpolation
weights) are not. Each variant switches one setting to the reference code's value.

    python benchmarks/shortcuts.py --root data/bench_report --out docs/shortcuts.json

Prints one JSON line per variant (mean I-AUROC, worst defect type, AUPRO@30%, fit seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr.datasets import BENCHMARK_SPLITS, MVTec3D, write_benchmark
from mafr.evaluation import run_benchmark

VARIANTS = {
    "offline preset defaults": {},
    "raw features (model.feature_norm='none')": {"model": {"feature_norm": "none"}},
    # The offline preset trains with the reference's loss; the paper preset keeps mafr's.
    "mafr loss (the paper preset's) instead of the reference's": {"train": {"loss_form": "mafr", "smoothness_first_two_channels": False}},
    "reference training (100 epochs, batch 1, every part)": {
        "train": {"epochs": 100, "batch_size": 1, "early_stop_patience": None, "calibration_fraction": 0.0}},
    "reference maps (scoring.maps='reference')": {"scoring": {"maps": "reference"}},
    "no hole filling (points.fill_holes=0)": {"points": {"fill_holes": 0}},
    # The offline preset restores on a 56 x 56 grid; the paper preset keeps 28 for speed.
    "grid 28 (the paper preset's) instead of 56": {"grid_size": 28},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/bench_report")
    p.add_argument("--work", default="runs/shortcuts", help="per-variant result folders (resumable)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cats = list(BENCHMARK_SPLITS["report"][0])
    root = Path(args.root)
    if not all((root / c).is_dir() for c in cats):
        write_benchmark(root, "report")
    records = []
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        rows = run_benchmark(lambda c, s: MVTec3D(root, c, s), cats, mafr.MAFRConfig(preset="offline", **overrides),
                             Path(args.work) / f"v{i}", progress=False, log=lambda m: None)[:-1]
        rec = {"variant": name,
               "image_auroc": float(np.mean([r["image_auroc"] for r in rows])),
               "worst_type_auroc": float(min(r["worst_type_auroc"] for r in rows)),
               "aupro@0.3": float(np.mean([r["aupro@0.3"] for r in rows])),
               "per_type": {k: float(np.mean([r["per_type"][k]["image_auroc"] for r in rows])) for k in rows[0]["per_type"]},
               "fit_seconds": float(np.mean([r["fit_seconds"] for r in rows]))}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
