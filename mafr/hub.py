"""The model card written next to a saved detector (``README.md`` in a Hub repo)."""

from __future__ import annotations

import json
import math
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

#: How the weight-free 3D extractors are described in cards and ``mafr info``.
WEIGHT_FREE_3D = {
    "deviation": "weight-free multi-scale surface deviation",
    "fpfh": "weight-free FPFH",
}

THRESHOLD_RULE = (
    "A share of the fit set (`train.calibration_fraction`, at least one part when 3 or more are "
    "given) is held out of training. The threshold is `mean + k * std` of the held-out parts' "
    "scores (`k = scoring.threshold_sigma`, std floored at 10% of the mean so one or two parts "
    "still give a margin), and never below their maximum. With fewer than 3 parts nothing can be "
    "held out and the training parts' own scores are used (optimistic)."
)


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def detectability_text(fit: dict[str, Any]) -> str:
    """The fit's detectability check (mafr.detectability) as Markdown, or why there is none."""
    d = fit.get("detectability")
    if not d:
        return ("Not measured at fit (fewer than 2 parts held out). Run `det.check(good_parts)` on good parts "
                "it was not fitted on, or `mafr check DETECTOR GOOD_DIR`.")
    rows = ["| defect | size | AUROC | recall |", "|---|---|---|---|"]
    for t in d["per_type"]:
        recall = "-" if t["recall"] is None else f"{t['recall']:.2f}"
        rows.append(f"| {t['kind']} | {t['size']:g} {t['unit']} | {t['auroc']:.3f} | {recall} |")
    verdict = ("**Blind**: it cannot tell defects of these sizes from good parts; its results carry the flag "
               "`blind_detector`." if d["blind"] else "Not blind (overall AUROC >= 0.70).")
    return (f"Defects implanted into {d['n_good']} good parts it did not fit on (`mafr.datasets.implant_defect`), "
            f"scored against those parts: overall AUROC **{d['auroc']:.3f}**. {verdict}\n\n" + "\n".join(rows))


def model_card(detector) -> ModelCard:
    cfg = detector.config
    fit = detector.fit_info_ or {}
    rgb_src = "weight-free colour/gradient statistics" if cfg.rgb.kind == "offline" else (
        f"timm `{cfg.rgb.model_name}` ({cfg.rgb.weights or cfg.extractor_weights} weights)"
    )
    pts_src = WEIGHT_FREE_3D[cfg.points.kind] if cfg.points.kind in WEIGHT_FREE_3D else (
        f"PointMAE ({cfg.points.weights or cfg.extractor_weights} weights), "
        f"{cfg.points.num_groups} groups x {cfg.points.group_size} points"
    )
    parts = [
        "# MAFR anomaly detector",
        "Multimodal (RGB + 3D) industrial anomaly detector fitted with "
        "[mafr](https://github.com/mafr-project/mafr): frozen extractors, a fusion autoencoder with "
        "CBAM decoders, anomalies where restoration fails (MAFR, arXiv 2510.21793).",
        "```python\nimport mafr\ndet = mafr.MAFRDetector.from_pretrained(\"<this repo>\")\n"
        "result = det.predict(\"part.png\", \"part.tiff\")\nprint(result.score, result.is_anomalous)\n```",
        "## Configuration",
        _table(
            {
                "preset": cfg.preset,
                "judges": {"rgb+xyz": "colour image and 3D scan", "rgb": "colour images alone",
                           "xyz": "3D scans alone"}[cfg.modalities],
                "measured support": ("found in each scan's border and set aside" if cfg.support == "auto"
                                     else "kept as scanned"),
                "RGB extractor": rgb_src,
                "3D extractor": pts_src,
                "grid": f"{cfg.grid_size} x {cfg.grid_size}",
                "framing": _describe_framing(detector.framing_),
                "CBAM": cfg.model.cbam,
                "fusion": cfg.scoring.fusion,
            }
        ),
    ]
    if "converted_from" in fit:
        parts += [
            "## Origin",
            "Converted from the reference MAFR implementation's checkpoints "
            f"(category `{fit.get('category', '?')}`): {', '.join(f'`{f}`' for f in fit['converted_from'])}. "
            "Features are not normalised (identity statistics), as in the reference.",
        ]
    else:
        parts += [
            "## Fit data",
            _table(
                {
                    "good parts": fit.get("n_samples", "?"),
                    "used for training": fit.get("n_train", "?"),
                    "held out for calibration": fit.get("n_calibration", "?"),
                    "training steps": fit.get("steps", "?"),
                    "seed": fit.get("seed", "?"),
                    "fit seconds": fit.get("fit_seconds", "?"),
                }
            ),
        ]
    history = fit.get("history") or []
    if history:
        # The card must say which parts shaped the detector and when: after update() the
        # decision boundary no longer comes from the original fit alone.
        rows = ["| # | event | when (UTC) | parts | trained on | held out | steps | seconds | threshold |",
                "|---|---|---|---|---|---|---|---|---|"]
        for i, e in enumerate(history, 1):
            t = e.get("threshold")
            rows.append(
                f"| {i} | {e.get('event', '?')} | {e.get('time', '?')} | {e.get('parts', '?')} | {e.get('n_train', '?')} | "
                f"{e.get('n_calibration', '?')} | {e.get('steps', '?')} | {e.get('seconds', '?')} | "
                f"{f'{t:.4f}' if isinstance(t, float) else '?'} |"
            )
        parts += ["## Fit history", f"{fit.get('n_parts_total', '?')} good parts in all; "
                  f"{fit.get('replay_parts', 0)} kept in the replay store that `det.update(new_good_parts)` uses.",
                  "\n".join(rows)]
    parts += ["## What it can see", detectability_text(fit)]
    parts.append("## Decision threshold")
    if math.isfinite(detector.threshold_):
        parts.append(f"threshold = **{detector.threshold_:.4f}**\n\n{THRESHOLD_RULE}")
    else:
        parts.append(
            "No threshold: nothing is flagged until one is set. Calibrate on good parts with "
            "`det.calibrate(good_parts)` and save again, or pass `--threshold` to `mafr convert reference`."
        )
    if detector.metrics_:
        parts += ["## Evaluation", _table({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in detector.metrics_.items()})]
    parts += ["## Full config", "```json\n" + json.dumps(cfg.to_json_dict(), indent=2) + "\n```"]
    data = ModelCardData(library_name="mafr", tags=["anomaly-detection", "multimodal", "point-cloud", "mafr"])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def _describe_framing(framing) -> str:
    """What the network sees of a part, in words, for the model card."""
    side = None if framing is None else framing.side
    axis = None if framing is None else framing.axis
    seen = "the whole image" if side is None else f"a square around the part, side {side:.3f} x the image's longer side"
    return seen if axis is None else f"{seen}, each part turned so its long axis lies at {axis:.1f} degrees"
