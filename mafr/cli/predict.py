"""``mafr predict``: score parts with a saved detector, one JSON line each."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ._shared import (
    _compute_options, _jsonable, _Out, _sub, detector_dir, EXIT_ANOMALOUS, EXIT_NO_THRESHOLD,
    EXIT_OK, PAIRING, parse_inputs,
)


def _cmd_predict(args: argparse.Namespace, out: _Out) -> int:
    from huggingface_hub.utils import tqdm

    from ..detector import MAFRDetector

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    det = MAFRDetector.from_pretrained(str(detector_dir(args.detector)), trust_config=args.trust_config, device=args.device, precision=args.precision)
    parts = parse_inputs(args.inputs, det.config.modalities)
    overlay = Path(args.overlay) if args.overlay else None
    if overlay is not None:
        overlay.mkdir(parents=True, exist_ok=True)
    anomalous = False
    chunks = range(0, len(parts), args.batch_size)
    # One chunk at a time, so lines stream out while a long folder is scored.
    for start in tqdm(chunks, desc="mafr: predicting", disable=out.quiet or len(chunks) < 2, leave=False):
        chunk = parts[start : start + args.batch_size]
        results = det.predict_batch([(p.rgb, p.xyz) for p in chunk], batch_size=args.batch_size)
        for part, res in zip(chunk, results):
            line = {
                "name": part.name,
                "rgb": part.rgb,
                "xyz": part.xyz,
                "score": res.score,
                "threshold": res.threshold,
                "is_anomalous": res.is_anomalous,
                "flags": list(res.flags),
            }
            if res.flags:
                out.log(f"mafr: {part.name}: judged, but flagged {', '.join(res.flags)} (see docs/api.md, 'Errors')")
            if overlay is not None:
                panel = overlay / f"{part.name}_panel.png"
                res.to_panel().save(panel)
                line["panel"] = str(panel)
            anomalous |= bool(res.is_anomalous)
            print(json.dumps(_jsonable(line)), flush=True)
    if not math.isfinite(det.threshold_):
        print(f"mafr: error: {args.detector} has no decision threshold, so no part was judged (scores only; "
              "is_anomalous is null). Set one from good parts with `det.calibrate(good_parts)` in Python "
              "(then save_pretrained), or convert again with `mafr convert ... --threshold T`",
              file=sys.stderr)
        return EXIT_NO_THRESHOLD
    return EXIT_ANOMALOUS if anomalous else EXIT_OK


def add_predict(subs, common) -> None:
    """``mafr predict``'s arguments."""
    p = _sub(subs, "predict", "score parts with a saved detector",
             "Score parts with a saved detector. Writes one JSON line per part to stdout:\n"
             '  {"name", "rgb", "xyz", "score", "threshold", "is_anomalous", "flags"[, "panel"]}\n'
             "(threshold and is_anomalous are null when the detector has none, e.g. a converted reference checkpoint).\n\n"
             "INPUTS are `RGB XYZ` file pairs and/or folders.\n" + PAIRING + "\n\n"
             "Exit status: 0 if every part is good, 1 if any part is anomalous, 2 on an error, 3 if the detector "
             "has no threshold (scores only, nothing judged).",
             "  mafr predict detector part.png part.tiff --overlay panels\n"
             "  mafr predict hf-user/mafr-puck new_parts/ --batch-size 4 > scores.jsonl", [common])
    p.add_argument("detector", metavar="DETECTOR_DIR", help="saved detector directory or Hugging Face repo id")
    p.add_argument("inputs", metavar="INPUTS", nargs="+", help="RGB XYZ pairs and/or folders of parts")
    p.add_argument("--overlay", metavar="DIR",
                   help="write a panel per part to DIR/<name>_panel.png (RGB, depth, 2D, 3D and fused maps, decision)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="parts per feature-extraction batch (default: 8)")
    p.add_argument("--trust-config", action="store_true",
                   help="accept a detector whose config names extractors, timm keywords or weight files outside "
                        "mafr's allow-list (only for detectors from authors you trust)")
    _compute_options(p)
    p.set_defaults(func=_cmd_predict)
