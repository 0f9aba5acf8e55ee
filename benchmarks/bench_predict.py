"""Predict speed against a bare ViT-B/8 forward pass, measured in the same run.

Full-size default architecture (DINO ViT-B/8 at 224 x 224, PointMAE with 1024 groups of 128
points), random weights (timing does not depend on them), on ``--device`` (the bare ViT runs on
the same device). Prints one JSON line; exits 1 when a target is missed:

- predict, one sample, arrays -> AnomalyResult: <= 3.0 x the bare ``vit_base_patch8_224`` forward
- >= 4 x faster than the reference-faithful configuration (``preset="reference"``)

Also reported, not judged on CPU: ``predict_batch`` at batch 8 against single predicts (on 2 CPU
cores batching cannot pay, docs/performance.md; on a GPU the target is >= 3 x) and parts per second.

    python benchmarks/bench_predict.py [--repeats 5] [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    fn()  # warm-up: allocator, oneDNN/cuDNN kernels
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _breakdown(det, probe, device: torch.device, repeats: int) -> dict:
    """Median seconds of each stage of one predict: loading and resizing the inputs, the RGB
    extractor, the 3D path (grouping, PointMAE, centres -> grid), and the rest (autoencoder,
    scoring, maps back at input size, fail-closed checks, the defect mask)."""
    from mafr.preparation import prepare

    prep = prepare((probe.rgb, probe.xyz), det.config, det.device, det.framing_)
    feats = det.extractors.extract([prep])

    def rgb():
        with torch.inference_mode(), det._autocast():
            det.rgb_extractor(prep.image.unsqueeze(0))

    return {
        "prepare": round(_median_time(lambda: prepare((probe.rgb, probe.xyz), det.config, det.device, det.framing_), repeats, device), 4),
        "rgb_extractor": round(_median_time(rgb, repeats, device), 4),
        "points_to_grid": round(_median_time(lambda: det.extractors.point_grid([prep])[0], repeats, device), 4),
        "autoencoder_scoring_maps": round(_median_time(lambda: det._results([prep], feats), repeats, device), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true", help="do not time the reference configuration")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mafr.runtime import resolve_device

    device = resolve_device(args.device)

    import timm

    import mafr
    from mafr.datasets.synthetic import generate_sample

    parts = [generate_sample("dome", seed=s) for s in range(2)]
    probes = [generate_sample("dome", "crack", seed=100 + i) for i in range(8)]
    probe = probes[0]

    vit = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0).eval().to(device)
    image = torch.randn(1, 3, 224, 224, device=device)

    def bare_vit():
        with torch.inference_mode():
            vit(image)

    fast = mafr.MAFRDetector(
        mafr.MAFRConfig(extractor_weights="random", train={"steps": 2}), device=device, precision=args.precision
    ).fit(parts, progress=False)

    def predict_fast():
        fast.predict(probe.rgb, probe.xyz)

    # Interleave the baseline and the subject so a load change on the machine hits both.
    vit_s, predict_s = [], []
    for _ in range(args.repeats):
        vit_s.append(_median_time(bare_vit, 1, device))
        predict_s.append(_median_time(predict_fast, 1, device))
    vit_t, pred_t = statistics.median(vit_s), statistics.median(predict_s)

    stages = _breakdown(fast, probe, device, args.repeats)
    single = _median_time(lambda: [fast.predict(p.rgb, p.xyz) for p in probes], 1, device)
    batched = _median_time(lambda: fast.predict_batch(probes, batch_size=8), 1, device)

    result = {
        "benchmark": "predict",
        "threads": args.threads,
        "device": str(device),
        "precision": args.precision,
        "vit_forward_s": round(vit_t, 4),
        "predict_s": round(pred_t, 4),
        "predict_over_vit": round(pred_t / vit_t, 3),
        "batch8_throughput_ratio": round(single / batched, 3),
        "parts_per_s_single": round(len(probes) / single, 3),
        "parts_per_s_batch8": round(len(probes) / batched, 3),
        "stages_s": stages,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    ok = result["predict_over_vit"] <= 3.0
    # On CPU cores that one part already keeps busy, batching cannot pay (measured): report only.
    if device.type == "cuda":
        ok = ok and result["batch8_throughput_ratio"] >= 3.0
    if not args.skip_reference:
        reference = mafr.MAFRDetector(
            mafr.MAFRConfig(preset="reference", extractor_weights="random", train={"epochs": 1}), device=device
        ).fit(parts, progress=False)
        ref_t = _median_time(lambda: reference.predict(probe.rgb, probe.xyz), max(1, args.repeats // 2), device)
        result["reference_predict_s"] = round(ref_t, 4)
        result["reference_over_vit"] = round(ref_t / vit_t, 3)
        result["speedup_vs_reference"] = round(ref_t / pred_t, 3)
        ok = ok and result["speedup_vs_reference"] >= 4.0
    result["targets"] = {
        "predict_over_vit": "<= 3.0",
        "speedup_vs_reference": ">= 4.0",
        "batch8_throughput_ratio": ">= 3.0 on a GPU; reported only on CPU",
    }
    result["pass"] = ok
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
