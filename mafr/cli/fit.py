"""``mafr fit`` and ``mafr update``: a detector from good parts, and new good parts into it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import (
    _compute_options, _config_options, _fit_parts, _load_config, _Out, _sub, detector_dir, EXIT_OK,
    PAIRING,
)


def _cmd_fit(args: argparse.Namespace, out: _Out) -> int:
    from ..detector import MAFRDetector

    config = _load_config(args)
    parts = _fit_parts(Path(args.data), config.modalities)
    if args.shots is not None:
        if args.shots < 1:
            raise ValueError(f"--shots must be >= 1, got {args.shots}")
        parts = parts[: args.shots]
    out.log(f"fitting a {config.preset} detector on {len(parts)} good parts from {args.data}")
    det = MAFRDetector(config, device=args.device, precision=args.precision).fit(parts, seed=args.seed, progress=not out.quiet)
    det.save_pretrained(args.out_dir)
    info = det.fit_info_
    seconds = info["fit_seconds"]
    summary = {
        "out_dir": str(args.out_dir),
        "preset": config.preset,
        "n_parts": info["n_samples"],
        "n_train": info["n_train"],
        "n_calibration": info["n_calibration"],
        "calibration_on_training_parts": info["calibration_on_training_parts"],
        "threshold": det.threshold_,
        "seconds": round(seconds, 3),
    }
    cal = f"{info['n_calibration']} held out" if info["n_calibration"] else "training parts (fewer than 3 given)"
    out.result(
        f"fitted on {info['n_samples']} good parts ({info['n_train']} training, calibration: {cal}) in "
        f"{seconds:.1f} s; threshold {det.threshold_:.4f}; saved to {args.out_dir}",
        summary,
    )
    return EXIT_OK


def _cmd_update(args: argparse.Namespace, out: _Out) -> int:
    from ..detector import MAFRDetector

    source = detector_dir(args.detector)
    out_dir = Path(args.out_dir) if args.out_dir else source
    det = MAFRDetector.from_pretrained(str(source), trust_config=args.trust_config, device=args.device, precision=args.precision)
    parts = _fit_parts(Path(args.data), det.config.modalities)
    before = det.threshold_
    out.log(f"updating {source} with {len(parts)} new good parts from {args.data}")
    det.update(parts, seed=args.seed, progress=not out.quiet)
    det.save_pretrained(out_dir)
    event = det.fit_info_["history"][-1]
    summary = {
        "out_dir": str(out_dir), "n_parts": event["parts"], "n_train": event["n_train"],
        "n_calibration": event["n_calibration"], "threshold_before": before, "threshold": det.threshold_,
        "seconds": event["seconds"], "n_updates": det.fit_info_["n_updates"],
        "n_parts_total": det.fit_info_["n_parts_total"], "replay_parts": det.fit_info_["replay_parts"],
    }
    out.result(
        f"updated with {event['parts']} good parts ({event['n_train']} trained on, {event['n_calibration']} held out) in "
        f"{event['seconds']:.1f} s; threshold {before:.4f} -> {det.threshold_:.4f}; "
        f"{summary['n_parts_total']} parts in all; saved to {out_dir}",
        summary,
    )
    return EXIT_OK


def add_fit(subs, common) -> None:
    """``mafr fit``'s arguments."""
    p = _sub(subs, "fit", "fit a detector on good parts and save it",
             "Fit a detector on good parts and save it (config.json, model.safetensors, README.md).\n\n"
             "DATA is an MVTec 3D-AD style category folder (its train/good split is used) or a folder of\n"
             "good parts.\n" + PAIRING,
             "  mafr fit data/puck detector --preset offline\n"
             "  mafr fit good_parts/ detector --config my_config.json --shots 10 --json", [common])
    p.add_argument("data", metavar="DATA", help="category folder (train/good/{rgb,xyz}) or folder of good parts")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the detector is saved")
    _config_options(p, "paper", "seed of the fit (held-out split, initialisation, batches)")
    p.add_argument("--shots", type=int, metavar="N", help="use only the first N parts (sorted by name)")
    _compute_options(p)
    p.set_defaults(func=_cmd_fit)


def add_update(subs, common) -> None:
    """``mafr update``'s arguments."""
    p = _sub(subs, "update", "add new good parts to a saved detector (no full refit)",
             "Update a saved detector with new good parts (e.g. after a new batch of material or a re-lit\n"
             "station) without a full refit and without forgetting: fine-tunes briefly on the new parts\n"
             "mixed with parts replayed from the detector's store, pools the normalisation statistics and\n"
             "re-calibrates the threshold (docs/concepts.md, \"Updating a fitted detector\"). Saves over\n"
             "DETECTOR unless --out-dir is given; `mafr info` shows the fit history.\n\n"
             "DATA is a category folder (train/good split) or a folder of good parts.\n" + PAIRING,
             "  mafr update detector new_batch/\n  mafr update detector new_batch/ --out-dir detector_v2 --json", [common])
    p.add_argument("detector", metavar="DETECTOR", help="saved detector directory or Hugging Face repo id")
    p.add_argument("data", metavar="DATA_DIR", help="folder of new good parts (or category folder)")
    p.add_argument("--out-dir", metavar="DIR", help="save the updated detector here (default: over DETECTOR)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the update (held-out split, batches)")
    p.add_argument("--trust-config", action="store_true",
                   help="accept a detector whose config is outside mafr's allow-list (see mafr predict --help)")
    _compute_options(p)
    p.set_defaults(func=_cmd_update)
