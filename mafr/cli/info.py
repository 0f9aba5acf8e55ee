"""``mafr info``: what a saved detector contains."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ._shared import _error_message, _Out, _size, _sub, detector_dir, EXIT_OK


def describe_detector(directory: Path) -> dict[str, Any]:
    """What a saved detector holds, read from its files without building any extractor."""
    from safetensors import safe_open

    from .._integrity import read_config
    from ..persistence import CONFIG_NAME, WEIGHTS_NAME, decode_config as _decode_config
    from ..errors import CorruptModelError

    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a directory written by MAFRDetector.save_pretrained")
    raw = read_config(directory, CONFIG_NAME, str(directory))
    try:
        cfg = _decode_config(raw)
    except ValueError as err:
        raise CorruptModelError(f"{config_path} is not a valid mafr config: {_error_message(err)}", path=config_path) from err
    threshold, dims, n_params, fmt = None, {}, 0, None
    if weights_path.is_file():
        with safe_open(str(weights_path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("mafr_format_version")
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                if key.startswith("autoencoder."):
                    n_params += math.prod(shape)
                elif key in ("stats.rgb_mean", "stats.xyz_mean"):
                    dims[key[len("stats.") : -len("_mean")]] = int(shape[0])
            if "threshold" in f.keys():
                threshold = float(f.get_tensor("threshold")[0])
    rgb_weights = "none (weight-free)" if cfg.rgb.kind == "offline" else (cfg.rgb.weights or cfg.extractor_weights)
    pts_weights = "none (weight-free)" if cfg.points.kind != "pointmae" else (cfg.points.weights or cfg.extractor_weights)
    card = directory / "README.md"
    return {
        "path": directory,
        "mafr_version": raw.get("mafr_version"),
        "format_version": int(fmt) if fmt else cfg.version,
        "config": {
            "preset": cfg.preset,
            "rgb_extractor": {"kind": cfg.rgb.kind, "model_name": cfg.rgb.model_name if cfg.rgb.kind == "timm" else None,
                              "weights": rgb_weights, "image_size": cfg.rgb.image_size},
            "point_extractor": {"kind": cfg.points.kind, "weights": pts_weights,
                                "groups": cfg.points.num_groups if cfg.points.kind == "pointmae" else None,
                                "group_size": cfg.points.group_size if cfg.points.kind == "pointmae" else None},
            "modalities": cfg.modalities,
            "support": cfg.support,
            "grid_size": cfg.grid_size,
            "cbam": cfg.model.cbam,
            "attention": cfg.model.attention,
            "fusion": cfg.scoring.fusion,
        },
        "autoencoder": {"rgb_channels": dims.get("rgb"), "xyz_channels": dims.get("xyz"),
                        "latent": cfg.model.latent_dim or ((dims["rgb"] + dims["xyz"]) // 2 if len(dims) == 2 else None),
                        "parameters": n_params},
        "fit": raw.get("fit") or {},
        "threshold": threshold,
        "metrics": raw.get("metrics") or {},
        "files": [{"name": str(p.relative_to(directory)), "bytes": p.stat().st_size}
                  for p in sorted(directory.rglob("*")) if p.is_file() and ".cache" not in p.parts],
        "model_card": card.read_text() if card.is_file() else None,
    }


def _info_text(d: dict[str, Any]) -> str:
    from ..hub import WEIGHT_FREE_3D as _WEIGHT_FREE_3D

    c, ae, fit = d["config"], d["autoencoder"], d["fit"]
    rgb, pts = c["rgb_extractor"], c["point_extractor"]
    rgb_text = "weight-free colour/gradient statistics" if rgb["kind"] == "offline" else f"timm {rgb['model_name']} (weights: {rgb['weights']})"
    pts_text = _WEIGHT_FREE_3D[pts["kind"]] if pts["kind"] in _WEIGHT_FREE_3D else (
        f"PointMAE, {pts['groups']} groups x {pts['group_size']} points (weights: {pts['weights']})")
    lines = [f"MAFR detector  {d['path']}", f"  mafr version   {d['mafr_version']} (format {d['format_version']})", "configuration",
             f"  preset         {c['preset']}", f"  modalities     {c['modalities']} (measured support: {c['support']})",
             f"  RGB extractor  {rgb_text}", f"  3D extractor   {pts_text}",
             f"  grid           {c['grid_size']} x {c['grid_size']}",
             f"  autoencoder    {ae['rgb_channels']} + {ae['xyz_channels']} channels -> latent {ae['latent']}, "
             f"attention {c.get('attention', 'cbam')} ({c['cbam']}), {ae['parameters']:,} parameters",
             f"  fusion         {c['fusion']}", "fit"]
    if "converted_from" in fit:
        lines.append(f"  converted from {', '.join(fit['converted_from'])}")
    if "n_samples" in fit:
        cal = (f"{fit['n_calibration']} held out for calibration" if fit.get("n_calibration")
               else "calibrated on the training parts")
        lines.append(f"  parts          {fit['n_samples']} ({fit.get('n_train')} training, {cal})")
        lines.append(f"  steps, seed    {fit.get('steps')}, {fit.get('seed')}; {fit.get('fit_seconds')} s")
    for i, e in enumerate(fit.get("history") or [], 1):
        if i == 1:
            lines.append(f"history        {fit.get('n_parts_total', '?')} parts in all, {fit.get('replay_parts', 0)} in the replay store")
        t = e.get("threshold")
        lines.append(f"  {i}. {e.get('event', '?'):<7} {e.get('time', '?')}  {e.get('parts', '?')} parts "
                     f"({e.get('n_train', '?')} trained on, {e.get('n_calibration', '?')} held out), "
                     f"{e.get('steps', '?')} steps, {e.get('seconds', '?')} s"
                     + (f", threshold {t:.4f}" if isinstance(t, float) else ""))
    det_check = fit.get("detectability")
    if det_check:
        lines.append(f"detectability  overall AUROC {det_check['auroc']:.3f} on {det_check['n_good']} held-out parts"
                     + ("  BLIND: cannot tell its default-size defects from good parts" if det_check["blind"] else ""))
        lines += [f"  {t['kind']:<8} {t['size']:>5g} {t['unit']:<2}  AUROC {t['auroc']:.3f}"
                  + ("" if t["recall"] is None else f"  recall {t['recall']:.2f}") for t in det_check["per_type"]]
    elif "n_samples" in fit:
        lines.append("detectability  not measured at fit (fewer than 2 parts held out): mafr check DETECTOR GOOD_DIR")
    threshold = d["threshold"]
    lines.append(f"  threshold      {threshold:.4f}" if threshold is not None and math.isfinite(threshold) else
                 f"  threshold      {threshold} ({fit.get('threshold_note', 'not set')})")
    if d["metrics"]:
        lines.append("metrics")
        lines += [f"  {k:<14} {v:.4f}" if isinstance(v, float) else f"  {k:<14} {v}" for k, v in d["metrics"].items()]
    lines.append("files")
    lines += [f"  {f['name']:<24} {_size(f['bytes']):>9}" for f in d["files"]]
    if d["model_card"]:
        lines += ["model card (README.md)", "-" * 60, d["model_card"].rstrip()]
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace, out: _Out) -> int:
    details = describe_detector(detector_dir(args.detector))
    out.result(_info_text(details), details)
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def add_info(subs, common) -> None:
    """``mafr info``'s arguments."""
    p = _sub(subs, "info", "show what a saved detector contains",
             "Show a saved detector: configuration (preset, extractors and where their weights come\n"
             "from, grid, CBAM, fusion), fit (parts, calibration, threshold), metrics, files with sizes\n"
             "and the model card.",
             "  mafr info detector\n  mafr info hf-user/mafr-puck --json", [common])
    p.add_argument("detector", metavar="DETECTOR_DIR_OR_REPO")
    p.set_defaults(func=_cmd_info)
