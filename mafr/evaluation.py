"""The MVTec 3D-AD protocol end to end: fit per category on good training parts, score the test
split, and report I-AUROC, P-AUROC and AUPRO in a table (Markdown + JSON).

Pixel metrics are computed at ``eval_size x eval_size`` (224, as the reference code does):
anomaly maps are resized bilinearly, ground-truth masks with nearest neighbour.
Results are written per category as they finish, so an interrupted run resumes where it stopped.

``protocol="reference"`` scores as the reference evaluation does (docs/method.md, "Evaluation"):
the detector's fused maps at the network's resolution (224 x 224, the maps the reference scores,
not maps brought to the input size and back), ground truth padded and resized the same way, and
the per-map rescaling of :func:`mafr.metrics.evaluate`. Every result names its protocol.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .config import MAFRConfig
from .detector import MAFRDetector
from .runtime import progress as _progress
from .io import resize_nearest
from .results import decision
from .types import Sample

COLUMNS = (
    ("category", "category"),
    ("image_auroc", "I-AUROC"),
    ("worst_type_auroc", "worst type I-AUROC"),
    ("recall", "recall"),
    ("false_alarm_rate", "false alarms"),
    ("mask_iou", "mask IoU"),
    ("pixel_auroc", "P-AUROC"),
    ("aupro@0.3", "AUPRO@30%"),
    ("aupro@0.01", "AUPRO@1%"),
    ("fit_seconds", "fit s"),
    ("predict_ms", "predict ms/sample"),
)


def _resize_map(m: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    return resize_nearest(np.asarray(m) > 0, size, size)


def _network_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Ground truth on the network's square input: padded bottom/right like the image, then
    nearest-neighbour resized."""
    m = np.asarray(mask) > 0
    side = max(m.shape)
    padded = np.zeros((side, side), dtype=bool)
    padded[: m.shape[0], : m.shape[1]] = m
    return resize_nearest(padded, size, size)


def _network_maps(detector: MAFRDetector, chunk: Sequence[Sample]) -> tuple[list[float], list[np.ndarray]]:
    """Image scores and fused maps at the network's resolution, as the reference evaluates them."""
    detector._check_fitted(require_threshold=False)
    fused, _, _, scores = detector._score_features(detector.extract_features(chunk))
    return [float(s) for s in scores], [m.float().cpu().numpy() for m in fused]


def evaluate_detector(
    detector: MAFRDetector,
    test: Sequence[Sample],
    *,
    eval_size: int = 224,
    batch_size: int = 8,
    progress: bool = True,
    protocol: metrics.Protocol = "exact",
) -> dict[str, Any]:
    """Score ``test`` (samples with ``label`` and, for pixel metrics, ``mask``) with a fitted
    detector; returns the metrics plus ``predict_ms`` per sample, per-sample scores and the
    ``protocol`` used (``"exact"``, or ``"reference"``: see the module docstring; ``eval_size``
    is then the network's input size)."""
    if protocol not in ("exact", "reference"):
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected 'exact' or 'reference'")
    labels, scores, masks, maps = [], [], [], []
    decisions: list[Optional[bool]] = []
    ious: list[Optional[float]] = []
    t0 = time.perf_counter()
    for start in _progress(range(0, len(test), batch_size), total=-(-len(test) // batch_size), desc="mafr: scoring", enable=progress):
        chunk = test[start : start + batch_size]
        if protocol == "reference":
            size = detector.config.rgb.image_size
            for sample, score, amap in zip(chunk, *_network_maps(detector, chunk)):
                if sample.label is None:
                    raise ValueError(f"test sample {sample.name or start} has no label")
                labels.append(int(sample.label))
                scores.append(score)
                maps.append(amap)
                masks.append(None if sample.mask is None else _network_mask(sample.mask, size))
                decisions.append(decision(score, detector.threshold_))
                ious.append(None)
            continue
        for sample, res in zip(chunk, detector.predict_batch(chunk, batch_size=batch_size)):
            if sample.label is None:
                raise ValueError(f"test sample {sample.name or start} has no label")
            labels.append(int(sample.label))
            scores.append(res.score)
            decisions.append(res.is_anomalous)
            maps.append(_resize_map(res.anomaly_map, eval_size))
            if sample.mask is not None:
                masks.append(_resize_mask(sample.mask, eval_size))
                scored = sample.label == 1 and res.defect_mask is not None
                ious.append(mask_iou(res.defect_mask, sample.mask) if scored else None)
            else:
                masks.append(None)
                ious.append(None)
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = dict(metrics.evaluate(labels, scores, masks, maps, protocol=protocol))
    result["protocol"] = protocol
    result["predict_ms"] = 1000.0 * elapsed / max(1, len(test))
    result["n_test"] = len(test)
    result["scores"] = [float(s) for s in scores]
    result["labels"] = labels
    result["decisions"] = decisions
    result.update(decision_metrics(labels, decisions, ious))
    types = [s.defect_type or ("good" if s.label == 0 else "defective") for s in test]
    result["defect_types"] = types
    result["per_type"] = per_type_metrics(labels, types, scores, decisions, ious, masks, maps, protocol)
    return result


def mask_iou(predicted: np.ndarray, truth: Any) -> float:
    """Intersection over union of two boolean masks (resized to ``predicted``'s shape)."""
    truth = np.asarray(truth) > 0
    if truth.shape != predicted.shape:
        truth = resize_nearest(truth, *predicted.shape)
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def decision_metrics(labels: Sequence[int], decisions: Sequence[Optional[bool]],
                     ious: Sequence[Optional[float]] = ()) -> dict[str, Optional[float]]:
    """Recall (defective parts flagged), false-alarm rate (good parts flagged) at the detector's
    own decision, and the mean ``defect_mask`` IoU over defective parts."""
    y = np.asarray(labels)
    d = np.asarray([bool(x) if x is not None else False for x in decisions])
    known = np.asarray([x is not None for x in decisions], dtype=bool)
    out: dict[str, Optional[float]] = {"recall": None, "false_alarm_rate": None, "mask_iou": None}
    if known.any() and (y[known] == 1).any():
        out["recall"] = float(d[known & (y == 1)].mean())
    if known.any() and (y[known] == 0).any():
        out["false_alarm_rate"] = float(d[known & (y == 0)].mean())
    iou = [v for v in ious if v is not None]
    if iou:
        out["mask_iou"] = float(np.mean(iou))
    return out


def per_type_metrics(labels, types, scores, decisions, ious, masks, maps, protocol="exact") -> dict[str, dict[str, Any]]:
    """For each defect type: I-AUROC and AUPRO@30% of that type against the good parts, recall
    at the decision and mean mask IoU. A mean over types hides the type a detector cannot see."""
    y = np.asarray(labels)
    t = np.asarray(types)
    good = y == 0
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(t[y == 1])):
        sel = good | (t == kind)
        idx = np.nonzero(sel)[0]
        row: dict[str, Any] = {"n": int((t == kind).sum())}
        if good.any():
            row["image_auroc"] = metrics.image_auroc(y[sel], np.asarray(scores)[sel])
            with_masks = [i for i in idx if masks[i] is not None or y[i] == 0]
            try:
                pix = metrics.evaluate(y[with_masks], np.asarray(scores)[with_masks],
                                       [masks[i] for i in with_masks], [maps[i] for i in with_masks],
                                       limits=(0.3,), protocol=protocol)
                row["aupro@0.3"] = pix["aupro@0.3"]
            except ValueError:  # no ground truth for this type
                row["aupro@0.3"] = None
        dm = decision_metrics(y[sel], [decisions[i] for i in idx], [ious[i] for i in idx])
        row["recall"], row["mask_iou"] = dm["recall"], dm["mask_iou"]
        out[str(kind)] = row
    return out


def per_type_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per category and defect type (I-AUROC, AUPRO@30%, recall, mask IoU),
    then each category's false-alarm rate on good parts."""
    lines = ["| category | defect type | n | I-AUROC | AUPRO@30% | recall at decision | mask IoU |",
             "|---|---|---:|---:|---:|---:|---:|"]

    def f(v):
        return "" if v is None else f"{v:.3f}"

    for r in rows:
        if r.get("category") == "mean" or "per_type" not in r:
            continue
        for kind, m in r["per_type"].items():
            lines.append(f"| {r['category']} | {kind} | {m['n']} | {f(m.get('image_auroc'))} | "
                         f"{f(m.get('aupro@0.3'))} | {f(m.get('recall'))} | {f(m.get('mask_iou'))} |")
        lines.append(f"| {r['category']} | good (false alarms) | {r['labels'].count(0)} | | | "
                     f"{f(r.get('false_alarm_rate'))} | |")
    return "\n".join(lines) + "\n"


def _config_key(config: MAFRConfig, shots: Optional[int], seed: int) -> str:
    blob = json.dumps({"config": config.to_json_dict(), "shots": shots, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_benchmark(
    load_split: Callable[[str, str], Sequence[Sample]],
    categories: Sequence[str],
    config: MAFRConfig,
    out_dir: Path,
    *,
    shots: Optional[int] = None,
    seed: int = 0,
    train_split: str = "train",
    test_split: str = "test",
    progress: bool = True,
    log: Callable[[str], None] = print,
    protocol: metrics.Protocol = "exact",
) -> list[dict[str, Any]]:
    """Fit and score each category; one JSON per category in ``out_dir/rows`` (reused when the
    config, shots, seed and protocol match), and ``results.md`` / ``results.json`` with a mean
    row and the protocol that produced the numbers."""
    out_dir = Path(out_dir)
    (out_dir / "rows").mkdir(parents=True, exist_ok=True)
    key = _config_key(config, shots, seed)
    if protocol != "exact":
        key = f"{key}-{protocol}"  # the exact protocol keeps the keys of earlier runs
    rows = []
    for category in categories:
        row_path = out_dir / "rows" / f"{category}.json"
        if row_path.is_file():
            cached = json.loads(row_path.read_text())
            if cached.get("key") == key:
                log(f"{category}: reusing {row_path}")
                rows.append(cached)
                continue
        train = list(load_split(category, train_split))
        if shots is not None:
            if shots < 1:
                raise ValueError(f"shots must be >= 1, got {shots}")
            train = train[:shots]
        test = list(load_split(category, test_split))
        t0 = time.perf_counter()
        detector = MAFRDetector(config).fit(train, seed=seed, progress=progress)
        fit_seconds = time.perf_counter() - t0
        result = evaluate_detector(detector, test, progress=progress, protocol=protocol)
        row = {"category": category, "key": key, "fit_seconds": fit_seconds, "n_train": len(train), **result}
        row["calibration_scores"] = list(detector.fit_info_.get("calibration_scores") or [])
        row["threshold"] = detector.threshold_
        aurocs = [m["image_auroc"] for m in result["per_type"].values() if m.get("image_auroc") is not None]
        row["worst_type_auroc"] = min(aurocs) if aurocs else None
        row_path.write_text(json.dumps(row, indent=1))
        log(f"{category}: I-AUROC {row['image_auroc']:.3f}  AUPRO@30% {row['aupro@0.3']:.3f}  fit {fit_seconds:.0f} s  ({protocol} protocol)")
        for kind, m in row["per_type"].items():
            log(f"  {kind:>10}: I-AUROC {_fmt(m.get('image_auroc'))}  AUPRO@30% {_fmt(m.get('aupro@0.3'))}  "
                f"recall {_fmt(m.get('recall'))}  mask IoU {_fmt(m.get('mask_iou'))}")
        log(f"  false alarms on good parts: {_fmt(row.get('false_alarm_rate'))}")
        rows.append(row)
    table = with_mean(rows)
    (out_dir / "results.json").write_text(json.dumps({"config": config.to_json_dict(), "shots": shots, "seed": seed, "protocol": protocol, "rows": table}, indent=1))
    (out_dir / "results.md").write_text(markdown_table(table) + "\n" + protocol_note(protocol) + "\n\n"
                                        + "Per defect type:\n\n" + per_type_table(rows))
    return table


def protocol_note(protocol: str) -> str:
    """One line saying which evaluation protocol produced a table's pixel metrics."""
    if protocol == "reference":
        return ("Protocol: reference (P-AUROC on each map / sqrt(its mean), AUPRO on each map / its non-zero "
                "mean with 99 thresholds, maps at the network's resolution; comparable with the paper's table).")
    return "Protocol: exact (maps as predicted, exact PRO curve; not the paper's per-map rescaling)."


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def with_mean(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = list(rows)
    if not rows:
        return rows
    mean = {"category": "mean"}
    for key, _ in COLUMNS[1:]:
        values = [r.get(key) for r in rows if r.get(key) is not None]
        mean[key] = float(np.min(values) if key == "worst_type_auroc" else np.mean(values)) if values else None
    return rows + [mean]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "category" else "---:" for k, _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            if key == "category":
                cells.append(f"**{v}**" if v == "mean" else str(v))
            elif key in ("fit_seconds", "predict_ms"):
                cells.append(f"{v:.0f}" if v is not None else "")
            else:
                cells.append(f"{v:.3f}" if v is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
