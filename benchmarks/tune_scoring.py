"""Compare scoring-only settings on the generated benchmark, training each fit once.

    python benchmarks/tune_scoring.py --root data/bench_tuning_hard --difficulty hard \\
        --variant '{"scoring": {"level_bins": [0.25, 0.5, 0.75]}}' --variant '{"scoring": {"box7_passes": 0}}'

Scoring settings (``config.scoring``: levels, bins, smoothing, threshold rule) act after the
autoencoder is trained, so there is no need to train once per setting. Per category the fit
and test parts' features are extracted once; per fit seed the offline preset's autoencoder is
trained once; then every variant re-calibrates on the same held-out split, as ``fit`` does
(``mafr.training.recalibrate_as_fitted``), and scores the test parts. The first row of each fit, ``default``, is exactly
what ``benchmarks/tune.py`` reports; a variant row equals ``tune.py --set VARIANT``. A variant
that changes anything but ``scoring`` is refused: it would need its own training.

Prints one JSON line per (category, seed, variant), then one summary line per variant (the
means of ``tune.py``'s summary).
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np

import mafr
from mafr import metrics
from mafr.datasets import DEFECTS, MVTec3D
from mafr.evaluation import decision_metrics
from tune import add_data_arguments, prepare_data, summarise


def score_rows(det: mafr.MAFRDetector, test_feats, types: list[str]) -> dict:
    """Image I-AUROC (all defects and per type), recall and false-alarm rate at the detector's threshold."""
    scores = np.asarray(det.score_features(test_feats))
    good = np.array([t == "good" for t in types])
    labels = (~good).astype(int).tolist()
    per_type = {}
    for t in DEFECTS:
        m = np.array([x == t for x in types])
        if m.any():
            per_type[t] = metrics.image_auroc([0] * int(good.sum()) + [1] * int(m.sum()),
                                              list(scores[good]) + list(scores[m]))
    decided = decision_metrics(labels, [bool(s > det.threshold_) for s in scores])
    return {"image_auroc": metrics.image_auroc(labels, list(scores)), "per_type": per_type,
            "recall": decided["recall"], "false_alarm_rate": decided["false_alarm_rate"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--variant", action="append", default=[], metavar="JSON",
                   help="scoring overrides on top of the offline preset, e.g. '{\"scoring\": {...}}' (repeatable)")
    args = p.parse_args(argv)
    variants = {"default": {}}
    for text in args.variant:
        overrides = json.loads(text)
        if not isinstance(overrides, dict) or set(overrides) - {"scoring"}:
            p.error(f"--variant must be a JSON object with only a 'scoring' key, got {text!r}")
        mafr.MAFRConfig(preset="offline", **overrides)  # a bad override fails before any fit
        variants[text] = overrides
    root, cats = prepare_data(args)

    rows: dict[str, list[dict]] = {name: [] for name in variants}
    for c in cats:
        train, test = list(MVTec3D(root, c, "train")), list(MVTec3D(root, c, "test"))
        base = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline"))
        fit_feats, test_feats = base.extract_features(train), base.extract_features(test)
        types = [s.defect_type if s.label else "good" for s in test]
        for seed in args.seeds:
            trained = copy.deepcopy(base)._fit_extracted(train, fit_feats, seed=seed)
            for name, overrides in variants.items():
                det = copy.deepcopy(trained)
                det.config = mafr.MAFRConfig(preset="offline", **overrides)
                # The split fit drew with this seed: the same parts calibrate every variant.
                mafr.training.recalibrate_as_fitted(det, fit_feats, seed)
                row = {"variant": name, "category": c, "seed": seed, **score_rows(det, test_feats, types)}
                rows[name].append(row)
                print(json.dumps(row), flush=True)
    for name, overrides in variants.items():
        print(json.dumps({"variant": name, "set": overrides, "seeds": args.seeds, **summarise(rows[name])}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
