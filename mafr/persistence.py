"""Persistence: a fitted detector to files and back (docs/api.md, "Saved detectors").

The last stage of :class:`mafr.MAFRDetector` (docs/architecture.md), kept out of the model as
huggingface_hub's ``ModelHubMixin`` keeps it: ``config.json`` (the config, versioned, with the
fit history) and ``model.safetensors`` (every fitted tensor) in a directory or Hub repo. Saving
is atomic and refuses a detector that would not load back; loading verifies checksums, finite
values, shapes, statistics and calibration before anything is used, and never unpickles.
Configs saved before a field existed load with the value that was in effect then
(:func:`decode_config`), so a fitted autoencoder always sees the features it was trained on.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from . import __version__
from . import _integrity
from . import errors as _errors
from .config import CONFIG_VERSION, MAFRConfig
from .extractors import feature_dims, PointMAEEncoder, RGBExtractor
from .framing import Framing
from .model import FusionAutoencoder
from .replay import ReplayStore

WEIGHTS_NAME = "model.safetensors"
RGB_WEIGHTS_NAME = "rgb_extractor.safetensors"
POINT_WEIGHTS_DIR = "point_extractor"
CONFIG_NAME = "config.json"


def encode_config(config: MAFRConfig) -> dict:
    return config.to_json_dict()


def decode_config(data: Any) -> MAFRConfig:
    """A ``MAFRConfig`` from a saved ``config.json`` (what save adds is dropped), with the value
    each field had before it existed where the file does not name it."""
    if isinstance(data, MAFRConfig):
        return data
    data = {k: v for k, v in dict(data).items() if k not in ("mafr_version", "fit", "metrics", _integrity.CHECKSUMS_KEY)}
    # A config saved before a field existed gets the value that was in effect then, not the
    # preset's newer default: the fitted autoencoder must see the features it was trained on.
    if isinstance(data.get("rgb"), dict):  # a saved config (it has every section): before framing
        data.setdefault("framing", "image")
        data.setdefault("align", "none")  # judged as they lay
        data.setdefault("support", "keep")  # fitted on scans as given
    for section, field, before in (("points", "resize", "nearest"), ("rgb", "ring_radii", ()),
                                   ("rgb", "rarity_on_part", False), ("scoring", "channel_reduce_2d", "rms"),
                                   ("points", "deviation_peaks", False), ("scoring", "edge_cap", 3),
                                   ("scoring", "levels_parts", "held_out"), ("scoring", "level_quantile", 0.9),
                                   ("points", "deviation_peak_sigma", (3.0,)), ("points", "deviation_order", (2,)),
                                   ("scoring", "level_bins", ()), ("rgb", "ring_normal_weight", 0.0),
                                   ("train", "rotations", ())):
        part = data.get(section)
        if isinstance(part, dict) and field not in part:
            data[section] = {**part, field: before}
    return MAFRConfig.model_validate(data)


def as_config(config: Any) -> MAFRConfig:
    """A detector's config from what its constructor was given: ``None`` (the defaults), a
    :class:`~mafr.MAFRConfig`, or its JSON form as a dict."""
    if config is None:
        return MAFRConfig()
    if isinstance(config, dict):
        return decode_config(config)
    if not isinstance(config, MAFRConfig):
        raise TypeError(f"config must be a mafr.MAFRConfig, got {type(config).__name__}")
    return config


def _load_framing(tensors: dict[str, torch.Tensor], config: MAFRConfig, where: str) -> Framing:
    """The saved window side and axis; a detector that frames or turns parts cannot judge one
    without them (an empty ``framing.axis``: its fit parts had no clear long axis)."""
    side, axis = tensors.get("framing.side"), tensors.get("framing.axis")
    if config.framing == "part" and (side is None or side.numel() != 1 or not math.isfinite(float(side[0]))
                                     or not float(side[0]) > 0):
        found = "missing" if side is None else f"{side.tolist()}"
        raise _errors.CorruptModelError(
            f"{where}: the config frames parts (framing='part') but framing.side, the fitted window side, is "
            f"{found} (expected one positive number)",
            path=where,
        )
    if config.align == "axis" and (axis is None or axis.numel() > 1
                                   or (axis.numel() == 1 and not -90 <= float(axis[0]) < 90)):
        found = "missing" if axis is None else f"{axis.tolist()}"
        raise _errors.CorruptModelError(
            f"{where}: the config turns parts to a common axis (align='axis') but framing.axis is {found} "
            "(expected one angle in [-90, 90) degrees, or none when the fit parts had no clear long axis)",
            path=where,
        )
    return Framing(float(side[0]) if config.framing == "part" else None,
                   float(axis[0]) if config.align == "axis" and axis.numel() == 1 else None)


def check_edge_levels(cal: dict[str, torch.Tensor], rgb_dim: int, xyz_dim: int, where: str) -> None:
    """Calibrated fusion divides by these levels: a wrong shape or a non-positive level would
    score every part wrongly, so a file that holds one is corrupt (fail closed)."""
    e2, e3 = cal["edge_2d"], cal["edge_3d"]
    per_channel = e2.dim() == 2 and e3.dim() == 2 and e2.shape[1] == rgb_dim and e3.shape[1] == xyz_dim
    per_distance = e2.dim() == 1 and e3.dim() == 1  # detectors saved by mafr 0.2
    per_bin = (e2.dim() == 3 and e3.dim() == 3 and e2.shape[1:] == (e3.shape[1], rgb_dim) and e3.shape[2] == xyz_dim
               and e2.shape[1] >= 2)
    if not (per_channel or per_distance or per_bin) or e2.shape[0] != e3.shape[0] or e2.shape[0] < 1:
        raise _errors.CorruptModelError(
            f"{where}: calibration.edge_2d {tuple(e2.shape)} and calibration.edge_3d {tuple(e3.shape)} do not "
            f"match the features (expected (k, {rgb_dim}) and (k, {xyz_dim}), (k, b, {rgb_dim}) and (k, b, {xyz_dim}), "
            "or (k,) and (k,))",
            path=where,
        )
    if per_bin:  # each channel's bin edges: (channels, bins - 1), finite and ascending
        for name, dim in (("bins_2d", rgb_dim), ("bins_3d", xyz_dim)):
            edges = cal.get(name)
            if (edges is None or tuple(edges.shape) != (dim, e2.shape[1] - 1) or not bool(torch.isfinite(edges).all())
                    or not bool((edges[:, 1:] >= edges[:, :-1]).all())):
                shape = None if edges is None else tuple(edges.shape)
                raise _errors.CorruptModelError(
                    f"{where}: calibration.{name} is missing or not ascending finite bin edges of shape "
                    f"{(dim, e2.shape[1] - 1)} (got {shape})",
                    path=where,
                )
    elif "bins_2d" in cal or "bins_3d" in cal:
        raise _errors.CorruptModelError(f"{where}: calibration holds bin edges but its levels have no bins", path=where)
    for name in ("edge_2d", "edge_3d", "modality"):
        v = cal[name]
        if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
            raise _errors.CorruptModelError(
                f"{where}: calibration.{name} holds a non-finite or non-positive level", path=where
            )


def check_position_level(level: torch.Tensor, side: int, where: str) -> None:
    """Scores are divided by the level per position: one of the wrong size, or zero, negative or
    non-finite anywhere, would score every part wrongly (fail closed)."""
    if tuple(level.shape) != (side, side) or not bool(torch.isfinite(level).all()) or not bool((level > 0).all()):
        raise _errors.CorruptModelError(
            f"{where}: calibration.position must be positive finite levels of shape {(side, side)} "
            f"(the network's input side), got shape {tuple(level.shape)}",
            path=where,
        )


def state_tensors(det) -> dict[str, torch.Tensor]:
    """Everything ``det`` learned, as named tensors (what ``model.safetensors`` holds)."""
    tensors = {f"autoencoder.{k}": v.detach().cpu().contiguous() for k, v in det.autoencoder_.state_dict().items()}
    tensors.update({f"stats.{k}": v.cpu().contiguous() for k, v in det.stats_.items()})
    tensors["threshold"] = torch.tensor([det.threshold_], dtype=torch.float64)
    tensors.update({f"calibration.{k}": v.detach().cpu().contiguous() for k, v in det.calibration_.items()})
    framing = det.framing_ if det.framing_ is not None else Framing()
    if framing.side is not None:
        tensors["framing.side"] = torch.tensor([framing.side], dtype=torch.float64)
    if det.config.align == "axis":
        tensors["framing.axis"] = torch.tensor([] if framing.axis is None else [framing.axis], dtype=torch.float64)
    if det.replay_ is not None:
        tensors.update(det.replay_.to_tensors())
    return tensors


def save(det, save_directory: Path, include_extractors: bool = False) -> None:
    """Write ``det`` to ``save_directory``: ``config.json``, ``model.safetensors``, the model card
    and, with ``include_extractors``, the extractors' weights (atomically; docs/api.md)."""
    from safetensors.torch import save_file

    tensors = det.state_tensors()
    # Never write a detector that would not load back (NaN weights, a NaN threshold...).
    _integrity.verify_tensors(tensors, "the detector being saved")
    config_json = config_json_of(det)
    meta = {"format": "pt", "mafr_format_version": str(CONFIG_VERSION),
            _integrity.CONFIG_DIGEST_KEY: _integrity.config_digest(config_json)}
    writers = {WEIGHTS_NAME: lambda p: save_file(tensors, str(p), metadata=meta)}
    if include_extractors:
        if det.config.modalities != "xyz" and isinstance(det.rgb_extractor, RGBExtractor):
            state = {k: v.detach().cpu().contiguous() for k, v in det.rgb_extractor.vit.state_dict().items()}
            writers[RGB_WEIGHTS_NAME] = lambda p: save_file(state, str(p))
        if det.config.modalities != "rgb" and isinstance(det.point_extractor, PointMAEEncoder):
            writers[POINT_WEIGHTS_DIR] = det.point_extractor.save_pretrained
    _integrity.save_files(
        Path(save_directory), writers, config_json, config_name=CONFIG_NAME,
        card=lambda: str(det.generate_model_card()),
        owned=(WEIGHTS_NAME, RGB_WEIGHTS_NAME, POINT_WEIGHTS_DIR, "README.md"),
    )


def config_json_of(det) -> dict[str, Any]:
    """What ``config.json`` holds: the config, the mafr version, the fit history and metrics."""
    data = det.config.to_json_dict()
    data["mafr_version"] = __version__
    data["fit"] = dict(det.fit_info_)
    if det.metrics_:
        data["metrics"] = dict(det.metrics_)
    return data


def model_id(ref: Any) -> str:
    """A detector directory's path, or a Hub repo id (``name`` or ``owner/name``), from what a
    user gave ``from_pretrained``; a path that does not exist is refused here, not sent to the Hub."""
    if not isinstance(ref, (str, os.PathLike)):
        raise _errors.InputTypeError(f"from_pretrained expects a directory or Hub repo id, got {type(ref).__name__}")
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise _errors.InvalidInputError(f"{path} is a file; expected a detector directory (config.json + model.safetensors) or a Hub repo id")
    # Hub repo ids are "name" or "owner/name": anything else is meant as a local path.
    if not path.exists() and (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text or isinstance(ref, Path)):
        raise _errors.ModelNotFoundError(f"detector directory not found: {path}", path=path)
    return str(path) if path.is_dir() else text


def load(cls, model_id: str, *, revision: Optional[str] = None, cache_dir=None, force_download: bool = False,
         local_files_only: bool = False, token=None, trust_config: bool = False,
         device: Union[str, torch.device] = "auto", precision: str = "fp32", threads: Optional[int] = None):
    """A detector of class ``cls`` from a directory or a Hub repo id, verified before use."""
    root = Path(model_id)
    if root.is_dir():
        directory = root
    else:
        from huggingface_hub import snapshot_download

        try:
            directory = Path(
                snapshot_download(
                    repo_id=model_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    local_files_only=local_files_only,
                    token=token,
                )
            )
        except (OSError, ValueError) as err:
            raise _errors.ModelNotFoundError(
                f"{model_id!r} is not a local directory, and as a Hugging Face repo id it could not be fetched: "
                + " ".join(str(err).split())
            ) from err
    weights_path = directory / WEIGHTS_NAME
    where = str(directory)
    raw = _integrity.read_config(directory, CONFIG_NAME, where)
    try:
        config = decode_config(raw)
    except ValueError as err:  # pydantic's ValidationError included
        msg = " ".join(str(err).split())
        raise _errors.CorruptModelError(f"{directory / CONFIG_NAME} is not a valid mafr config: {msg}", path=directory / CONFIG_NAME) from err
    if not trust_config:
        _integrity.check_allowed(config, where)
    if _integrity.CHECKSUMS_KEY in raw:
        listed = _integrity.verify_checksums(directory, raw[_integrity.CHECKSUMS_KEY], where)
        if WEIGHTS_NAME not in listed:
            raise _errors.CorruptModelError(f"{where}: config.json records no checksum of {WEIGHTS_NAME}", path=weights_path)
    else:
        # Saved by mafr 0.1.0 or by hand: nothing to verify the bytes against.
        listed = {WEIGHTS_NAME, RGB_WEIGHTS_NAME, f"{POINT_WEIGHTS_DIR}/{WEIGHTS_NAME}"}
        warnings.warn(f"mafr: {where} records no checksums (saved by an older mafr); its files are checked "
                      "for completeness and finite values only", _errors.DegenerateInputWarning, stacklevel=4)
    # Extractor weights saved alongside (include_extractors=True) take precedence, but only
    # the ones this save wrote: files left from an earlier save are not listed.
    if RGB_WEIGHTS_NAME in listed and (directory / RGB_WEIGHTS_NAME).is_file():
        config.rgb.weights = str(directory / RGB_WEIGHTS_NAME)
    if f"{POINT_WEIGHTS_DIR}/{WEIGHTS_NAME}" in listed and (directory / POINT_WEIGHTS_DIR / WEIGHTS_NAME).is_file():
        config.points.weights = str(directory / POINT_WEIGHTS_DIR)
    det = cls(config, device=device, precision=precision, threads=threads)
    det.fit_info_ = dict(raw.get("fit") or {})
    det.metrics_ = dict(raw.get("metrics") or {})
    tensors = _integrity.load_tensors(weights_path, where)
    _integrity.verify_tensors(tensors, str(weights_path))
    _integrity.check_config_digest(weights_path, raw)
    if not trust_config:  # the dims need timm's model table, reached only for allowed names
        _integrity.check_dims(tensors, feature_dims(config), str(weights_path))
    ae_state = {k[len("autoencoder.") :]: v for k, v in tensors.items() if k.startswith("autoencoder.")}
    det.stats_ = {k[len("stats.") :]: v for k, v in tensors.items() if k.startswith("stats.")}
    missing_stats = {"rgb_mean", "rgb_std", "xyz_mean", "xyz_std"} - set(det.stats_)
    if missing_stats or "threshold" not in tensors or not ae_state:
        raise ValueError(f"{weights_path} is not a mafr detector checkpoint (missing {sorted(missing_stats) or 'weights'})")
    rgb_dim = det.stats_["rgb_mean"].shape[0]
    xyz_dim = det.stats_["xyz_mean"].shape[0]
    det.autoencoder_ = FusionAutoencoder.from_config(rgb_dim, xyz_dim, det.config.model)
    _integrity.check_module_state(det.autoencoder_, ae_state, str(weights_path))
    det.autoencoder_.eval()
    det.threshold_ = float(tensors["threshold"][0])
    det.replay_ = ReplayStore.from_tensors(tensors, str(weights_path))
    det.calibration_ = {k[len("calibration.") :]: v for k, v in tensors.items() if k.startswith("calibration.")}
    if det.config.scoring.fusion == "calibrated":
        if not {"edge_2d", "edge_3d", "modality"} <= set(det.calibration_):
            raise _errors.CorruptModelError(
                f"{weights_path}: the config asks for calibrated fusion but the calibration tensors "
                "(calibration.edge_2d, calibration.edge_3d, calibration.modality) are missing",
                path=str(weights_path),
            )
        check_edge_levels(det.calibration_, rgb_dim, xyz_dim, str(weights_path))
    if "position" in det.calibration_:
        check_position_level(det.calibration_["position"], det.config.rgb.image_size, str(weights_path))
    det.framing_ = _load_framing(tensors, det.config, str(weights_path))
    return det.to(det.device)  # loaded on the CPU; a saved detector names no device

