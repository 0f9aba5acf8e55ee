"""The ``mafr`` command line: fit, predict, evaluate, prepare data, convert checkpoints, inspect.

Every subcommand takes ``--quiet`` (no progress bars or log lines on stderr) and ``--json``
(machine-readable output on stdout). Bad input ends with one ``mafr: error: ...`` line on stderr
and exit status 2; set ``MAFR_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
XYZ_SUFFIXES = (".tiff", ".tif", ".npy")
EXIT_OK, EXIT_ANOMALOUS, EXIT_USAGE = 0, 1, 2
#: The detector has no finite threshold, so no part was judged: neither "good" (0) nor
#: "anomalous" (1), and not a crash (2).
EXIT_NO_THRESHOLD = 3
#: Every error exits 2, never 1 ("anomalous"): a script must not read a crash as a verdict.
EXIT_ERROR = EXIT_USAGE

PAIRING = """\
Parts on disk: an RGB image NAME.png|.jpg|.jpeg and its organized point cloud NAME.tiff|.tif|.npy
(H x W x 3, zeros = no measurement), matched by file stem, either side by side in one folder or
in rgb/ and xyz/ subfolders. Every image needs its point cloud and vice versa."""


# ----------------------------------------------------------------------------- output
class _Out:
    """Results go to stdout (text or JSON); logs and progress to stderr unless --quiet."""

    def __init__(self, quiet: bool, as_json: bool) -> None:
        self.quiet, self.json = quiet, as_json

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def result(self, text: str, data: Any) -> None:
        print(json.dumps(_jsonable(data)) if self.json else text, flush=True)


def _jsonable(value: Any) -> Any:
    """Strict JSON: paths as strings and non-finite floats (an unset threshold is inf) as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# ----------------------------------------------------------------------------- parts on disk
@dataclass(frozen=True)
class Part:
    """One RGB + point cloud pair found on disk (one of them ``None`` for a detector of one modality)."""

    name: str
    rgb: Optional[Path]
    xyz: Optional[Path]


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                raise ValueError(f"two files for part {path.stem!r} in {folder}: {found[path.stem].name} and {path.name}")
            found[path.stem] = path
    return found


def _names(stems: Sequence[str], limit: int = 5) -> str:
    more = f" ... (+{len(stems) - limit} more)" if len(stems) > limit else ""
    return ", ".join(stems[:limit]) + more


def find_parts(folder: Path, modalities: str = "rgb+xyz") -> list[Part]:
    """RGB + point cloud pairs in ``folder`` (side by side, or in ``rgb/`` + ``xyz/``), sorted by
    name; for a detector of one modality, that modality's files alone (others are not read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    if modalities in ("rgb", "xyz"):
        sub, suffixes = ("rgb", RGB_SUFFIXES) if modalities == "rgb" else ("xyz", XYZ_SUFFIXES)
        found = _by_stem(folder / sub if (folder / sub).is_dir() else folder, suffixes)
        if not found:
            raise FileNotFoundError(f"no parts found in {folder}: expected {'/'.join(suffixes)} files "
                                    f"(or a {sub}/ subfolder) for a detector of modalities={modalities!r}")
        return [Part(stem, found[stem] if modalities == "rgb" else None, found[stem] if modalities == "xyz" else None)
                for stem in sorted(found)]
    split = (folder / "rgb").is_dir() and (folder / "xyz").is_dir()
    rgb_dir, xyz_dir = (folder / "rgb", folder / "xyz") if split else (folder, folder)
    rgbs, xyzs = _by_stem(rgb_dir, RGB_SUFFIXES), _by_stem(xyz_dir, XYZ_SUFFIXES)
    if not rgbs and not xyzs:
        raise FileNotFoundError(
            f"no parts found in {folder}: expected NAME.png + NAME.tiff pairs (or rgb/ and xyz/ subfolders)"
        )
    no_xyz, no_rgb = sorted(set(rgbs) - set(xyzs)), sorted(set(xyzs) - set(rgbs))
    if no_xyz:
        raise ValueError(f"{len(no_xyz)} image(s) in {rgb_dir} have no point cloud ({'/'.join(XYZ_SUFFIXES)}): {_names(no_xyz)}")
    if no_rgb:
        raise ValueError(f"{len(no_rgb)} point cloud(s) in {xyz_dir} have no image ({'/'.join(RGB_SUFFIXES)}): {_names(no_rgb)}")
    return [Part(stem, rgbs[stem], xyzs[stem]) for stem in sorted(rgbs)]


def _fit_parts(data: Path, modalities: str = "rgb+xyz") -> list[Any]:
    """An MVTec-style category folder (its train/good split) or a folder of good parts."""
    good = data / "train" / "good"
    if (good / "rgb").is_dir() and ((good / "xyz").is_dir() or modalities == "rgb"):
        from .datasets import MVTec3D

        return list(MVTec3D(data.parent, data.name, "train"))
    return [(p.rgb, p.xyz) for p in find_parts(data, modalities)]


def parse_inputs(inputs: Sequence[str], modalities: str = "rgb+xyz") -> list[Part]:
    """``RGB XYZ`` file pairs and folders, in the order given (single files for a detector of one
    modality); names made unique (for file names)."""
    parts: list[Part] = []
    i = 0
    while i < len(inputs):
        path = Path(inputs[i])
        if path.is_dir():
            parts.extend(find_parts(path, modalities))
            i += 1
            continue
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if modalities in ("rgb", "xyz"):
            suffixes = RGB_SUFFIXES if modalities == "rgb" else XYZ_SUFFIXES
            if path.suffix.lower() not in suffixes:
                raise ValueError(f"{path}: this detector judges modalities={modalities!r}, so each input is a "
                                 f"{'/'.join(suffixes)} file or a folder")
            parts.append(Part(path.stem, path if modalities == "rgb" else None, path if modalities == "xyz" else None))
            i += 1
            continue
        if path.suffix.lower() not in RGB_SUFFIXES:
            raise ValueError(f"{path}: expected an RGB image ({'/'.join(RGB_SUFFIXES)}) followed by its point cloud, or a folder")
        if i + 1 >= len(inputs):
            raise ValueError(f"{path} has no point cloud: give parts as RGB XYZ pairs, or folders")
        xyz = Path(inputs[i + 1])
        if xyz.suffix.lower() not in XYZ_SUFFIXES:
            raise ValueError(f"expected the point cloud ({'/'.join(XYZ_SUFFIXES)}) of {path} next, got {xyz}")
        if not xyz.is_file():
            raise FileNotFoundError(f"xyz file not found: {xyz}")
        parts.append(Part(path.stem, path, xyz))
        i += 2
    seen: dict[str, int] = {}
    unique = []
    for part in parts:
        n = seen[part.name] = seen.get(part.name, 0) + 1
        unique.append(part if n == 1 else Part(f"{part.name}-{n}", part.rgb, part.xyz))
    return unique


# ----------------------------------------------------------------------------- config and detectors
def _load_config(args: argparse.Namespace, default_preset: str = "paper"):
    from .config import MAFRConfig

    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object (a MAFRConfig), got {type(data).__name__}")
        # A saved detector's config.json works too: drop what save_pretrained adds.
        data = {k: v for k, v in data.items() if k not in ("mafr_version", "fit", "metrics", "checksums")}
    else:
        data = {"preset": args.preset or default_preset}
    if getattr(args, "extractor_weights", None):
        data["extractor_weights"] = args.extractor_weights
    if getattr(args, "modalities", None):
        data["modalities"] = args.modalities
    return MAFRConfig.model_validate(data)


def _looks_like_path(ref: str) -> bool:
    # Hub repo ids are "name" or "owner/name": anything else is meant as a local path.
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref


def detector_dir(ref: str) -> Path:
    """A local detector directory, or the Hub snapshot of a repo id (``owner/name``)."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; expected a detector directory (config.json + model.safetensors) or a Hub repo id")
        return path
    if _looks_like_path(ref):
        raise FileNotFoundError(f"detector directory not found: {path}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=ref))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{ref!r} is not a local directory, and as a Hugging Face repo id it could not be fetched: {err}"
        ) from err


# ----------------------------------------------------------------------------- commands
def _cmd_fit(args: argparse.Namespace, out: _Out) -> int:
    from .detector import MAFRDetector

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
    from .detector import MAFRDetector

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


def _cmd_predict(args: argparse.Namespace, out: _Out) -> int:
    from huggingface_hub.utils import tqdm

    from .detector import MAFRDetector

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


def _evaluation_splits(args: argparse.Namespace, out: _Out) -> tuple[Callable, list[str], str, str]:
    from . import datasets

    root = Path(args.root)
    if args.dataset == "generated":
        cats = args.category or list(datasets.BENCHMARK_SPLITS[args.split][0])
        missing = [c for c in cats if not (root / c).is_dir()]
        if missing:
            _, _, good, per_defect = datasets.BENCHMARK_DIFFICULTIES[args.difficulty]
            out.log(f"generating {', '.join(missing)} under {root} ({args.split} set, {args.difficulty} defects: "
                    f"10 train, {good} good + {per_defect} per defect type test, "
                    f"{datasets.synthetic.DEFAULT_SIZE} px)")
            datasets.write_benchmark(root, args.split, difficulty=args.difficulty, categories=missing)
        return (lambda c, s: datasets.MVTec3D(root, c, s)), cats, "train", "test"
    if args.dataset == "mvtec3d":
        cats = args.category or datasets.categories(root)
        if not cats:
            raise FileNotFoundError(f"no category folders under {root} (expected root/<category>/train/good/rgb, ...)")
        return (lambda c, s: datasets.MVTec3D(root, c, s)), cats, "train", "test"
    if not root.is_dir():
        raise FileNotFoundError(f"Eyecandies root not found: {root}")
    cats = args.category or [c for c in datasets.EYECANDIES_CATEGORIES if (root / c).is_dir()]
    if not cats:
        raise FileNotFoundError(f"no Eyecandies category folders under {root} (known: {', '.join(datasets.EYECANDIES_CATEGORIES)})")
    return (lambda c, s: datasets.Eyecandies(root, c, s)), cats, "train", "test_public"


def _cmd_evaluate(args: argparse.Namespace, out: _Out) -> int:
    from .evaluation import run_benchmark

    config = _load_config(args, default_preset="offline" if args.dataset == "generated" else "paper")
    load_split, cats, train_split, test_split = _evaluation_splits(args, out)
    out_dir = Path(args.out or f"mafr-eval-{args.dataset}")
    out.log(f"evaluating a {config.preset} detector on {args.dataset}: {', '.join(cats)} -> {out_dir}")
    rows = run_benchmark(
        load_split, cats, config, out_dir, shots=args.shots, seed=args.seed, train_split=train_split,
        test_split=test_split, progress=not out.quiet, log=out.log, protocol=args.protocol,
    )
    scalars = [{k: v for k, v in r.items() if not isinstance(v, (list, dict)) and k != "key"} for r in rows]
    out.result(
        (out_dir / "results.md").read_text().rstrip()
        + f"\n\nwritten to {out_dir / 'results.md'} and {out_dir / 'results.json'}",
        {"out_dir": out_dir, "dataset": args.dataset, "preset": config.preset, "shots": args.shots,
         "protocol": args.protocol, "rows": scalars},
    )
    return EXIT_OK


def _cmd_preprocess(args: argparse.Namespace, out: _Out) -> int:
    from .datasets import preprocess_dataset

    dst = preprocess_dataset(args.src, args.dst, args.category or None, seed=args.seed, progress=not out.quiet,
                             mask_background=args.mask_background)
    n = sum(1 for _ in Path(dst).glob("*/*/*/xyz/*.tiff"))
    out.result(f"wrote {n} preprocessed parts to {dst}", {"dst": dst, "n_parts": n})
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace, out: _Out) -> int:
    from .datasets import write_dataset

    root = write_dataset(
        args.root, args.category or None, n_train=args.n_train, n_validation=args.n_validation,
        n_test_good=args.n_test_good, n_test_per_defect=args.n_test_per_defect, size=args.size, seed=args.seed,
    )
    counts: dict[str, int] = {}
    for xyz in Path(root).glob("*/*/*/xyz/*.tiff"):
        split = xyz.parts[-4]
        counts[split] = counts.get(split, 0) + 1
    cats = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.result(f"wrote {text} parts ({', '.join(cats)}; {args.size} px) to {root}",
               {"root": root, "categories": cats, "counts": counts, "size": args.size})
    return EXIT_OK


def _cmd_convert_pointmae(args: argparse.Namespace, out: _Out) -> int:
    from .convert import convert_pointmae_checkpoint
    from .extractors import default_pointmae_dir

    dst = Path(args.dst_dir) if args.dst_dir else default_pointmae_dir()
    convert_pointmae_checkpoint(args.src, dst)
    out.result(f"wrote the PointMAE encoder to {dst}", {"out_dir": dst})
    return EXIT_OK


def _cmd_download_pointmae(args: argparse.Namespace, out: _Out) -> int:
    from .download import download_pointmae, pointmae_dir

    target = pointmae_dir(args.cache_dir)
    if (target / "model.safetensors").is_file():
        out.log(f"the converted Point-MAE encoder is already in {target}")
    else:
        out.log(f"downloading Point-MAE's pretrain.pth, checking its SHA-256 and converting it into {target}")
    path = download_pointmae(url=args.url, sha256=args.sha256, cache_dir=args.cache_dir, progress=not out.quiet)
    # The path is the last line, so scripts can take it with `tail -n 1`.
    out.result(str(path), {"path": path})
    return EXIT_OK


def _cmd_convert_reference(args: argparse.Namespace, out: _Out) -> int:
    from .convert import convert_reference_checkpoints
    from .detector import MAFRDetector

    config = _load_config(args, default_preset="reference") if args.config else None
    dst = Path(args.dst_dir)
    convert_reference_checkpoints(args.src_dir, dst, args.category, config=config, threshold=args.threshold, tag=args.tag)
    det = MAFRDetector.from_pretrained(str(dst))
    files = det.fit_info_.get("converted_from", [])
    note = "" if args.threshold is not None else " (none: nothing is flagged until you pass --threshold)"
    out.result(
        f"converted {', '.join(files)} -> {dst}; threshold {det.threshold_}{note}",
        {"out_dir": dst, "converted_from": files, "threshold": det.threshold_, "config": det.config.to_json_dict()},
    )
    return EXIT_OK


def describe_detector(directory: Path) -> dict[str, Any]:
    """What a saved detector holds, read from its files without building any extractor."""
    from safetensors import safe_open

    from ._integrity import read_config
    from .persistence import CONFIG_NAME, WEIGHTS_NAME, decode_config as _decode_config
    from .errors import CorruptModelError

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
    from .hub import WEIGHT_FREE_3D as _WEIGHT_FREE_3D

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
def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("--quiet", action="store_true", help="no progress bars or log lines on stderr")
    g.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    return p


def _config_options(p: argparse.ArgumentParser, preset_default: str, seed_help: str) -> None:
    g = p.add_argument_group("detector configuration")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--config", metavar="CONFIG.json",
                   help="a MAFRConfig as JSON (a saved detector's config.json works too)")
    x.add_argument("--preset", choices=("paper", "reference", "offline"),
                   help=f"paper: DINO ViT-B/8 + PointMAE, fast settings; reference: the reference code's "
                        f"settings; offline: weight-free extractors, nothing downloaded (default: {preset_default})")
    g.add_argument("--extractor-weights", choices=("default", "random"),
                   help="default: published weights; random: seeded random weights (tests, smoke runs)")
    g.add_argument("--modalities", choices=("rgb+xyz", "rgb", "xyz"),
                   help="what parts are judged on: colour images and 3D scans (default), images alone (rgb), "
                        "or scans alone (xyz)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help=seed_help)


def _compute_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    g = p.add_argument_group("compute (docs/performance.md)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: $MAFR_THREADS, else half the available cores, at most 8; "
                        "torch's all-cores default is many times slower when other processes share the cores)")
    if device:
        g.add_argument("--device", default="auto", metavar="DEV",
                       help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps (default: auto)")
        g.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                       help="mixed precision for the networks: bf16 on CPUs with bf16 units and recent GPUs, fp16 on GPUs only")


def _sub(subs, name: str, help_: str, description: str, example: str, parents) -> argparse.ArgumentParser:
    return subs.add_parser(
        name, help=help_, description=description, epilog="example:\n" + example,
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=parents,
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    common = _common()
    parser = argparse.ArgumentParser(
        prog="mafr",
        description="MAFR: multimodal (RGB + 3D) industrial anomaly detection. Fit on good parts, score new ones.",
        epilog=(
            "examples:\n"
            "  mafr generate data --category puck\n"
            "  mafr fit data/puck detector --preset offline\n"
            "  mafr predict detector part.png part.tiff --overlay panels\n"
            "  mafr info detector\n\n"
            "Run `mafr COMMAND --help` for details. Errors exit with status 2 (MAFR_DEBUG=1 shows the traceback)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mafr {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    p = _sub(subs, "evaluate", "benchmark on MVTec 3D-AD, Eyecandies or generated data",
             "Fit per category on the good training parts, score the test split, and report I-AUROC,\n"
             "P-AUROC and AUPRO (results.md + results.json in --out). Finished categories are reused\n"
             "when config, shots and seed match, so an interrupted run resumes.\n\n"
             "generated: synthetic parts in the MVTec layout; categories missing under --root are\n"
             "generated first (10 train, 12 good + 6 per defect type test, 400 px; --difficulty hard:\n"
             "30 good + 15 per type, smaller and fainter defects). Its default preset is\n"
             "offline; the others default to paper. Eyecandies is scored on test_public.",
             "  mafr evaluate --dataset generated --root gen --category puck dome --out eval_gen\n"
             "  mafr evaluate --dataset mvtec3d --root mvtec3d_preprocessed --shots 10 --out eval_mvtec", [common])
    p.add_argument("--dataset", required=True, choices=("mvtec3d", "eyecandies", "generated"))
    p.add_argument("--root", required=True, metavar="DIR", help="dataset root (category folders inside)")
    p.add_argument("--category", nargs="+", action="extend", metavar="C", help="categories (default: all present)")
    p.add_argument("--shots", type=int, metavar="N", help="fit on the first N training parts of each category")
    p.add_argument("--out", metavar="DIR", help="results folder (default: mafr-eval-<dataset>)")
    p.add_argument("--split", choices=("report", "tuning"), default="report",
                   help="generated data: the report set (default; the figures in docs/) or the tuning set "
                        "(where defaults are chosen); each has its own categories and data seed")
    p.add_argument("--difficulty", choices=("standard", "hard"), default="standard",
                   help="generated data that is not under --root yet: standard defects (12 good + 6 per type "
                        "test) or smaller, shallower, fainter ones on other parts (30 good + 15 per type); "
                        "see mafr.datasets.HARD_DEFECT_SPECS")
    p.add_argument("--protocol", choices=("exact", "reference"), default="exact",
                   help="exact: maps as predicted, exact PRO curve (default); reference: the reference "
                        "evaluation's per-map rescaling and 99-threshold AUPRO, comparable with the paper "
                        "(docs/method.md)")
    _config_options(p, "offline for generated, else paper", "seed of the fits (and of generated data)")
    _compute_options(p, device=False)
    p.set_defaults(func=_cmd_evaluate)

    p = _sub(subs, "preprocess", "MVTec 3D-AD preprocessing (docs/method.md) of a dataset",
             "Write a preprocessed copy of an MVTec 3D-AD style dataset: table plane removed (RANSAC on\n"
             "the border), padded to a square, largest cluster kept; masks padded to match. RGB images\n"
             "are only padded, as the reference leaves them, unless --mask-background.",
             "  mafr preprocess mvtec3d mvtec3d_preprocessed --category bagel cookie", [common])
    p.add_argument("src", metavar="SRC", help="dataset root (category folders inside)")
    p.add_argument("dst", metavar="DST", help="output root (must differ from SRC)")
    p.add_argument("--category", nargs="+", action="extend", metavar="C", help="categories (default: all)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="RANSAC seed")
    p.add_argument("--mask-background", action="store_true",
                   help="also blacken the RGB pixels whose points were removed (off: the reference keeps RGB as is)")
    p.set_defaults(func=_cmd_preprocess)

    p = _sub(subs, "generate", "write synthetic parts in the MVTec 3D-AD layout",
             "Write synthetic parts with defects (bump, dent, stain, crack, hole) in the MVTec 3D-AD\n"
             "layout: ROOT/<category>/{train,validation,test}/<type>/{rgb,xyz,gt}/NNN.*",
             "  mafr generate data --category puck --n-train 10 --size 224", [common])
    p.add_argument("root", metavar="ROOT", help="output root")
    p.add_argument("--category", nargs="+", action="extend", metavar="C",
                   help="dome, puck, ring, block (default: all)")
    p.add_argument("--n-train", type=int, default=10, metavar="N", help="good training parts per category (default: 10)")
    p.add_argument("--n-validation", type=int, default=4, metavar="N", help="good validation parts (default: 4)")
    p.add_argument("--n-test-good", type=int, default=8, metavar="N", help="good test parts (default: 8)")
    p.add_argument("--n-test-per-defect", type=int, default=4, metavar="N", help="test parts per defect type (default: 4)")
    p.add_argument("--size", type=int, default=400, metavar="N", help="image side in pixels (default: 400)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the generated parts")
    p.set_defaults(func=_cmd_generate)

    p = _sub(subs, "convert", "convert published PyTorch checkpoints",
             "Convert published .pth checkpoints to mafr's safetensors format (read with\n"
             "torch.load(weights_only=True): no arbitrary code runs).",
             "  mafr convert pointmae pointmae_pretrain.pth\n"
             "  mafr convert reference checkpoints/ detector_bagel --category bagel", [common])
    conv = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = _sub(conv, "pointmae", "Point-MAE's ShapeNet pre-training checkpoint (3D extractor)",
             "Convert Point-MAE's pretrain.pth (a.k.a. pointmae_pretrain.pth) to the 3D extractor's\n"
             "weights. Without DST_DIR they go where the paper preset looks for them\n"
             "($MAFR_POINTMAE_WEIGHTS, else ~/.cache/mafr/pointmae).",
             "  mafr convert pointmae pointmae_pretrain.pth\n"
             "  mafr convert pointmae pointmae_pretrain.pth weights/pointmae", [common])
    q.add_argument("src", metavar="SRC.pth", help="pretrain.pth from github.com/Pang-Yatian/Point-MAE")
    q.add_argument("dst_dir", metavar="DST_DIR", nargs="?", help="output folder (default: see above)")
    q.set_defaults(func=_cmd_convert_pointmae)
    q = _sub(conv, "reference", "the MAFR reference code's fusion autoencoder trio",
             "Turn the reference code's fusion_encoder_<C>_<E>ep_<B>bs.pth, decoder_2D_... and\n"
             "decoder_3D_... (in SRC_DIR or SRC_DIR/<C>) into a saved detector with the reference preset\n"
             "(point-wise CBAM) and identity feature normalisation, as the reference feeds raw features.\n"
             "The checkpoints carry no threshold: without --threshold nothing is flagged (threshold inf)\n"
             "until you set one, e.g. from the scores of known-good parts.",
             "  mafr convert reference checkpoints/ detector_bagel --category bagel --threshold 3.2", [common])
    q.add_argument("src_dir", metavar="SRC_DIR", help="folder with the three .pth files (or its <C> subfolder)")
    q.add_argument("dst_dir", metavar="DST_DIR", help="where the detector is saved")
    q.add_argument("--category", required=True, metavar="C", help="category name, as in the file names")
    q.add_argument("--config", metavar="CONFIG.json", help="detector config (default: MAFRConfig(preset='reference'))")
    q.add_argument("--threshold", type=float, metavar="T", help="decision threshold on the image score (default: none, inf)")
    q.add_argument("--tag", metavar="<E>ep_<B>bs", help="which training, when several of one category are present")
    q.set_defaults(func=_cmd_convert_reference, preset=None)

    p = _sub(subs, "download", "fetch published extractor weights ahead of first use",
             "Fetch published weights now rather than on first use (air-gapped machines: run it where\n"
             "there is network and copy the folder; internal mirrors: --url).",
             "  mafr download pointmae\n"
             "  mafr download pointmae --url https://mirror.example/pretrain.pth --cache-dir /opt/mafr", [common])
    dl = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = _sub(dl, "pointmae", "Point-MAE's ShapeNet pre-training checkpoint (3D extractor of the paper preset)",
             "Download Point-MAE's pretrain.pth, check its SHA-256, convert it to safetensors and keep only\n"
             "the converted encoder, in CACHE/pointmae (CACHE: --cache-dir, else $MAFR_POINTMAE_WEIGHTS as\n"
             "the folder itself, else $MAFR_CACHE/pointmae, else ~/.cache/mafr/pointmae). A wrong hash or a\n"
             "failed download leaves nothing behind. Prints the converted folder as the last line.",
             "  mafr download pointmae\n"
             "  mafr download pointmae --url http://mirror.internal/pretrain.pth --cache-dir /opt/mafr", [common])
    q.add_argument("--url", metavar="URL", help="where to download pretrain.pth from (default: the Point-MAE GitHub release)")
    q.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the file (default: the published checkpoint's)")
    q.add_argument("--cache-dir", metavar="DIR", help="cache folder; the encoder goes to DIR/pointmae")
    q.set_defaults(func=_cmd_download_pointmae)

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

    p = _sub(subs, "info", "show what a saved detector contains",
             "Show a saved detector: configuration (preset, extractors and where their weights come\n"
             "from, grid, CBAM, fusion), fit (parts, calibration, threshold), metrics, files with sizes\n"
             "and the model card.",
             "  mafr info detector\n  mafr info hf-user/mafr-puck --json", [common])
    p.add_argument("detector", metavar="DETECTOR_DIR_OR_REPO")
    p.set_defaults(func=_cmd_info)
    return parser


def _error_message(err: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        text = "invalid config: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in err.errors()
        )
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())  # one line, whatever the exception's formatting


def _cli_threads(args: argparse.Namespace):
    """torch's thread count for a computing command (restored after it, for callers of main())."""
    import contextlib

    if not hasattr(args, "threads"):
        return contextlib.nullcontext()
    from .runtime import check_threads, default_cli_threads, num_threads

    return num_threads(default_cli_threads() if args.threads is None else check_threads(args.threads))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``mafr`` and ``python -m mafr``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Out(args.quiet, args.json)
    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from .detector import NotFittedError
    from .extractors.rgb import WeightsUnavailableError

    try:
        with _cli_threads(args):
            return args.func(args, out)
    except (ValueError, TypeError, OSError, NotFittedError, WeightsUnavailableError) as err:
        if os.environ.get("MAFR_DEBUG") == "1":
            raise
        print(f"mafr: error: {_error_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mafr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # fail closed: anything unforeseen is an error, not a verdict
        if os.environ.get("MAFR_DEBUG") == "1":
            raise
        print(f"mafr: error: {type(err).__name__}: {_error_message(err)} (MAFR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
