"""How many good parts does a detector need? Fit with 1, 2, 5 and 10 and compare. Runs offline.

What it shows: ``mafr.evaluation.evaluate_detector`` on a labelled test set (I-AUROC on image
scores, AUPRO up to 30% false-positive rate on the maps), for detectors fitted on nested, seeded
subsets of the good training parts (the 2-shot set contains the 1-shot part, and so on).
Extractor weights: none. The ``"offline"`` preset uses weight-free colour/gradient statistics (RGB)
and multi-scale surface deviation (3D). Data: synthetic parts written by ``mafr.datasets.write_dataset`` (MVTec 3D-AD
layout), so the numbers describe this generator, not a real benchmark. With fewer than 3 parts the
threshold is calibrated on the training parts themselves (optimistic; AUROC/AUPRO do not use it).

    python examples/few_shot_study.py [--categories puck ring] [--shots 1 2 5 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import mafr
from mafr.datasets import CATEGORIES, MVTec3D, write_dataset
from mafr.evaluation import evaluate_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("few_shot_data"), help="where the generated parts go")
    parser.add_argument("--categories", nargs="+", default=["puck"], choices=CATEGORIES)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 5, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="image side of the generated parts")
    args = parser.parse_args()
    if min(args.shots) < 1:
        parser.error("--shots must be positive")

    # A small test set keeps this fast: 4 good parts and 2 of each of the 5 defect types.
    missing = [c for c in args.categories if not (args.root / c).is_dir()]
    if missing:
        write_dataset(args.root, missing, n_train=max(args.shots), n_validation=0, n_test_good=4,
                      n_test_per_defect=2, size=args.size, seed=args.seed)
    config = mafr.MAFRConfig(preset="offline")

    print(f"{'category':<9} {'shots':>5} {'I-AUROC':>8} {'AUPRO@30%':>10} {'fit s':>6}")
    summary: dict[int, list[tuple[float, float]]] = {k: [] for k in args.shots}
    for category in args.categories:
        train, test = MVTec3D(args.root, category, "train"), list(MVTec3D(args.root, category, "test"))
        if len(train) < max(args.shots):
            raise SystemExit(f"{args.root / category} has {len(train)} training parts; delete it to regenerate")
        order = np.random.default_rng(args.seed).permutation(len(train))  # nested subsets
        for k in sorted(args.shots):
            t0 = time.perf_counter()
            det = mafr.MAFRDetector(config).fit([train[int(i)] for i in order[:k]], seed=args.seed, progress=False)
            fit_s = time.perf_counter() - t0
            m = evaluate_detector(det, test, progress=False)
            summary[k].append((m["image_auroc"], m["aupro@0.3"]))
            print(f"{category:<9} {k:>5} {m['image_auroc']:>8.3f} {m['aupro@0.3']:>10.3f} {fit_s:>6.1f}")
    if len(args.categories) > 1:
        for k in sorted(args.shots):
            i_auroc, aupro = np.mean(summary[k], axis=0)
            print(f"{'mean':<9} {k:>5} {i_auroc:>8.3f} {aupro:>10.3f}")


if __name__ == "__main__":
    main()
