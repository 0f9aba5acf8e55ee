"""Offline-preset predict time against the previous release's, measured in the same run.

The defect-type issue allows its changes to slow ``predict`` by at most 10 %. This release added
two things to the offline preset that cost time (the mean resize of the cloud,
``points.resize="mean"``, and the colour-rarity channel, ``rgb.ring_radii``) and one that saves
it (the colour/gradient extractor's k x k cell means computed as a 1 x k then a k x 1 mean).
Three detectors are fitted on the same generated parts (400 px, as the benchmark's) and timed
alternately, one predict per part:

- ``previous``: the previous release's offline predict: both features off and the k x k means
  computed in one pass (``_dense_pool``, that release's ``ColorGradientExtractor._pool``);
- ``current``: this release's offline preset;
- ``features_off``: this release's code with both features off (what the two features cost).

Prints one JSON line; exits 1 when ``current / previous`` exceeds 1.10.

    python benchmarks/bench_offline_predict.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def _dense_pool(self, maps: torch.Tensor, scale: int) -> torch.Tensor:
    """The previous release's ``ColorGradientExtractor._pool``: one k x k average pool."""
    k, p = self.patch * scale, self.patch
    lo = (k - p) // 2
    pad = (lo, k - p - lo, lo, k - p - lo)
    total = F.avg_pool2d(F.pad(maps, pad), k, stride=p)
    ones = torch.ones(1, 1, *maps.shape[2:], device=maps.device, dtype=maps.dtype)
    return total / F.avg_pool2d(F.pad(ones, pad), k, stride=p)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each times every detector on every part")
    parser.add_argument("--parts", type=int, default=4, help="parts predicted per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mafr
    from mafr.datasets.synthetic import generate_sample
    from mafr.extractors.offline import ColorGradientExtractor

    fit_parts = [generate_sample("puck", seed=s) for s in range(6)]
    probes = [generate_sample("puck", "stain", seed=100 + i) for i in range(args.parts)]
    off = {"points": {"resize": "nearest"}, "rgb": {"ring_radii": ()}}
    split_pool = ColorGradientExtractor._pool
    variants = {
        "previous": (off, _dense_pool),
        "current": ({}, split_pool),
        "features_off": (off, split_pool),
    }
    detectors = {}
    for name, (overrides, pool) in variants.items():
        ColorGradientExtractor._pool = pool
        cfg = mafr.MAFRConfig(preset="offline", train={"steps": 20}, **overrides)
        detectors[name] = mafr.MAFRDetector(cfg, device="cpu").fit(fit_parts, progress=False)
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, (_, pool) in variants.items():
                ColorGradientExtractor._pool = pool
                t0 = time.perf_counter()
                for p in probes:
                    detectors[name].predict(p.rgb, p.xyz)
                times[name].append((time.perf_counter() - t0) / len(probes))
    finally:
        ColorGradientExtractor._pool = split_pool
    ms = {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}
    result = {
        "benchmark": "offline_predict",
        "threads": args.threads,
        "size": 400,
        "predict_ms": {name: round(v, 1) for name, v in ms.items()},
        "current_over_previous": round(ms["current"] / ms["previous"], 3),
        "features_cost": round(ms["current"] / ms["features_off"], 3),
        "targets": {"current_over_previous": "<= 1.10"},
    }
    result["pass"] = result["current_over_previous"] <= 1.10
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
