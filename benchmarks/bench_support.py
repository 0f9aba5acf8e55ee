"""What setting the measured support aside costs predict, measured in the same run.

The raw-scans issue allows predict to slow by at most 10 %. One offline detector is fitted per
route on the same generated parts (400 px, the benchmark's size) and the routes are timed
alternately, one predict per part, ``--repeats`` rounds:

- ``keep``: preprocessed scans, ``support="keep"``: the detector as it was before this step;
- ``auto``: the same preprocessed scans with ``support="auto"`` (the default): what the check
  costs a scan that has no support in it;
- ``raw``: the same parts as raw scans (table measured), ``support="auto"``: the step at work;
- ``raw_keep``: the raw scans with ``support="keep"``: what the same inputs cost before the step;
- ``preprocess_then_keep``: ``mafr.datasets.preprocess_sample`` on each raw scan, then predict
  with ``support="keep"``: the documented route a raw scan took before, preprocessing included.

Prints one JSON line with the median seconds per part and the ratios ``auto / keep`` (the
no-support case, the 10 % limit), ``raw / raw_keep`` (the same raw inputs before and after) and
``raw / preprocess_then_keep``.

    python benchmarks/bench_support.py [--repeats 5] [--threads 2] [--category puck]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mafr
from mafr.datasets import generate_sample, preprocess_sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--category", default="puck")
    p.add_argument("--parts", type=int, default=6, help="test parts per round")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def parts(seeds, background):
        return [generate_sample(args.category, seed=s, background=background) for s in seeds]

    fit_raw, test_raw = parts(range(10), "plane"), parts(range(100, 100 + args.parts), "plane")
    fit_pre, test_pre = parts(range(10), "none"), parts(range(100, 100 + args.parts), "none")

    def detector(fit, support):
        cfg = mafr.MAFRConfig(preset="offline", support=support)
        return mafr.MAFRDetector(cfg, device="cpu").fit(fit, seed=0, progress=False)

    keep, auto, raw = detector(fit_pre, "keep"), detector(fit_pre, "auto"), detector(fit_raw, "auto")
    raw_keep = detector(fit_raw, "keep")

    def preprocess_then_keep(s):
        return keep.predict(*preprocess_sample(s.rgb, s.xyz))

    routes = {
        "keep": lambda s: keep.predict(s.rgb, s.xyz),
        "auto": lambda s: auto.predict(s.rgb, s.xyz),
        "raw": lambda s: raw.predict(s.rgb, s.xyz),
        "raw_keep": lambda s: raw_keep.predict(s.rgb, s.xyz),
        "preprocess_then_keep": preprocess_then_keep,
    }
    inputs = {"keep": test_pre, "auto": test_pre, "raw": test_raw, "raw_keep": test_raw, "preprocess_then_keep": test_raw}
    for name, fn in routes.items():  # warm-up
        fn(inputs[name][0])
    # Interleaved part by part, the routes in a rotating order, so that a change in machine load
    # (2 shared cores) falls on every route alike; medians of single predicts.
    times: dict[str, list[float]] = {k: [] for k in routes}
    names = list(routes)
    for r in range(args.repeats):
        for i in range(args.parts):
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                routes[name](inputs[name][i])
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "bench": "support", "category": args.category, "threads": args.threads, "repeats": args.repeats,
        "seconds_per_part": {k: round(v, 4) for k, v in med.items()},
        "auto_over_keep": round(med["auto"] / med["keep"], 3),
        "raw_over_preprocess_then_keep": round(med["raw"] / med["preprocess_then_keep"], 3),
        "raw_over_keep": round(med["raw"] / med["keep"], 3),
        "raw_over_raw_keep": round(med["raw"] / med["raw_keep"], 3),
    }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
