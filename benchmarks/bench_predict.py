"""Predict speed against a bare ViT-B/8 forward pass, measured in the same run.

Full-size default architecture (DINO ViT-B/8 at 224 x 224, PointMAE with 1024 groups of 128
points), random weights (timing does not depend on them). Prints one JSON line; exits 1 when a
target of issue 4 is missed:

- predict, one sample, arrays -> AnomalyResult: <= 3.0 x the bare ``vit_base_patch8_224`` forward
- >= 4 x faster than the reference-faithful configuration (``preset="reference"``)
- ``predict_batch`` at batch 8: >= 1.2 x the throughput of single predicts

    python benchmarks/bench_predict.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true", help="do not time the reference configuration")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import timm

    import mafr
    from mafr.datasets.synthetic import generate_sample

    parts = [generate_sample("dome", seed=s) for s in range(2)]
    probes = [generate_sample("dome", "crack", seed=100 + i) for i in range(8)]
    probe = probes[0]

    vit = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0).eval()
    image = torch.randn(1, 3, 224, 224)

    def bare_vit():
        with torch.inference_mode():
            vit(image)

    fast = mafr.MAFRDetector(mafr.MAFRConfig(extractor_weights="random", train={"steps": 2})).fit(parts, progress=False)

    def predict_fast():
        fast.predict(probe.rgb, probe.xyz)

    # Interleave the baseline and the subject so a load change on the machine hits both.
    vit_s, predict_s = [], []
    for _ in range(args.repeats):
        vit_s.append(_median_time(bare_vit, 1))
        predict_s.append(_median_time(predict_fast, 1))
    vit_t, pred_t = statistics.median(vit_s), statistics.median(predict_s)

    single = _median_time(lambda: [fast.predict(p.rgb, p.xyz) for p in probes], 1)
    batched = _median_time(lambda: fast.predict_batch(probes, batch_size=8), 1)

    result = {
        "benchmark": "predict",
        "threads": args.threads,
        "vit_forward_s": round(vit_t, 4),
        "predict_s": round(pred_t, 4),
        "predict_over_vit": round(pred_t / vit_t, 3),
        "batch8_throughput_ratio": round(single / batched, 3),
    }
    ok = result["predict_over_vit"] <= 3.0 and result["batch8_throughput_ratio"] >= 1.2
    if not args.skip_reference:
        reference = mafr.MAFRDetector(
            mafr.MAFRConfig(preset="reference", extractor_weights="random", train={"epochs": 1})
        ).fit(parts, progress=False)
        ref_t = _median_time(lambda: reference.predict(probe.rgb, probe.xyz), max(1, args.repeats // 2))
        result["reference_predict_s"] = round(ref_t, 4)
        result["reference_over_vit"] = round(ref_t / vit_t, 3)
        result["speedup_vs_reference"] = round(ref_t / pred_t, 3)
        ok = ok and result["speedup_vs_reference"] >= 4.0
    result["targets"] = {"predict_over_vit": "<= 3.0", "speedup_vs_reference": ">= 4.0", "batch8_throughput_ratio": ">= 1.2"}
    result["pass"] = ok
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
