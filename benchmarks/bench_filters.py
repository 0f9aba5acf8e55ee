"""The stride-1 filters of the offline predict path against the torch pooling they replace, in
the same run: ``mafr.scoring.box_smooth`` (5 passes of a 5 x 5 and 3 of a 7 x 7 box mean, as
shifted sums) against repeated ``F.avg_pool2d``, and the 9 x 9 running maximum of the rises
and sinks (``mafr.extractors.surface._running_max``) against ``F.max_pool2d`` 1 x 9 then 9 x 1.
Both pairs give the same values (the maximum exactly, the mean to float rounding; asserted
here). Shapes are a predict's: three 224 x 224 maps to smooth, four 224 x 224 channels to
maximise.

Prints one JSON line with milliseconds per call and the speed-ups.

    python benchmarks/bench_filters.py [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def _pooled_max(x: torch.Tensor, w: int = 9) -> torch.Tensor:
    h = w // 2
    return F.max_pool2d(F.max_pool2d(x, (1, w), stride=1, padding=(0, h)), (w, 1), stride=1, padding=(h, 0))


def _ms(fn, arg, repeats: int) -> float:
    for _ in range(3):
        fn(arg)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mafr.extractors.offline import _running_max
    from mafr.scoring import _box_smooth_pooled, box_smooth

    def pooled_box(maps):  # the avg_pool2d form, which GPUs keep
        return _box_smooth_pooled(maps, 5, 3, False)

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 224, 224, generator=g)
    signed = torch.rand(1, 4, 224, 224, generator=g)
    torch.testing.assert_close(box_smooth(maps), pooled_box(maps), rtol=1e-5, atol=1e-7)
    assert torch.equal(_running_max(_running_max(signed, 9, -1), 9, -2), _pooled_max(signed))

    ms = {}
    # Each pair back to back after a warm-up; run alone (two heavy jobs on 2 cores slow both).
    for name, fn, arg in (("box_smooth", box_smooth, maps), ("avg_pool2d", pooled_box, maps),
                          ("running_max", lambda x: _running_max(_running_max(x, 9, -1), 9, -2), signed),
                          ("max_pool2d", _pooled_max, signed)):
        ms[name] = round(_ms(fn, arg, args.repeats), 3)
    print(json.dumps({
        "benchmark": "filters", "threads": args.threads, "ms": ms,
        "box_speedup": round(ms["avg_pool2d"] / ms["box_smooth"], 1),
        "max_speedup": round(ms["max_pool2d"] / ms["running_max"], 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
