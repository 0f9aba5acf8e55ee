"""The shared real MVTec 3D-AD scans through the documented routes (docs/ablations.md, "Raw scans").

    python benchmarks/real_scans.py --root ../shared/data/mvtec3d [--set '{"grid_size": 28}']

- ``cable_gland`` (real RGB + 3D scans of good parts, table measured): an offline detector fitted
  on the first ``--shots`` training parts, as the sensor gives them (``raw``), preprocessed first
  (``preprocessed``, ``mafr.datasets.preprocess_sample``) and raw with the support kept in
  (``keep``); reported: false alarms on the validation parts (good, never seen) at the detector's
  own decision, and I-AUROC / recall on copies of them with one implanted defect each (a 1 mm
  bump, a 35 % darker stain: a probe on real surfaces, see ``_implant``), and what the support
  step set aside.
- ``tire`` (real RGB with real defects, no 3D): an offline detector judged on images alone
  (``modalities="rgb"``); I-AUROC, AUPRO@30 %, recall per defect type and false alarms, and what
  ``det.check`` says on its good test parts (the check's honesty: its AUROC against the real one).

``--set`` puts a candidate's config overrides on top of the offline preset: a default changes
only if it does not lose here first, then on the generated sets (``benchmarks/tune.py``,
``benchmarks/defect_types.py``).

Prints one JSON line per row. The data stay where they are (never copied; CC BY-NC-SA 4.0).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import mafr
from mafr.datasets import MVTec3D, preprocess_sample
from mafr.datasets.preprocess import pad_array_to_square
from mafr.evaluation import evaluate_detector
from mafr.io import load_rgb, load_xyz
from mafr.support import set_aside_support
from mafr.types import Sample


def _preprocessed(samples: list[Sample], folder: Path) -> list[Sample]:
    out = []
    for i, s in enumerate(samples):
        rgb = load_rgb(s.rgb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prgb, pxyz = preprocess_sample(rgb, load_xyz(s.xyz, rgb.shape[:2]), name=str(s.xyz))
        np.save(folder / f"{i}.npy", pxyz)
        mask = None if s.mask is None else pad_array_to_square(np.asarray(s.mask))
        out.append(Sample(rgb=prgb, xyz=folder / f"{i}.npy", label=s.label, mask=mask, defect_type=s.defect_type,
                          name=s.name))
    return out


def _implant(sample: Sample, kind: str, seed: int) -> Sample:
    """A copy of a real good scan with one small defect at a random place on the part: ``bump``
    (the surface raised 1 mm towards the camera in a 4 mm radius, smooth) or ``stain`` (the colour
    35 % darker in a 3 mm radius). A probe for the support decision on real surfaces, not the
    implanting library the real-parts issue asks for."""
    rng = np.random.default_rng(seed)
    rgb = load_rgb(sample.rgb).astype(np.float32)
    xyz = load_xyz(sample.xyz, rgb.shape[:2])
    part = mafr.io.measured_pixels(set_aside_support(xyz)[0])
    rows, cols = np.nonzero(part)
    # Away from the part's outline: at least 8 px of part in every direction.
    inner = [(r, c) for r, c in zip(rows, cols) if part[max(r - 8, 0):r + 9, max(c - 8, 0):c + 9].all()]
    r0, c0 = inner[int(rng.integers(len(inner)))]
    pitch = float(np.linalg.norm(xyz[r0, c0 + 1] - xyz[r0, c0])) or 3e-4
    vv, uu = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
    d_mm = np.hypot(vv - r0, uu - c0) * pitch * 1000
    if kind == "bump":
        dz = 0.001 * np.exp(-0.5 * (d_mm / 2.0) ** 2) * (d_mm < 4) * part
        z = xyz[..., 2]
        scale = np.where(z > 0, (z - dz) / np.where(z > 0, z, 1), 1)  # along the ray, towards the camera
        xyz = (xyz * scale[..., None]).astype(np.float32)
        mask = dz > 0.0002
    else:
        mask = (d_mm < 3) & part
        rgb = np.where(mask[..., None], rgb * 0.65, rgb)
    return Sample(rgb=np.clip(rgb, 0, 255).astype(np.uint8), xyz=xyz, label=1, mask=mask, defect_type=kind,
                  name=f"{sample.name}/{kind}")


def _config(overrides: dict, **fields) -> mafr.MAFRConfig:
    """The offline preset with a candidate's ``--set`` overrides (the real sets come first in the
    tuning loop: docs/ablations.md) and the route's own fields."""
    return mafr.MAFRConfig(preset="offline", **{**overrides, **fields})


def cable_gland(root: Path, shots: int, seed: int, overrides: dict) -> list[dict]:
    train = list(MVTec3D(root, "cable_gland", "train"))[:shots]
    goods = list(MVTec3D(root, "cable_gland", "validation"))
    kept = [set_aside_support(load_xyz(s.xyz, None))[1] for s in goods]
    implanted = [_implant(s, kind, 1000 * i + k) for i, s in enumerate(goods) for k, kind in enumerate(("bump", "stain"))]
    goods = [Sample(rgb=s.rgb, xyz=s.xyz, label=0, defect_type="good", name=s.name) for s in goods]
    support = {"tolerance_mm": round(1000 * float(np.median([r.tolerance for r in kept])), 2),
               "kept_share": round(float(np.median([r.kept_share for r in kept])), 3),
               "statuses": sorted({r.status for r in kept})}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        test = goods + implanted
        routes = {"raw": (train, test, "auto"), "keep": (train, test, "keep")}
        (Path(tmp) / "fit").mkdir()
        (Path(tmp) / "test").mkdir()
        routes["preprocessed"] = (_preprocessed(train, Path(tmp) / "fit"), _preprocessed(test, Path(tmp) / "test"), "auto")
        for route, (fit, parts, mode) in routes.items():
            det = mafr.MAFRDetector(_config(overrides, support=mode)).fit(fit, seed=seed, progress=False)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                r = evaluate_detector(det, parts, progress=False)
            rows.append({"set": "cable_gland (implanted)", "route": route, "fit_parts": len(fit),
                         "test_good": len(goods), "image_auroc": round(r["image_auroc"], 4),
                         "aupro@0.3": round(r["aupro@0.3"], 4), "recall": r["recall"],
                         "false_alarm_rate": round(r["false_alarm_rate"], 4), "warnings": len(caught),
                         "per_type": {t: {k: v[k] for k in ("image_auroc", "recall")} for t, v in r["per_type"].items()},
                         **({"support": support, "check": _check(det, goods, seed)} if route == "raw" else {})})
    return rows


def _check(det, goods: list, seed: int) -> dict:
    """What ``det.check`` says on good parts the detector was not fitted on."""
    report = det.check(goods, seed=seed)
    return {"auroc": round(report.auroc, 4), "blind": report.blind,
            "per_type": {f"{t.kind} {t.size:g} {t.unit}": {"auroc": round(t.auroc, 4), "recall": t.recall}
                         for t in report.per_type}}


def tire(root: Path, shots: int, seed: int, overrides: dict) -> dict:
    train = list(MVTec3D(root, "tire", "train"))[:shots]
    test = list(MVTec3D(root, "tire", "test"))
    det = mafr.MAFRDetector(_config(overrides, modalities="rgb")).fit(train, seed=seed, progress=False)
    r = evaluate_detector(det, test, progress=False)
    # The check on the test set's good parts (not fitted on): does it predict the real AUROC?
    check = _check(det, [s for s in test if s.label == 0], seed)
    return {"set": "tire", "route": "rgb only", "fit_parts": len(train), "image_auroc": round(r["image_auroc"], 4),
            "aupro@0.3": round(r["aupro@0.3"], 4), "recall": r["recall"], "false_alarm_rate": r["false_alarm_rate"],
            "per_type": {t: {k: v[k] for k in ("image_auroc", "recall", "aupro@0.3")} for t, v in r["per_type"].items()},
            "check": check, "check_minus_real": round(check["auroc"] - r["image_auroc"], 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data/mvtec3d")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sets", nargs="+", default=["cable_gland", "tire"], choices=("cable_gland", "tire"))
    p.add_argument("--set", default="{}", metavar="JSON",
                   help="config overrides on top of the offline preset: a candidate default, measured here first")
    args = p.parse_args(argv)
    overrides = json.loads(args.set)
    if not isinstance(overrides, dict):
        p.error(f"--set must be a JSON object, got {args.set!r}")
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    if not root.is_dir():
        print(json.dumps({"skipped": f"no real data at {root}"}))
        return 0
    if "cable_gland" in args.sets:
        for row in cable_gland(root, args.shots, args.seed, overrides):
            print(json.dumps(row), flush=True)
    if "tire" in args.sets:
        print(json.dumps(tire(root, args.shots, args.seed, overrides)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
