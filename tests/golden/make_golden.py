"""Record what the detector computes on fixed generated parts, for every preset, so that a change
meant to move code without changing behaviour (issue 29) can be shown to: scores, thresholds,
calibration, map statistics, the fitted tensors' digests, and a detector saved by this code.

    python tests/golden/make_golden.py      # rewrites tests/golden/golden.json and offline_saved/

Only rerun it for a change that is *meant* to move a number, and say so in the commit.
tests/test_golden.py compares against the files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import mafr  # noqa: E402
from mafr.datasets import generate_sample  # noqa: E402

SIZE = 64
#: Tiny versions of the pretrained presets (random weights, short fits), as tests/conftest.py's.
_TINY = dict(
    extractor_weights="random", grid_size=8,
    rgb={"image_size": 64, "timm_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
    points={"num_groups": 32, "group_size": 16, "embed_dim": 48, "depth": 3, "num_heads": 4,
            "out_indices": (0, 1, 2), "fps_max_points": None},
)
CONFIGS = {
    "offline": dict(preset="offline", train={"steps": 20}),
    "offline_raw": dict(preset="offline", train={"steps": 20}),
    "offline_rgb": dict(preset="offline", modalities="rgb", train={"steps": 20}),
    "paper": dict(preset="paper", train={"steps": 10, "batch_size": 2, "early_stop_patience": None}, **_TINY),
    "reference": dict(preset="reference", train={"epochs": 1, "batch_size": 1}, **_TINY),
}


def parts(name: str, seeds, defect=None):
    background = "plane" if name == "offline_raw" else "none"
    return [generate_sample("puck", defect, seed=s, size=SIZE, background=background) for s in seeds]


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def record(name: str) -> tuple[dict, "mafr.MAFRDetector"]:
    torch.set_num_threads(1)  # reductions in one order, whatever the machine
    det = mafr.MAFRDetector(mafr.MAFRConfig(**CONFIGS[name]), device="cpu").fit(parts(name, range(4)), seed=0,
                                                                               progress=False)
    tests = parts(name, [50]) + parts(name, [51], "hole") + parts(name, [52], "stain")
    results = []
    for s in tests:
        r = det.predict(s.rgb, None if name == "offline_rgb" else s.xyz)
        results.append({"score": r.score, "is_anomalous": r.is_anomalous,
                        "anomaly_map_sum": float(r.anomaly_map.astype(np.float64).sum()),
                        "map_2d_sum": float(r.map_2d.astype(np.float64).sum()),
                        "map_3d_sum": float(r.map_3d.astype(np.float64).sum()),
                        "defect_pixels": None if r.defect_mask is None else int(r.defect_mask.sum())})
    return {"threshold": det.threshold_, "results": results,
            "tensors": {k: digest(v) for k, v in sorted(det.state_tensors().items())}}, det


def main() -> int:
    golden = {}
    for name in CONFIGS:
        golden[name], det = record(name)
        if name == "offline":
            out = HERE / "offline_saved"
            shutil.rmtree(out, ignore_errors=True)
            det.save_pretrained(out)
    (HERE / "golden.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'golden.json'} ({', '.join(golden)}) and {HERE / 'offline_saved'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
