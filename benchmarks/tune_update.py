"""Compare `update()` settings on tuning categories, fitting each detector once.

    python benchmarks/tune_update.py --category dome ring plate tile shaft \\
        --variant '{"train": {"update_lr_scale": 0.75}}' --variant '{"train": {"update_lr_scale": 1.0}}'

The data and figures are ``benchmarks/bench_update.py``'s (the same parts, appearance shift and
targets), without its two refits: per category and fit seed the offline preset is fitted once
on the old appearance, then a copy is updated with the 5 new-appearance parts under each
variant (``default`` first). Besides the targets' figures each row has ``gap``, the mean
log-score of new-appearance good parts minus that of old ones, and ``margin``, the largest
new-appearance good part's log-score minus the log-threshold (above 0: a false alarm): the
tuning categories rarely flag a part, and these show how close they come. Only ``train``
settings that act in ``update`` are accepted (``update_steps``, ``update_lr_scale``).

Prints one JSON line per (category, seed, variant), then one summary line per variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

import mafr
from bench_update import _evaluate, _sets

UPDATE_FIELDS = {"update_steps", "update_lr_scale"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--category", nargs="+", default=["dome", "ring", "plate", "tile", "shaft"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=400)
    p.add_argument("--per-defect", type=int, default=4)
    p.add_argument("--good", type=int, default=10)
    p.add_argument("--variant", action="append", default=[], metavar="JSON",
                   help="update settings on top of the offline preset, e.g. '{\"train\": {\"update_lr_scale\": 1.0}}'")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    variants = {"default": {}}
    for text in args.variant:
        overrides = json.loads(text)
        if (not isinstance(overrides, dict) or set(overrides) - {"train"}
                or set(overrides.get("train", {})) - UPDATE_FIELDS):
            p.error(f"--variant may set only train.{sorted(UPDATE_FIELDS)}, got {text!r}")
        mafr.MAFRConfig(preset="offline", **overrides)
        variants[text] = overrides
    torch.set_num_threads(args.threads)

    rows: dict[str, list[dict]] = {name: [] for name in variants}
    for category in args.category:
        data = _sets(category, args.size, args.per_defect, args.good)
        for seed in args.seeds:
            t0 = time.perf_counter()
            fitted = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline")).fit(data["fit"], seed=seed, progress=False)
            fit_s = time.perf_counter() - t0
            test = {k: fitted.extract_features(data[k]) for k in ("old_good", "new_good", "old_defect", "new_defect")}
            before = _evaluate(fitted, test)
            for name, overrides in variants.items():
                det = copy.deepcopy(fitted)
                det.config = mafr.MAFRConfig(preset="offline", **overrides)
                t0 = time.perf_counter()
                det.update(data["update"], seed=seed)
                update_s = time.perf_counter() - t0
                after = _evaluate(det, test)
                logs = {k: np.log(np.asarray(det.score_features(test[k]))) for k in ("old_good", "new_good")}
                row = {"variant": name, "category": category, "seed": seed,
                       "false_alarms_old": after["false_alarms_old"], "false_alarms_new": after["false_alarms_new"],
                       "auroc_old_defects": after["auroc_old_defects"], "auroc_new_defects": after["auroc_new_defects"],
                       "old_drop": round(before["auroc_old_defects"] - after["auroc_old_defects"], 4),
                       "gap": round(float(logs["new_good"].mean() - logs["old_good"].mean()), 4),
                       "margin": round(float(logs["new_good"].max() - np.log(det.threshold_)), 4),
                       "update_over_fit": round(update_s / fit_s, 3)}
                rows[name].append(row)
                print(json.dumps(row), flush=True)
    for name, overrides in variants.items():
        rs = rows[name]
        summary = {k: round(float(np.mean([r[k] for r in rs])), 4)
                   for k in ("false_alarms_old", "false_alarms_new", "auroc_old_defects", "auroc_new_defects",
                             "old_drop", "gap", "margin", "update_over_fit")}
        summary.update(worst_old_drop=max(r["old_drop"] for r in rs), worst_margin=max(r["margin"] for r in rs))
        print(json.dumps({"variant": name, "set": overrides, "seeds": args.seeds, **summary}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
