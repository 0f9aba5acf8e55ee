"""Decoder attention ablation: CBAM (the paper) against squeeze-and-excitation and none.

1. Accuracy and training time, offline preset on generated parts: per category, 10 good parts to
   fit (seed 0), test 4 good + 2 of each defect type; features are extracted once and every
   option trains on the same features with the same seed. I-AUROC / AUPRO@30% per defect type
   (that type's parts against the good ones).
2. Cost at the paper architecture's widths (768 RGB + 1152 3D channels, 28 x 28 grid, batch 2):
   milliseconds per training step and the peak resident memory a fresh process adds while
   training, random inputs (the cost does not depend on what the features mean).

Prints one JSON line, and with ``--markdown FILE`` writes the docs/ablations.md section.

    python benchmarks/ablation_attention.py [--categories puck,block] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr import metrics
from mafr.datasets import DEFECTS, generate_sample

OPTIONS = ("cbam", "se", "none")

_COST_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from mafr.losses import restoration_loss
from mafr.model import FusionAutoencoder
torch.manual_seed(0)
ae = FusionAutoencoder(768, 1152, attention=sys.argv[1])
rgb, xyz = torch.randn(2, 28, 28, 768), torch.randn(2, 28, 28, 1152)
opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
def step():
    out_rgb, out_xyz = ae(rgb, xyz)
    loss = restoration_loss(rgb, out_rgb) + restoration_loss(xyz, out_xyz)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
step()  # allocations of the first step (optimiser state) count in the peak, not in the time
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
for _ in range(int(sys.argv[3])):
    step()
ms = (time.perf_counter() - t0) / int(sys.argv[3]) * 1e3
print(json.dumps({"ms_per_step": ms, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "parameters": sum(p.numel() for p in ae.parameters())}))
"""


def accuracy(categories: list[str], log) -> dict:
    rows: dict = {a: {"train_seconds": [], "steps": [], "per_defect": {d: [] for d in (*DEFECTS, "all")}} for a in OPTIONS}
    for category in categories:
        fit = [generate_sample(category, seed=s) for s in range(10)]
        test = [generate_sample(category, seed=s) for s in range(100, 104)]
        test += [generate_sample(category, d, seed=200 + 10 * i + j) for i, d in enumerate(DEFECTS) for j in range(2)]
        base = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline"))
        fit_feats, test_feats = base.extract_features(fit), base.extract_features(test)
        for attention in OPTIONS:
            det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline", model={"attention": attention}))
            det._fit_extracted(fit, fit_feats, seed=0)
            fused, _, _, scores = det._score_features(test_feats)
            rows[attention]["train_seconds"].append(det.fit_info_["train_seconds"])
            rows[attention]["steps"].append(det.fit_info_["steps"])
            for defect in (*DEFECTS, "all"):
                idx = [i for i, s in enumerate(test) if s.defect_type in ("good", defect) or defect == "all"]
                rows[attention]["per_defect"][defect].append((
                    metrics.image_auroc([test[i].label for i in idx], [float(scores[i]) for i in idx]),
                    metrics.aupro([np.asarray(test[i].mask, bool) for i in idx], [fused[i].numpy() for i in idx], limit=0.3),
                ))
        log(f"{category}: done")
    out = {}
    for attention, r in rows.items():
        out[attention] = {
            "train_seconds": round(float(np.mean(r["train_seconds"])), 2),
            "steps": round(float(np.mean(r["steps"])), 1),
            "per_defect": {d: [round(float(np.mean([v[0] for v in vals])), 3), round(float(np.mean([v[1] for v in vals])), 3)]
                           for d, vals in r["per_defect"].items()},
        }
    return out


def cost(threads: int, steps: int) -> dict:
    out = {}
    for attention in OPTIONS:
        proc = subprocess.run([sys.executable, "-c", _COST_CHILD, attention, str(threads), str(steps)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[attention] = {"ms_per_step": round(r["ms_per_step"], 1), "peak_rss_mb": round(r["peak_rss_mb"]),
                          "parameters": r["parameters"]}
    return out


def markdown(res: dict, command: str) -> str:
    acc, cst = res["accuracy"], res["cost"]
    lines = [
        "## Decoder attention: CBAM, squeeze-and-excitation, none",
        "",
        f"Regenerate with `{command}` (`config.model.attention`). Offline preset, generated "
        f"categories {', '.join(res['categories'])} (means): 10 good parts to fit (seed 0), test 4 good "
        "+ 2 of each defect type per category; every option trains on the same extracted features. "
        "I-AUROC / AUPRO@30% of each defect type against the good parts. Training time is the "
        "autoencoder's (early stopping as configured). Cost at the paper architecture's widths (768 + "
        "1152 channels, 28 x 28 grid, batch 2, random inputs, "
        f"{res['threads']} CPU threads): time per training step and peak resident memory of a fresh "
        "process that builds and trains the autoencoder.",
        "",
        "| attention | " + " | ".join(DEFECTS) + " | all | train s (offline) | steps | ms/step (paper widths) | peak RSS MB | parameters |",
        "|---|" + "---:|" * (len(DEFECTS) + 6),
    ]
    for a in OPTIONS:
        cells = [f"{acc[a]['per_defect'][d][0]:.3f} / {acc[a]['per_defect'][d][1]:.3f}" for d in (*DEFECTS, "all")]
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {acc[a]['train_seconds']:.1f} | {acc[a]['steps']:.0f} | "
                     f"{cst[a]['ms_per_step']:.0f} | {cst[a]['peak_rss_mb']} | {cst[a]['parameters']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="puck,block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost-steps", type=int, default=10)
    parser.add_argument("--markdown", type=Path, help="write the docs/ablations.md section here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cats = args.categories.split(",")
    t0 = time.perf_counter()
    res = {"bench": "attention", "categories": cats, "threads": args.threads,
           "accuracy": accuracy(cats, lambda m: print(m, file=sys.stderr)), "cost": cost(args.threads, args.cost_steps)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res), flush=True)
    if args.markdown:
        args.markdown.write_text(markdown(res, "python benchmarks/ablation_attention.py --markdown section.md"))


if __name__ == "__main__":
    main()
