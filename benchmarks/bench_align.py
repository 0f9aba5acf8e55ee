"""What turning parts to a common axis (``align="axis"``) costs predict, in one run.

Three offline-preset detectors fitted on the same 10 generated raw scans (the table measured)
of a shape with a long axis: ``align="axis"`` (the preset), ``"none"``, and ``"none"`` with
``support="keep"`` (raw scans as they were judged before the support step and turning); each
predicts the same held-out parts, interleaved ``--repeats`` times so a load change hits all.
Prints one JSON line: the median seconds per part of ``predict`` and of its preparation stage
(support, turning, framing, resizing) for each, and the ratios of ``axis`` to the other two. No
target and no exit code from timings (docs/performance.md).

    python benchmarks/bench_align.py [--category cylinder] [--size 400] [--parts 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

import mafr
from mafr.datasets import generate_sample
from mafr.preparation import prepare


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--category", default="cylinder")
    p.add_argument("--size", type=int, default=400)
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fit = [generate_sample(args.category, seed=s, size=args.size, background="plane") for s in range(10)]
    test = [generate_sample(args.category, seed=100 + s, size=args.size, background="plane") for s in range(args.parts)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a blind-detector warning is not what is timed here
        variants = {"axis": {"align": "axis"}, "none": {"align": "none"}, "keep": {"align": "none", "support": "keep"}}
        dets = {name: mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", **v)).fit(fit, progress=False)
                for name, v in variants.items()}
        times: dict[str, dict[str, list[float]]] = {a: {"predict": [], "prepare": []} for a in dets}
        for det in dets.values():
            det.predict(test[0].rgb, test[0].xyz)  # warm-up: extractors built, first-call costs paid
        for _ in range(args.repeats):
            for name, det in dets.items():
                for part in test:
                    times[name]["predict"].append(_seconds(lambda: det.predict(part.rgb, part.xyz)))
                    times[name]["prepare"].append(_seconds(lambda: prepare(part, det.config, det.device, det.framing_)))
    med = {a: {k: round(float(np.median(t)), 4) for k, t in d.items()} for a, d in times.items()}
    out = {"bench": "align", "category": args.category, "size": args.size, "parts": args.parts, "repeats": args.repeats,
           "axis": dets["axis"].framing_.axis, "seconds": med,
           "ratio": {k: round(med["axis"][k] / med["none"][k], 3) for k in ("predict", "prepare")},
           "ratio_to_keep": {k: round(med["axis"][k] / med["keep"][k], 3) for k in ("predict", "prepare")}}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
