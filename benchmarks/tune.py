"""Score one configuration on the generated benchmark's tuning set over several fit seeds: the
numbers defaults are chosen by (docs/ablations.md, "What the tuning set said").

    python benchmarks/tune.py --root data/bench_tuning_big                       # this release's defaults
    python benchmarks/tune.py --root data/bench_tuning_hard --difficulty hard \\
        --set '{"rgb": {"rarity_on_part": false}, "scoring": {"channel_reduce_2d": "rms"}}'

Every category of the split is fitted with the offline preset plus ``--set`` (a JSON object of
config overrides, merged with the preset as ``MAFRConfig(preset="offline", **overrides)``) on its
10 good training parts, once per seed, and scored on its test parts. Prints one JSON line per fit
(category, seed, I-AUROC of all defects and per defect type, recall and false-alarm rate at the
detector's decision), then a summary line: the means over categories and seeds, per type and per
category, and the worst category x type cell. Missing data is written first (``--root``,
``--difficulty``). The figures equal ``python -m mafr evaluate --dataset generated --split tuning
--seed S`` averaged over S, to the rounding of thread counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr.datasets import BENCHMARK_DIFFICULTIES, BENCHMARK_SPLITS, DEFECTS, MVTec3D, write_benchmark
from mafr.evaluation import evaluate_detector


def fit_and_score(root: Path, category: str, overrides: dict, seed: int) -> dict:
    train = list(MVTec3D(root, category, "train"))
    test = list(MVTec3D(root, category, "test"))
    det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", **overrides)).fit(train, seed=seed, progress=False)
    result = evaluate_detector(det, test, progress=False)
    return {"category": category, "seed": seed, "image_auroc": result["image_auroc"],
            "per_type": {t: result["per_type"][t]["image_auroc"] for t in DEFECTS},
            "recall": result["recall"], "false_alarm_rate": result["false_alarm_rate"]}


def summarise(rows: list[dict]) -> dict:
    def mean(values) -> float:
        return round(float(np.mean(list(values))), 4)

    cats = sorted({r["category"] for r in rows})
    cells = {(c, t): mean(r["per_type"][t] for r in rows if r["category"] == c) for c in cats for t in DEFECTS}
    worst = min(cells, key=cells.get)
    return {"mean_image_auroc": mean(r["image_auroc"] for r in rows),
            "per_type": {t: mean(r["per_type"][t] for r in rows) for t in DEFECTS},
            "recall": mean(r["recall"] for r in rows), "false_alarm_rate": mean(r["false_alarm_rate"] for r in rows),
            "per_category": {c: mean(r["image_auroc"] for r in rows if r["category"] == c) for c in cats},
            "worst_cell": {"category": worst[0], "type": worst[1], "image_auroc": cells[worst]}}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark-data and fit options shared by the tuning tools (``tune_scoring.py`` too)."""
    p.add_argument("--root", default=None, help="benchmark data (written when missing)")
    p.add_argument("--split", choices=tuple(BENCHMARK_SPLITS), default="tuning")
    p.add_argument("--difficulty", choices=tuple(BENCHMARK_DIFFICULTIES), default="standard")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fit seeds")
    p.add_argument("--category", nargs="+", default=None)
    p.add_argument("--threads", type=int, default=2)


def prepare_data(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Set the thread count, write missing data; the data root and the categories to score."""
    torch.set_num_threads(args.threads)
    cats = args.category or list(BENCHMARK_SPLITS[args.split][0])
    suffix = "" if args.difficulty == "standard" else f"_{args.difficulty}"
    root = Path(args.root or f"data/bench_{args.split}{suffix}")
    if any(not (root / c).is_dir() for c in cats):
        write_benchmark(root, args.split, difficulty=args.difficulty)
    return root, cats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--set", default="{}", metavar="JSON", help="config overrides on top of the offline preset")
    args = p.parse_args(argv)
    overrides = json.loads(args.set)
    if not isinstance(overrides, dict):
        p.error(f"--set must be a JSON object, got {args.set!r}")
    mafr.MAFRConfig(preset="offline", **overrides)  # a bad override fails before any fit
    root, cats = prepare_data(args)
    rows = []
    for seed in args.seeds:
        for c in cats:
            rows.append(fit_and_score(root, c, overrides, seed))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"set": overrides, "seeds": args.seeds, **summarise(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
