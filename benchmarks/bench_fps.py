"""Farthest point sampling on ``--device``: the one-kernel path (Triton, CUDA) against the torch
loop it replaces, measured in the same run, and whether both choose the CPU path's centres.

Paper grouping sizes: 1024 centres from the 8192-point FPS pool (``points.fps_max_points``), one
cloud and a batch of 8; then the whole 3D stage of one predict (``Extractors.point_grid``: FPS,
kNN grouping, PointMAE, centres -> grid) with each FPS. Prints one JSON line; exits 1 when the
kernel, where it runs, chooses other centres than the CPU path.

    python benchmarks/bench_fps.py [--device cuda] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from unittest import mock

import torch

from bench_predict import _median_time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mafr
    from mafr.datasets.synthetic import generate_sample
    from mafr.extractors import _fps_kernel, pointops
    from mafr.runtime import resolve_device

    device = resolve_device(args.device)
    kernel = _fps_kernel.available(torch.zeros(1, 8192, 3, device=device))
    no_kernel = mock.patch.object(_fps_kernel, "available", lambda xyz: False)
    out: dict = {"device": str(device), "kernel": kernel}
    if device.type == "cuda":
        out["card"] = torch.cuda.get_device_name(device)

    # Points of a real part (a generated dome), as the 3D path sees them.
    det = mafr.MAFRDetector(mafr.MAFRConfig(extractor_weights="random"), device=device)
    part = generate_sample("dome", seed=0)
    prep = mafr.preparation.prepare((part.rgb, part.xyz), det.config, det.device, det.framing_)
    cloud = prep.xyz.reshape(-1, 3)[prep.valid.flatten()]
    pool = cloud[torch.linspace(0, cloud.shape[0] - 1, 8192, dtype=torch.float64, device=device).round().long()]
    expected = pointops.farthest_point_sample(pool.cpu()[None], 1024)
    same = {}
    for b in (1, 8):
        batch = pool.expand(b, -1, -1).contiguous()
        fast_s = _median_time(lambda: pointops.farthest_point_sample(batch, 1024), args.repeats, device)
        with no_kernel:
            loop_s = _median_time(lambda: pointops.farthest_point_sample(batch, 1024), args.repeats, device)
            loop_idx = pointops.farthest_point_sample(batch, 1024).cpu()
        got = pointops.farthest_point_sample(batch, 1024).cpu()
        same[b] = bool((got == expected).all()) and bool((loop_idx == expected).all())
        out[f"fps_b{b}_s"] = round(fast_s, 5)
        out[f"fps_b{b}_torch_loop_s"] = round(loop_s, 5)
        out[f"fps_b{b}_speedup"] = round(loop_s / fast_s, 2)
    out["same_centres_as_cpu"] = same

    det.extractors.point_grid([prep])[0]  # builds the extractor
    stage_s = _median_time(lambda: det.extractors.point_grid([prep])[0], args.repeats, device)
    with no_kernel:
        stage_loop_s = _median_time(lambda: det.extractors.point_grid([prep])[0], args.repeats, device)
    out["points_to_grid_s"] = round(stage_s, 4)
    out["points_to_grid_torch_loop_s"] = round(stage_loop_s, 4)
    out["points_to_grid_speedup"] = round(stage_loop_s / stage_s, 2)
    out["kernel_failure"] = _fps_kernel._broken  # None: the kernel ran every time it was asked
    out["pass"] = all(same.values()) and (not kernel or _fps_kernel._broken is None)
    print(json.dumps(out), flush=True)
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
