"""What turned copies of the training parts (``train.rotations``) cost a fit, in one run.

The offline preset fitted on 10 generated raw scans (the table measured) with turned copies at
``--rotations`` (opt-in; docs/ablations.md) and without them (the preset's ``()``), in turn,
``--repeats`` times each; the medians of fit, extraction and training seconds, and their ratios. Prints one JSON line; no target, no exit code
from timings (docs/performance.md).

    python benchmarks/bench_rotations.py [--rotations -8 8] [--category cylinder] [--size 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

import mafr
from mafr.datasets import generate_sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--category", default="cylinder")
    p.add_argument("--size", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rotations", type=float, nargs="+", default=[-8.0, 8.0], help="degrees")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [generate_sample(args.category, seed=s, size=args.size, background="plane") for s in range(10)]
    variants = {"with_copies": {"train": {"rotations": tuple(args.rotations)}}, "without": {}}
    times: dict[str, dict[str, list[float]]] = {v: {"fit": [], "extract": [], "train": []} for v in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a blind-detector warning is not what is timed here
        for _ in range(args.repeats):
            for name, overrides in variants.items():  # interleaved: both see the same machine
                info = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", **overrides)).fit(parts, progress=False).fit_info_
                for key in ("fit", "extract", "train"):
                    times[name][key].append(info[f"{key}_seconds"])
    med = {v: {k: round(float(np.median(t)), 3) for k, t in d.items()} for v, d in times.items()}
    out = {"bench": "rotations", "category": args.category, "size": args.size, "repeats": args.repeats,
           "rotations": args.rotations, "seconds": med,
           "ratio": {k: round(med["with_copies"][k] / med["without"][k], 3) for k in ("fit", "extract", "train")}}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
