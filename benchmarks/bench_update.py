"""When "normal" moves: `MAFRDetector.update` against the two naive remedies.

Offline preset, one category of generated parts. Fit on 10 good parts of the original
appearance; then the line changes finish and lighting (:func:`appearance_shift`: same geometry,
only the RGB changes) and 5 good parts of the new appearance arrive. Compared, on held-out test
parts of both appearances (good, and 2 of each defect type):

- ``before``: the detector fitted on the old parts only;
- ``update``: ``det.update(5 new good parts)``;
- ``refit_new``: a fresh fit on the 5 new parts only (forgets the old appearance);
- ``refit_all``: a fresh fit on all 15 parts (the slow, correct remedy).

Reported: false-alarm rate on old and new good parts, I-AUROC on old- and new-appearance
defects, the time of ``update`` against the original ``fit`` and the refit. Targets (issue 12):
after update false alarms <= 10% on both, new-defect I-AUROC >= 0.90, old-defect I-AUROC no more
than 0.02 below its value before, update <= 0.3 x fit time. ``--paper-size`` also saves a
random-weights paper-architecture detector and reports the size of its ``model.safetensors``.

Prints one JSON line; exits 1 when a target is missed.

    python benchmarks/bench_update.py [--category puck] [--seeds 0 1 2] [--set JSON] [--paper-size]
        [--background plane]                  # raw scans, the table measured

Update settings are chosen on tuning categories (``--category dome``, ...), reported on the
report set's (docs/concepts.md, section 11).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr import metrics
from mafr.datasets import DEFECTS, generate_sample
from mafr.types import Sample

#: Per-channel gain of the new finish (warmer, less blue) and the re-lit station's brightness.
#: Strong enough that the detector fitted on the old appearance flags every new good part.
FINISH_GAIN = (1.4, 0.95, 0.6)
LIGHT_GAIN, LIGHT_OFFSET = 0.8, 20.0


def appearance_shift(category: str, defect, seed: int, size: int = 224, background: str = "none") -> Sample:
    """``generate_sample(category, defect, seed=seed)`` with a new finish on the part (per-channel
    gain) under new lighting (global gain and offset). Geometry, defects and noise are unchanged."""
    sample, layers = generate_sample(category, defect, seed=seed, size=size, background=background,
                                     return_layers=True)
    rgb = sample.rgb.astype(np.float32)
    rgb = np.where(layers["part"][..., None], rgb * np.asarray(FINISH_GAIN, dtype=np.float32), rgb)
    rgb = np.clip(np.rint(rgb * LIGHT_GAIN + LIGHT_OFFSET), 0, 255).astype(np.uint8)
    return Sample(rgb=rgb, xyz=sample.xyz, label=sample.label, mask=sample.mask,
                  defect_type=sample.defect_type, name=f"{sample.name}/shifted")


def _sets(category: str, size: int, per_defect: int, n_good_test: int, background: str = "none"):
    old = lambda d, s: generate_sample(category, d, seed=s, size=size, background=background)  # noqa: E731
    new = lambda d, s: appearance_shift(category, d, s, size, background)  # noqa: E731
    good_seeds = range(200, 200 + n_good_test)
    defect_seeds = [(d, 300 + 10 * i + j) for i, d in enumerate(DEFECTS) for j in range(per_defect)]
    return {
        "fit": [old(None, s) for s in range(10)],
        "update": [new(None, s) for s in range(100, 105)],
        "old_good": [old(None, s) for s in good_seeds],
        "new_good": [new(None, s + 50) for s in good_seeds],
        "old_defect": [old(d, s) for d, s in defect_seeds],
        "new_defect": [new(d, s + 50) for d, s in defect_seeds],
    }


def _evaluate(det: mafr.MAFRDetector, feats: dict) -> dict:
    s = {k: np.asarray(det.score_features(v)) for k, v in feats.items()}
    t = det.threshold_
    return {
        "threshold": round(float(t), 4),
        "false_alarms_old": round(float((s["old_good"] > t).mean()), 3),
        "false_alarms_new": round(float((s["new_good"] > t).mean()), 3),
        "auroc_old_defects": round(metrics.image_auroc([0] * len(s["old_good"]) + [1] * len(s["old_defect"]),
                                                       list(s["old_good"]) + list(s["old_defect"])), 4),
        "auroc_new_defects": round(metrics.image_auroc([0] * len(s["new_good"]) + [1] * len(s["new_defect"]),
                                                       list(s["new_good"]) + list(s["new_defect"])), 4),
        "defects_missed_old": round(float((s["old_defect"] <= t).mean()), 3),
        "defects_missed_new": round(float((s["new_defect"] <= t).mean()), 3),
    }


def paper_size(n_parts: int) -> dict:
    """Size of model.safetensors for the paper architecture (random weights), store included."""
    cfg = mafr.MAFRConfig(extractor_weights="random", train={"steps": 1})
    parts = [generate_sample("puck", seed=s) for s in range(n_parts)]
    det = mafr.MAFRDetector(cfg).fit(parts, progress=False)
    with tempfile.TemporaryDirectory() as d:
        det.save_pretrained(d)
        total = (Path(d) / "model.safetensors").stat().st_size
    store = sum(v.numel() * v.element_size() for v in det.replay_.to_tensors().values())
    return {"paper_model_mb": round(total / 1e6, 2), "paper_replay_mb": round(store / 1e6, 2),
            "paper_replay_parts": len(det.replay_), "paper_weights_mb": round((total - store) / 1e6, 2)}


def _run(data: dict, seed: int, overrides: dict | None = None) -> tuple[dict, mafr.MAFRDetector]:
    """The whole comparison with one fit seed (fit, update and both refits): its figures, and
    the updated detector (for its saved size)."""
    cfg = mafr.MAFRConfig(preset="offline", **(overrides or {}))
    t0 = time.perf_counter()
    det = mafr.MAFRDetector(cfg).fit(data["fit"], seed=seed, progress=False)
    fit_s = time.perf_counter() - t0
    test = {k: det.extract_features(data[k]) for k in ("old_good", "new_good", "old_defect", "new_defect")}
    out: dict = {"before": _evaluate(det, test)}
    t0 = time.perf_counter()
    det.update(data["update"], seed=seed)
    update_s = time.perf_counter() - t0
    out["update"] = _evaluate(det, test)
    t0 = time.perf_counter()
    only_new = mafr.MAFRDetector(cfg).fit(data["update"], seed=seed, progress=False)
    out["refit_new"] = _evaluate(only_new, test)
    refit_new_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    everything = mafr.MAFRDetector(cfg).fit(data["fit"] + data["update"], seed=seed, progress=False)
    refit_all_s = time.perf_counter() - t0
    out["refit_all"] = _evaluate(everything, test)
    out["seconds"] = {"fit": round(fit_s, 2), "update": round(update_s, 2), "refit_new": round(refit_new_s, 2),
                      "refit_all": round(refit_all_s, 2), "update_over_fit": round(update_s / fit_s, 3)}
    return out, det


def _mean(runs: list[dict]) -> dict:
    """Field-by-field mean of :func:`_run` results (nested dicts of numbers)."""
    first = runs[0]
    return {k: (_mean([r[k] for r in runs]) if isinstance(v, dict)
                else round(float(np.mean([r[k] for r in runs])), 4) if isinstance(v, (int, float)) else v)
            for k, v in first.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="puck")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--per-defect", type=int, default=2, help="test parts per defect type and appearance")
    parser.add_argument("--good", type=int, default=10, help="good test parts per appearance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", default="{}", help="config overrides (JSON) on top of the offline preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fit seeds; with several, the figures (and the targets) are their means")
    parser.add_argument("--paper-size", action="store_true", help="also measure the paper architecture's file size")
    parser.add_argument("--background", choices=("none", "plane"), default="none",
                        help="plane: raw scans, the table measured (the detector sets it aside itself)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = _sets(args.category, args.size, args.per_defect, args.good, args.background)
    overrides = json.loads(args.set)
    runs = []
    for seed in args.seeds:
        figures, det = _run(data, seed, overrides)
        runs.append(figures)
    out: dict = {"bench": "update", "category": args.category, "background": args.background, "preset": "offline",
                 "fit_parts": 10, "update_parts": 5,
                 "test_good_per_appearance": args.good, "test_defects_per_appearance": len(DEFECTS) * args.per_defect,
                 "seeds": list(args.seeds), "set": overrides}
    # Several fit seeds: the targets are judged on the mean (one seed's I-AUROC over 20 defective
    # parts moves by 0.05 per part), and every seed's figures are kept.
    out.update(_mean(runs) if len(runs) > 1 else runs[0])
    if len(runs) > 1:
        out["per_seed"] = runs
    with tempfile.TemporaryDirectory() as d:
        det.save_pretrained(d)
        out["offline_model_kb"] = round((Path(d) / "model.safetensors").stat().st_size / 1e3, 1)
    if args.paper_size:
        out.update(paper_size(10))

    after, before = out["update"], out["before"]
    targets = {
        "false_alarms_old<=0.10": after["false_alarms_old"] <= 0.10,
        "false_alarms_new<=0.10": after["false_alarms_new"] <= 0.10,
        "auroc_new_defects>=0.90": after["auroc_new_defects"] >= 0.90,
        # Rounded: AUROCs here are multiples of 1/200, and 0.98 - 0.96 is 0.020000000000000018 in floats.
        "auroc_old_defects_drop<=0.02": round(before["auroc_old_defects"] - after["auroc_old_defects"], 6) <= 0.02,
        "update<=0.3xfit": out["seconds"]["update_over_fit"] <= 0.3,
    }
    if args.paper_size:
        targets["paper_model<20MB"] = out["paper_model_mb"] < 20
    out["targets"] = targets
    print(json.dumps(out), flush=True)
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
