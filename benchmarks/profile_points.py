"""Where the 3D path of one predict spends its time (the slowest stage on a GPU): torch profiler
table of ``Extractors.point_grid`` for one generated part, paper architecture, random weights.

    python benchmarks/profile_points.py [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import mafr
from mafr.preparation import prepare
from mafr.datasets.synthetic import generate_sample


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    det = mafr.MAFRDetector(mafr.MAFRConfig(extractor_weights="random"), device=args.device)
    part = generate_sample("dome", seed=0)
    prep = prepare((part.rgb, part.xyz), det.config, det.device, det.framing_)
    det.extractors.point_grid([prep])[0]  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if det.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        det.extractors.point_grid([prep])[0]
        if det.device.type == "cuda":
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
