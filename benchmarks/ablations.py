"""Ablations on the generated benchmark: fusion mode per defect type, each loss term alone and all
together, and robustness to 3D-to-2D misalignment. One command regenerates the tables:

    python benchmarks/ablations.py --out docs/ablations-losses.md

Extractor sets: ``offline`` (weight-free preset) and ``random`` (the paper's DINO ViT-B/8 +
PointMAE architecture with random weights: what the architecture does before any pre-training).
Each category is fitted on its first 10 good training parts (seed 0); features are extracted once
and reused by every variant, so the variants differ only in what they name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr import metrics
from mafr.datasets import BENCHMARK_SPLITS, DEFECTS, MVTec3D, write_benchmark
from mafr.io import load_sample
from mafr.types import Sample

FUSIONS = ("product", "sum", "max", "rgb", "xyz")
LOSSES = {
    "similarity (ZNSSD) only": {"w_similarity": 1.0, "w_smoothness": 0.0, "w_census": 0.0},
    "smoothness only": {"w_similarity": 0.0, "w_smoothness": 1.0, "w_census": 0.0},
    "census only": {"w_similarity": 0.0, "w_smoothness": 0.0, "w_census": 1.0},
    "all three": {"w_similarity": 1.0, "w_smoothness": 1.0, "w_census": 1.0},
}
SHIFTS = (0, 1, 2, 4)
GROUPS = {"geometry": "geometry", "colour": "colour", "both": "both"}


def _config(extractors: str, **overrides) -> mafr.MAFRConfig:
    if extractors == "offline":
        return mafr.MAFRConfig(preset="offline", **overrides)
    return mafr.MAFRConfig(extractor_weights="random", **overrides)


def _shifted(sample: Sample, pixels: int) -> Sample:
    """The xyz map moved ``pixels`` to the right (zeros enter): a 3D-to-2D calibration error."""
    rgb, xyz = load_sample(sample)
    if pixels:
        moved = np.zeros_like(xyz)
        moved[:, pixels:] = xyz[:, :-pixels]
        xyz = moved
    return Sample(rgb=rgb, xyz=xyz, label=sample.label, mask=sample.mask, defect_type=sample.defect_type)


def _metrics(det: mafr.MAFRDetector, feats, test, subset=None) -> dict:
    fused, _, _, scores = det._score_features(feats)
    idx = [i for i, s in enumerate(test) if subset is None or s.defect_type in subset]
    labels = [int(test[i].label) for i in idx]
    masks = [np.asarray(test[i].mask, dtype=bool) for i in idx]
    maps = [fused[i].numpy() for i in idx]
    return {
        "image_auroc": metrics.image_auroc(labels, [float(scores[i]) for i in idx]),
        "aupro@0.3": metrics.aupro(masks, maps, limit=0.3),
    }


def run(extractors: str, data: Path, categories: list[str], shots: int, log) -> dict:
    per_cat = []
    for category in categories:
        t0 = time.perf_counter()
        train = list(MVTec3D(data, category, "train"))[:shots]
        test = list(MVTec3D(data, category, "test"))
        base = mafr.MAFRDetector(_config(extractors))
        train_feats = base.extract_features(train)
        test_feats = {s: base.extract_features([_shifted(t, s) for t in test]) for s in SHIFTS}
        row = {"category": category, "fusion": {}, "loss": {}, "shift": {}}
        for name, weights in LOSSES.items():
            det = mafr.MAFRDetector(_config(extractors, train=weights))
            det.extractors.rgb_module, det.extractors.point_module = base.extractors.rgb_module, base.extractors.point_module
            det._fit_extracted(train, train_feats, seed=0)
            row["loss"][name] = _metrics(det, test_feats[0], test)
            if name != "all three":
                continue
            for fusion in FUSIONS:
                det.config.scoring.fusion = fusion
                row["fusion"][fusion] = {
                    group: _metrics(det, test_feats[0], test, {"good"} | {d for d, g in DEFECTS.items() if g == group})
                    for group in GROUPS
                }
                row["fusion"][fusion]["all"] = _metrics(det, test_feats[0], test)
            det.config.scoring.fusion = "product"
            for s in SHIFTS:
                row["shift"][s] = _metrics(det, test_feats[s], test)
        log(f"[{extractors}] {category}: {time.perf_counter() - t0:.0f} s")
        per_cat.append(row)
    return {"extractors": extractors, "categories": categories, "rows": per_cat}


def _mean(rows, path):
    vals = []
    for r in rows:
        v = r
        for key in path:
            v = v[key]
        vals.append(v)
    return float(np.mean(vals))


def markdown(results: list[dict], command: str) -> str:
    out = [
        "# Ablations on the generated benchmark",
        "",
        f"Regenerate with `{command}`. Means over the categories listed; 10 good parts to fit "
        "(seed 0); test split: 8 good parts and 4 of each defect type per category. Geometry-only "
        "defects: bump, dent; colour-only: stain; both: crack, hole. I-AUROC / AUPRO@30%.",
    ]
    for res in results:
        rows, name = res["rows"], res["extractors"]
        label = "offline preset (surface deviation + colour/gradient statistics)" if name == "offline" else (
            "paper architecture (DINO ViT-B/8 + PointMAE) with random weights"
        )
        out += ["", f"## {label}", "", f"Categories: {', '.join(res['categories'])}.", "", "### Fusion mode per defect type", ""]
        out += ["| fusion | geometry-only | colour-only | both | all |", "|---|---:|---:|---:|---:|"]
        for fusion in FUSIONS:
            cells = [
                f"{_mean(rows, ('fusion', fusion, g, 'image_auroc')):.3f} / {_mean(rows, ('fusion', fusion, g, 'aupro@0.3')):.3f}"
                for g in (*GROUPS, "all")
            ]
            out.append(f"| {fusion} | " + " | ".join(cells) + " |")
        out += ["", "### Loss terms", "", "| loss | I-AUROC | AUPRO@30% |", "|---|---:|---:|"]
        for loss in LOSSES:
            out.append(f"| {loss} | {_mean(rows, ('loss', loss, 'image_auroc')):.3f} | {_mean(rows, ('loss', loss, 'aupro@0.3')):.3f} |")
        out += ["", "### 3D-to-2D misalignment (xyz shifted right at test time)", "", "| shift (px at 224) | I-AUROC | AUPRO@30% |", "|---:|---:|---:|"]
        for s in SHIFTS:
            key = s if s in rows[0]["shift"] else str(s)
            out.append(f"| {s} | {_mean(rows, ('shift', key, 'image_auroc')):.3f} | {_mean(rows, ('shift', key, 'aupro@0.3')):.3f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/bench_report"),
                        help="the generated benchmark's report set (written here when missing)")
    parser.add_argument("--extractors", default="offline,random", help="comma list of: offline, random")
    parser.add_argument("--categories", default=",".join(BENCHMARK_SPLITS["report"][0]))
    parser.add_argument("--random-categories", default="puck,disc", help="categories for the (slower) random-weight set")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/ablations-losses.md"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cats = args.categories.split(",")
    if not all((args.data / c).is_dir() for c in cats):
        write_benchmark(args.data, "report")
    results = []
    for extractors in args.extractors.split(","):
        use = cats if extractors == "offline" else args.random_categories.split(",")
        results.append(run(extractors, args.data, use, args.shots, print))
    command = "python benchmarks/ablations.py --out " + str(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, command))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
