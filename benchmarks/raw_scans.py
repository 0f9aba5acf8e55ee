"""Raw scans against preprocessed ones: the generated report categories with the table measured,
thin versions of them among them, scored as they come from the sensor and after the documented
preprocessing (docs/ablations.md, "Raw scans").

    python benchmarks/raw_scans.py --root data/bench_raw                      # defaults
    python benchmarks/raw_scans.py --root data/bench_raw --routes raw keep   # the support kept in
    python benchmarks/raw_scans.py --routes raw --set JSON   # config overrides on the offline preset
    python benchmarks/raw_scans.py --retention     # what preprocessing keeps of 1, 2, 5 mm parts

Each *part set* is a report category written with its table measured (``background="plane"``),
optionally thinned (``--thin CATEGORY:MM``: the same shapes, their top that many mm above the
table). Routes: ``raw`` (the scans as the sensor gives them, the detector's defaults),
``preprocessed`` (``mafr.datasets.preprocess_dataset`` first, the docs' route) and ``keep``
(raw, with ``support="keep"``: what the detector did before it set the support aside). One offline
detector is fitted per part set, route and seed on the 10 good training parts and scored on the
test parts. Prints a JSON line per fit (I-AUROC, AUPRO@30%, recall and mask IoU per defect type,
false alarms at the detector's decision, the share of each part's measured pixels the detector
kept) and a summary line per route.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr.datasets import DEFECTS, MVTec3D, preprocess_dataset, write_benchmark
from mafr.datasets.synthetic import REPORT_CATEGORIES
from mafr.evaluation import evaluate_detector

ROUTES = ("raw", "preprocessed", "keep")


def part_sets(thin: list[str]) -> dict[str, tuple[str, float | None]]:
    """``{name: (category, thickness in m or None)}``: every report category, plus the thin ones."""
    sets = {c: (c, None) for c in REPORT_CATEGORIES}
    for spec in thin:
        cat, mm = spec.split(":")
        sets[f"{cat}_{mm}mm"] = (cat, float(mm) / 1000)
    return sets


def write_data(root: Path, sets: dict[str, tuple[str, float | None]]) -> None:
    for name, (cat, thickness) in sets.items():
        raw = root / "raw" / name
        if not raw.is_dir():
            tmp = root / "raw" / f".{name}"
            write_benchmark(tmp, "report", categories=[cat], background="plane", thickness=thickness)
            (tmp / cat).rename(raw)
            tmp.rmdir()
        if not (root / "preprocessed" / name).is_dir():
            with warnings.catch_warnings():  # counted below, per part, not printed per file
                warnings.simplefilter("ignore")
                preprocess_dataset(root / "raw", root / "preprocessed", categories=[name], progress=False)


def fit_and_score(root: Path, name: str, route: str, seed: int, overrides: dict | None = None) -> dict:
    folder = root / ("preprocessed" if route == "preprocessed" else "raw")
    train, test = list(MVTec3D(folder, name, "train")), list(MVTec3D(folder, name, "test"))
    config = mafr.MAFRConfig(preset="offline", **{"support": "keep" if route == "keep" else "auto", **(overrides or {})})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = mafr.MAFRDetector(config).fit(train, seed=seed, progress=False)
        result = evaluate_detector(det, test, progress=False)
    per_type = result["per_type"]
    return {"set": name, "route": route, "seed": seed, "image_auroc": round(result["image_auroc"], 4),
            "aupro@0.3": round(result["aupro@0.3"], 4), "recall": result["recall"],
            "false_alarm_rate": result["false_alarm_rate"], "mask_iou": result["mask_iou"],
            "per_type": {t: {k: per_type[t][k] for k in ("image_auroc", "recall", "mask_iou")} for t in DEFECTS},
            "warnings": len(caught), "predict_ms": round(result["predict_ms"], 1)}


def summarise(rows: list[dict]) -> dict:
    def mean(values) -> float | None:
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    cells = {(r["set"], t): r["per_type"][t]["image_auroc"] for r in rows for t in DEFECTS}
    worst = min(cells, key=cells.get)
    return {"route": rows[0]["route"], "mean_image_auroc": mean(r["image_auroc"] for r in rows),
            "per_type": {t: mean(r["per_type"][t]["image_auroc"] for r in rows) for t in DEFECTS},
            "aupro@0.3": mean(r["aupro@0.3"] for r in rows), "recall": mean(r["recall"] for r in rows),
            "false_alarm_rate": mean(r["false_alarm_rate"] for r in rows), "mask_iou": mean(r["mask_iou"] for r in rows),
            "per_set": {s: mean(r["image_auroc"] for r in rows if r["set"] == s) for s in dict.fromkeys(r["set"] for r in rows)},
            "worst_cell": {"set": worst[0], "type": worst[1], "image_auroc": cells[worst]}}


def retention(seeds=range(3), categories=("plate", "puck", "disc", "block")) -> dict:
    """Share of each thin part's measured pixels that preprocessing keeps, with the measured
    tolerance (the default) and the reference's fixed 5 mm, and how many table pixels survive."""
    from mafr.datasets import generate_sample, preprocess_sample
    from mafr.io import measured_pixels

    out = {}
    for mm in (1, 2, 5):
        for route, distance in (("measured", None), ("fixed_5mm", 0.005)):
            part_kept, table_kept, warned = [], 0, 0
            for cat in categories:
                for seed in seeds:
                    s, layers = generate_sample(cat, seed=seed, background="plane", thickness=mm / 1000, return_layers=True)
                    part = layers["part"] & measured_pixels(s.xyz)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        _, xyz = preprocess_sample(s.rgb, s.xyz, remove_distance=distance)
                    kept = measured_pixels(xyz)  # 400 x 400: no padding
                    part_kept.append((kept & part).sum() / part.sum())
                    table_kept += int((kept & ~layers["part"]).sum())
                    warned += any(issubclass(w.category, mafr.PartRemovedWarning) for w in caught)
            out[f"{mm}mm_{route}"] = {"min_part_kept": round(float(min(part_kept)), 3),
                                      "mean_part_kept": round(float(np.mean(part_kept)), 3),
                                      "table_pixels_kept": table_kept, "warned": f"{warned}/{len(part_kept)}"}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/bench_raw", help="benchmark data (written when missing)")
    p.add_argument("--routes", nargs="+", choices=ROUTES, default=["raw", "preprocessed"])
    p.add_argument("--thin", nargs="*", default=["disc:2", "block:1.5"], metavar="CATEGORY:MM",
                   help="thin part sets: a report category with its top this many mm above the table")
    p.add_argument("--sets", nargs="+", default=None, help="only these part sets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", default="{}", metavar="JSON", help="config overrides on top of the offline preset")
    p.add_argument("--retention", action="store_true",
                   help="only: how much of 1, 2 and 5 mm parts preprocessing keeps (measured vs fixed tolerance)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.retention:
        print(json.dumps({"retention": retention()}), flush=True)
        return 0
    root, overrides = Path(args.root), json.loads(args.set)
    sets = part_sets(args.thin)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets}
    write_data(root, sets)
    for route in args.routes:
        rows = []
        for seed in args.seeds:
            for name in sets:
                rows.append(fit_and_score(root, name, route, seed, overrides))
                print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"summary": True, "seeds": args.seeds, "set": overrides, **summarise(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
