"""Offline-preset predict time against the previous releases', measured in the same run.

The defect-type issue allows its changes to slow ``predict`` by at most 10 %. One change to the
offline preset costs predict time: the surface deviation taken as its local rises and sinks
(``points.deviation_peaks``: a 3 px smoothing and a 9 px maximum filter per channel); six
distance bands for calibrated fusion (``scoring.edge_cap=5``) cost two more 3 x 3 poolings of the
28 x 28 validity grid. Fusion levels from every fit part at a higher quantile
(``scoring.levels_parts="all"``, ``level_quantile=0.97``) change what calibration computes, not
what predict does. Framing the part (``framing="part"``) adds a bounding box per part and
pastes the maps back into the input frame; its 1.5x wider widths (colour-rarity circles,
deviation scales, two more distance bands) cost a little more filtering. Colour rarity on the part
only (``rgb.rarity_on_part``) masks the colours once before the circle comparisons; the 2D
channels' maximum (``scoring.channel_reduce_2d="max"``) replaces their RMS. The 56 x 56 grid
(``grid_size=56``; 28 before) gives the autoencoder four times the positions and the calibration
levels four times the cells; extraction and the maps at the network's input size are unchanged.
Levels per restored-value bin (``scoring.level_bins``) add one comparison of each channel's
restored value with its bin edges per cell. Colour rarity that faces the same way
(``rgb.ring_normal_weight``) smooths the framed cloud once per part for its normals and compares
six coordinates instead of three at each of the 64 circle points. The stride-1 box smoothing and the running maximum are computed as shifted sums and maxima
(``benchmarks/bench_filters.py``) in every configuration but ``released``.
Three detectors are fitted on the same generated parts (400 px, as the benchmark's) and timed
alternately, one predict per part:

- ``released``: the offline preset before the rises and sinks (``deviation_peaks=False``,
  ``edge_cap=3``, levels from held-out parts at 0.9), run with the torch pooling filters it shipped
  with (``avg_pool2d`` / ``max_pool2d``, swapped in for its calls only): that release as users had it;
- ``previous``: the previous release's offline preset (levels per restored-value bin; colour
  rarity on colours alone) on this release's code (what this release's normals cost);
- ``current``: this release's offline preset.

Prints one JSON line; exits 1 when ``current / released`` exceeds 1.10. ``current / previous``
is reported too.

    python benchmarks/bench_offline_predict.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch


@contextlib.contextmanager
def _pooling_filters(enabled: bool):
    """Swap the released pooling filters in for this release's shifted sums and maxima."""
    if not enabled:
        yield
        return
    import torch.nn.functional as F

    import mafr.extractors.surface as surface
    import mafr.scoring as scoring

    def pooled_max(x, window, dim):
        half = window // 2
        kernel, pad = ((1, window), (0, half)) if dim == -1 else ((window, 1), (half, 0))
        return F.max_pool2d(x, kernel, stride=1, padding=pad)

    def pooled_box(maps, box5_passes=5, box7_passes=3, *, count_padding=False):
        return scoring._box_smooth_pooled(maps, box5_passes, box7_passes, count_padding)

    saved = surface._running_max, scoring.box_smooth
    surface._running_max, scoring.box_smooth = pooled_max, pooled_box
    try:
        yield
    finally:
        surface._running_max, scoring.box_smooth = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each times every detector on every part")
    parser.add_argument("--parts", type=int, default=4, help="parts predicted per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mafr
    from mafr.datasets.synthetic import generate_sample

    fit_parts = [generate_sample("puck", seed=s) for s in range(6)]
    probes = [generate_sample("puck", "stain", seed=100 + i) for i in range(args.parts)]
    previous_loss = {"loss_form": "mafr", "smoothness_first_two_channels": False}
    # The whole image and the widths set for it (this release frames the part: mafr.framing).
    whole = {"framing": "image", "grid_size": 28, "train": previous_loss,
             "rgb": {"ring_radii": (14, 22), "rarity_on_part": False, "ring_normal_weight": 0.0},
             "points": {"deviation_scales": (6.0, 12.0)}}
    old = {**whole, "points": {**whole["points"], "deviation_peaks": False},
           "scoring": {"edge_cap": 3, "levels_parts": "held_out", "level_quantile": 0.9, "channel_reduce_2d": "rms",
                       "level_bins": ()}}
    previous = {"rgb": {"ring_normal_weight": 0.0}}
    variants = {"released": old, "previous": previous, "current": {}}
    detectors = {}
    for name, overrides in variants.items():
        overrides = {**overrides, "train": {**overrides.get("train", {}), "steps": 20}}
        cfg = mafr.MAFRConfig(preset="offline", **overrides)
        detectors[name] = mafr.MAFRDetector(cfg, device="cpu").fit(fit_parts, progress=False)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, det in detectors.items():
            with _pooling_filters(name == "released"):
                t0 = time.perf_counter()
                for p in probes:
                    det.predict(p.rgb, p.xyz)
                times[name].append((time.perf_counter() - t0) / len(probes))
    ms = {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}
    result = {
        "benchmark": "offline_predict",
        "threads": args.threads,
        "size": 400,
        "predict_ms": {name: round(v, 1) for name, v in ms.items()},
        "current_over_released": round(ms["current"] / ms["released"], 3),
        "current_over_previous": round(ms["current"] / ms["previous"], 3),
        "targets": {"current_over_released": "<= 1.10"},
    }
    result["pass"] = result["current_over_released"] <= 1.10
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
