"""Per defect type, on the generated benchmark's report set (or its tuning set): which fusion
rule, which weight-free 3D and 2D descriptors and which decoder attention find which defects, and what
the default detector decides. The command that produced docs/ablations.md:

    python benchmarks/defect_types.py --split report --root data/bench_report --out docs/ablations.json

Defaults were chosen with ``--split tuning`` (other categories, other seeds); only report-set
figures are published. ``--difficulty hard`` writes (when missing) and names the harder set
(``mafr.datasets.HARD_DEFECT_SPECS``; default root ``data/bench_<split>_hard``). Every variant is the offline preset fitted on the category's 10 good
training parts (seed 0) and judged on 12 good and 6 defective parts per type; the variants that
change only the fusion share one fitted autoencoder and are re-calibrated on the same held-out
parts. Prints one JSON line per variant and category, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import mafr
from mafr.datasets import BENCHMARK_DIFFICULTIES, BENCHMARK_SPLITS, DEFECTS, MVTec3D, write_benchmark
from mafr.evaluation import evaluate_detector

FUSIONS = ("product", "sum", "max", "rgb", "xyz", "calibrated")
DESCRIPTORS = {
    "deviation as local rises and sinks (default)": {"kind": "deviation"},
    "deviation, signed, cell mean": {"kind": "deviation", "deviation_peaks": False},
    "deviation, nearest-neighbour resize": {"kind": "deviation", "resize": "nearest"},
    "deviation at 4.5, 9, 18 px": {"kind": "deviation", "deviation_scales": (4.5, 9.0, 18.0)},
    "FPFH + deviation": {"kind": "fpfh"},
    "FPFH": {"kind": "fpfh", "deviation_scales": ()},
}
ATTENTION = ("cbam", "se", "none")
#: 2D descriptor variants (the 3D one at its default).
COLOUR = {"colour rarity on circles of 21 and 33 px, on the part only, facing the same way (default)": {},
          "colour rarity on colours alone (no normals)": {"ring_normal_weight": 0.0},
          "colour rarity compared with every pixel, with 3D or not": {"rarity_on_part": False},
          "without colour rarity": {"ring_radii": ()}}
# Earlier offline defaults, newest first, each named by what it had (not by how many releases
# ago it was, which changes with every release). Every one rates colours alone in the rarity.
_COLOURS_ALONE = {"ring_normal_weight": 0.0}
#: Levels per restored-value bin, colour rarity on colours alone.
V_BINS = {"rgb": _COLOURS_ALONE}
#: One good-part level per distance band (the 56 x 56 grid and the reference's loss).
V10 = {**V_BINS, "scoring": {"level_bins": ()}}
#: The 56 x 56 grid alone, with the loss before it.
V09A = {**V10, "train": {"loss_form": "mafr", "smoothness_first_two_channels": False}}
#: Stains seen on the part, on a 28 x 28 grid.
V08 = {**V09A, "grid_size": 28}
#: The part framed (colour rarity against every pixel, channels by their RMS).
V07 = {**V08, "rgb": {**_COLOURS_ALONE, "rarity_on_part": False}, "scoring": {**V10["scoring"], "channel_reduce_2d": "rms"}}
#: The widths in network pixels set for the whole image, and the threshold floor, of the release before.
_WIDTHS_BEFORE = {"rgb": {**_COLOURS_ALONE, "ring_radii": (14, 22), "rarity_on_part": False},
                  "points": {"deviation_scales": (6.0, 12.0)},
                  "scoring": {**V10["scoring"], "edge_cap": 5, "log_spread_floor": 0.1, "channel_reduce_2d": "rms"}}
#: The whole image.
V06 = {"framing": "image", **V08, **_WIDTHS_BEFORE}
#: Fusion levels from the two held-out parts only.
V05 = {**V06, "scoring": {**V06["scoring"], "levels_parts": "held_out", "level_quantile": 0.9}}
#: The signed deviation, pooled by the cell mean, four distance bands.
V04 = {**V05, "points": {**V05["points"], "deviation_peaks": False}, "scoring": {**V05["scoring"], "edge_cap": 3}}
#: Also nearest-neighbour resize of the cloud, no colour rarity.
V03 = {**V04, "points": {**V04["points"], "resize": "nearest"}, "rgb": {"ring_radii": ()}}
#: The offline preset as released in 0.1: FPFH, product fusion, mean + 3 std of held-out parts.
V01 = {"framing": "image", **V08, "points": {"kind": "fpfh", "deviation_scales": (), "resize": "nearest", "deviation_peaks": False},
       "rgb": {"ring_radii": ()},
       "scoring": {**V10["scoring"], "fusion": "product", "threshold_rule": "sigma", "threshold_sigma": 3.0,
                   "threshold_parts": "held_out"}}
#: The "release" study's rows, oldest first.
RELEASES = (
    ("offline preset 0.1 (FPFH, product, mean + 3 std)", V01),
    ("nearest-neighbour resize, no colour rarity", V03),
    ("signed deviation, cell mean", V04),
    ("fusion levels from the held-out parts only", V05),
    ("the whole image", V06),
    ("the part framed", V07),
    ("stains seen on the part; 28 x 28 grid", V08),
    ("the 56 x 56 grid with the loss before it", V09A),
    ("the 56 x 56 grid and the reference's loss; one level per distance band", V10),
    ("levels per restored-value bin; colour rarity on colours alone", V_BINS),
)


def _summary(result: dict) -> dict:
    keep = ("image_auroc", "aupro@0.3", "recall", "false_alarm_rate", "mask_iou", "predict_ms")
    out = {k: result.get(k) for k in keep}
    out["per_type"] = result["per_type"]
    return out


STUDIES = ("fusion", "descriptor", "colour", "attention", "release")


def run_category(root: Path, category: str, emit, studies=STUDIES) -> dict:
    """Emit the records of ``studies`` for one category; returns the default detector's summary."""
    train = list(MVTec3D(root, category, "train"))
    test = list(MVTec3D(root, category, "test"))

    def fitted(**overrides):
        det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", **overrides))
        t0 = time.perf_counter()
        feats = det.extract_features(train)
        det._fit_extracted(train, feats, seed=0)
        return det, feats, time.perf_counter() - t0

    def scored(study: str, variant: str, summary: dict, fit_seconds: Optional[float] = None) -> None:
        timed = {} if fit_seconds is None else {"fit_seconds": fit_seconds}
        emit({"study": study, "variant": variant, "category": category, **timed, **summary})

    det, feats, seconds = fitted()
    # FUSIONS ends with the preset's "calibrated": the detector is left re-calibrated as it is
    # fitted, and that one default detector is every study's default row (evaluated once).
    for fusion in FUSIONS if "fusion" in studies else ("calibrated",):
        det.config.scoring.fusion = fusion
        # The held-out parts exactly as fit chose them, calibrated again for this fusion.
        mafr.training.recalibrate_as_fitted(det, feats, seed=0)
        if "fusion" in studies and fusion != "calibrated":
            scored("fusion", fusion, _summary(evaluate_detector(det, test, progress=False)))
    default = _summary(evaluate_detector(det, test, progress=False))
    if "fusion" in studies:
        scored("fusion", "calibrated", default)
    for name, points in DESCRIPTORS.items() if "descriptor" in studies else ():
        if name.endswith("(default)"):
            scored("descriptor", name, default, seconds)
        else:
            d, _, s = fitted(points=points)
            scored("descriptor", name, _summary(evaluate_detector(d, test, progress=False)), s)
    for name, rgb in COLOUR.items() if "colour" in studies else ():
        if not rgb:
            scored("colour", name, default, seconds)
        else:
            d, _, s = fitted(rgb=rgb)
            scored("colour", name, _summary(evaluate_detector(d, test, progress=False)), s)
    for attention in ATTENTION if "attention" in studies else ():
        if attention == "cbam":
            scored("attention", attention, default, seconds)
        else:
            d, _, s = fitted(model={"attention": attention})
            scored("attention", attention, _summary(evaluate_detector(d, test, progress=False)), s)
    for variant, overrides in RELEASES if "release" in studies else ():
        d, _, s = fitted(**overrides)
        scored("release", variant, _summary(evaluate_detector(d, test, progress=False)), s)
    return default


def markdown(records: list[dict], split: str) -> str:
    kinds = list(DEFECTS)

    def f(v):
        return "" if v is None else f"{v:.3f}"

    def mean(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    lines = []
    for study, title in (("release", "Before: earlier offline presets"), ("fusion", "Fusion rules (offline preset, deviation descriptor)"),
                         ("descriptor", "3D descriptors (calibrated fusion)"), ("colour", "2D descriptors (calibrated fusion)"),
                         ("attention", "Decoder attention (offline preset defaults)")):
        rows = [r for r in records if r["study"] == study]
        if not rows:
            continue
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        timed = all("fit_seconds" in r for r in rows)
        lines += [f"### {title}", "", "Mean over the " + split + " categories; the worst category in brackets.", "",
                  "| variant | " + " | ".join(kinds) + " | mean I-AUROC | AUPRO@30% | recall | false alarms | mask IoU |"
                  + (" fit s |" if timed else ""),
                  "|---|" + "---:|" * (len(kinds) + 5 + timed)]
        for v in variants:
            rs = [r for r in rows if r["variant"] == v]
            cells = []
            for k in kinds:
                vals = [r["per_type"][k]["image_auroc"] for r in rs if k in r["per_type"]]
                cells.append(f"{np.mean(vals):.3f} ({np.min(vals):.2f})")
            agg = [mean(rs, key) for key in ("image_auroc", "aupro@0.3", "recall", "false_alarm_rate", "mask_iou")]
            fit = f" {mean(rs, 'fit_seconds'):.1f} |" if timed else ""
            lines.append(f"| {v} | " + " | ".join(cells) + " | " + " | ".join(f(a) for a in agg) + " |" + fit)
        if study == "attention":  # the attention issue asks for the localisation per type too
            lines += ["", "AUPRO@30 % per defect type (same runs):", "",
                      "| variant | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
            for v in variants:
                rs = [r for r in rows if r["variant"] == v]
                lines.append(f"| {v} | " + " | ".join(
                    f(float(np.mean([r["per_type"][k]["aupro@0.3"] for r in rs if k in r["per_type"]]))) for k in kinds) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=tuple(BENCHMARK_SPLITS), default="report")
    p.add_argument("--root", default=None, help="generated data (written when missing)")
    p.add_argument("--out", default=None, help="JSON with every record; <name>.tables.md next to it with the tables")
    p.add_argument("--category", nargs="+", default=None)
    p.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES),
                   help="which tables to produce (all by default)")
    p.add_argument("--difficulty", choices=tuple(BENCHMARK_DIFFICULTIES), default="standard",
                   help="defects of the data written when missing (mafr.datasets.BENCHMARK_DIFFICULTIES)")
    args = p.parse_args(argv)
    cats = args.category or list(BENCHMARK_SPLITS[args.split][0])
    suffix = "" if args.difficulty == "standard" else f"_{args.difficulty}"
    root = Path(args.root or f"data/bench_{args.split}{suffix}")
    missing = [c for c in cats if not (root / c).is_dir()]
    if missing:
        write_benchmark(root, args.split, difficulty=args.difficulty)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    records: list[dict] = []

    def emit(rec):
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "per_type"}), flush=True)

    default = [run_category(root, c, emit, args.studies) for c in cats]
    md = markdown(records, args.split)
    if args.out:
        Path(args.out).write_text(json.dumps({"split": args.split, "records": records}, indent=1))
        # Not <name>.md: docs/ablations.md is the hand-written page these tables are copied into.
        Path(args.out).with_suffix(".tables.md").write_text(md)
    worst = min(r["per_type"][k]["image_auroc"] for r in default for k in r["per_type"])
    print(json.dumps({"split": args.split, "default_mean_image_auroc": float(np.mean([r["image_auroc"] for r in default])),
                      "default_worst_type_image_auroc": worst}))
    print(md, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
