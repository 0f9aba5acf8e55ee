"""Convert published PyTorch checkpoints to mafr's format (``model.safetensors`` + ``config.json``).

Pickled ``.pth`` files are read once, here, with ``torch.load(..., weights_only=True)``, which
refuses arbitrary Python objects; everything mafr loads afterwards is safetensors.

Point-MAE (3D extractor)
    The official ShapeNet pre-training checkpoint is the release asset ``pretrain.pth`` of
    https://github.com/Pang-Yatian/Point-MAE (direct link:
    https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth). M3DM and the
    MAFR reference code link the same file and store it as ``checkpoints/pointmae_pretrain.pth``.
    Convert it with ``convert_pointmae_checkpoint("pointmae_pretrain.pth", "weights/pointmae")``
    and load the result with ``PointMAEEncoder.from_pretrained("weights/pointmae")``.

MAFR reference code (fusion autoencoder)
    The reference training script saves three state dicts per category,
    ``fusion_encoder_{category}_{E}ep_{B}bs.pth``, ``decoder_2D_...`` and ``decoder_3D_...``
    (in ``<checkpoint_folder>/<category>/``). ``convert_reference_checkpoints(folder, "weights/bagel",
    "bagel")`` (CLI: ``mafr convert reference FOLDER OUT --category bagel``) writes a
    :class:`~mafr.MAFRDetector` with the reference preset, identity feature normalisation and no
    threshold (``inf``) unless one is given.

Adding a converter: read the file with :func:`load_torch_checkpoint`, pick and rename the keys
(:func:`strip_prefix` helps), build the target module, ``load_weights`` and ``save_pretrained``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from mafr.extractors import feature_dims
from mafr.extractors.pointmae_checkpoint import (  # noqa: F401 (public here since 0.1)
    POINTMAE_URL,
    _describe,
    convert_pointmae_checkpoint,
    infer_pointmae_config,
    load_torch_checkpoint,
    pointmae_encoder_state_dict,
    strip_prefix,
)

__all__ = [
    "load_torch_checkpoint",
    "strip_prefix",
    "pointmae_encoder_state_dict",
    "infer_pointmae_config",
    "convert_pointmae_checkpoint",
    "find_reference_checkpoints",
    "reference_encoder_state",
    "reference_decoder_state",
    "convert_reference_checkpoints",
]

PathLike = Union[str, os.PathLike]

# ------------------------------------------------------------------------------------------
# MAFR reference code (fusion autoencoder)

#: File-name prefixes of the reference code's three checkpoints, by mafr submodule.
REFERENCE_PARTS = {"encoder": "fusion_encoder", "decoder_2d": "decoder_2D", "decoder_3d": "decoder_3D"}
_ENCODER_KEYS = ("input_fc", "layers.0", "output_fc", "layer_norm")
_DECODER_KEYS = ("input_fc", "layers.0", "layers.1", "output_fc", "norm")
_CA_FC = ("cbam.channel_attention.fc.0", "cbam.channel_attention.fc.2")
_SA_CONV = "cbam.spatial_attention.conv.weight"
THRESHOLD_NOTE = "no threshold in reference checkpoints; pass --threshold or refit"


def find_reference_checkpoints(src_dir: PathLike, category: str, tag: Optional[str] = None) -> dict[str, Path]:
    """The reference trio for ``category`` in ``src_dir`` (or ``src_dir/<category>``, the reference
    code's own layout), keyed ``encoder`` / ``decoder_2d`` / ``decoder_3d``.

    Names must be ``{fusion_encoder|decoder_2D|decoder_3D}_{category}_{E}ep_{B}bs.pth``; the
    ``{E}ep_{B}bs`` suffix (``tag``) is anchored so that ``cable`` never picks up ``cable_gland``.
    When several trainings of one category sit together, ``tag`` (e.g. ``"250ep_1bs"``) picks one.
    """
    src = Path(src_dir).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"reference checkpoint folder not found: {src}")
    folders = [src] + ([src / category] if (src / category).is_dir() else [])
    name = re.compile(
        rf"^(?P<part>{'|'.join(REFERENCE_PARTS.values())})_{re.escape(category)}_(?P<tag>\d+ep_\d+bs)\.pth$"
    )
    by_tag: dict[str, dict[str, Path]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.pth")):
            m = name.match(path.name)
            if m:
                part = next(k for k, v in REFERENCE_PARTS.items() if v == m["part"])
                by_tag.setdefault(m["tag"], {})[part] = path
    where = " or ".join(str(f) for f in folders)
    if tag is not None:
        by_tag = {t: parts for t, parts in by_tag.items() if t == tag}
    complete = sorted(t for t, parts in by_tag.items() if len(parts) == len(REFERENCE_PARTS))
    if len(complete) == 1:
        return by_tag[complete[0]]
    if len(complete) > 1:
        raise ValueError(
            f"several reference trainings of {category!r} in {where}: {', '.join(complete)}; pick one with "
            f"tag={complete[0]!r} (CLI: --tag {complete[0]})"
        )
    found = sorted(p.name for parts in by_tag.values() for p in parts.values())
    if found:
        missing = sorted(
            f"{REFERENCE_PARTS[k]}_{category}_{t}.pth" for t, parts in by_tag.items() for k in REFERENCE_PARTS if k not in parts
        )
        raise FileNotFoundError(
            f"incomplete reference checkpoints for {category!r} in {where}: missing {', '.join(missing)} "
            f"(found {', '.join(found)})"
        )
    others = sorted(p.name for f in folders for p in f.glob("*.pth"))
    raise FileNotFoundError(
        f"no reference checkpoints for {category!r} in {where}: expected fusion_encoder_{category}_<E>ep_<B>bs.pth, "
        f"decoder_2D_... and decoder_3D_... (.pth files present: {', '.join(others) if others else 'none'})"
    )


def _reference_state(path: Path, what: str) -> dict[str, Tensor]:
    state = load_torch_checkpoint(path, what=what)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors ({what}); found {_describe(state)}")
    # DataParallel saves keys under "module.".
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _check_keys(state: Mapping[str, Tensor], required: set[str], optional: set[str], path: Path, hint: str) -> None:
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - required - optional)
    if missing or unexpected:
        raise ValueError(
            f"{path.name} does not have the reference layout ({hint}): "
            f"missing keys {missing or 'none'}, unexpected keys {unexpected or 'none'}"
        )


def _linear_weight(weight: Tensor, key: str, path: Path) -> Tensor:
    """A Linear weight from a Linear ``(out, in)`` or a 1 x 1 Conv2d ``(out, in, 1, 1)`` weight:
    on a 1 x 1 map the two compute the same thing."""
    if weight.ndim == 4 and weight.shape[2:] == (1, 1):
        return weight.reshape(weight.shape[0], weight.shape[1])
    if weight.ndim != 2:
        raise ValueError(f"{path.name}: {key} has shape {tuple(weight.shape)}; expected (out, in) or (out, in, 1, 1)")
    return weight


def reference_encoder_state(state: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """mafr ``FusionEncoder`` weights from the reference ``fusion_encoder_*.pth`` state dict."""
    required = {f"{k}.{p}" for k in _ENCODER_KEYS for p in ("weight", "bias")}
    _check_keys(state, required, set(), path, "fusion encoder: " + ", ".join(_ENCODER_KEYS))
    return {k: state[k] for k in sorted(required)}


def reference_decoder_state(state: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """mafr ``Decoder`` weights from a reference ``decoder_{2D,3D}_*.pth`` state dict.

    CBAM's channel MLP may be stored as 1 x 1 convolutions without bias (reshaped, zero bias:
    exact); a missing ``skip`` means identity and is only accepted when latent and output widths
    match, as in the reference module.
    """
    required = {f"{k}.{p}" for k in _DECODER_KEYS for p in ("weight", "bias")}
    required |= {f"{k}.weight" for k in _CA_FC} | {_SA_CONV}
    optional = {f"{k}.bias" for k in _CA_FC} | {"skip.weight", "skip.bias"}
    _check_keys(state, required, optional, path, "decoder: " + ", ".join(_DECODER_KEYS + _CA_FC) + ", cbam.spatial_attention.conv, skip")
    out = {k: state[k] for k in required if not k.startswith("cbam.channel_attention")}
    for key in _CA_FC:
        weight = _linear_weight(state[f"{key}.weight"], f"{key}.weight", path)
        out[f"{key}.weight"] = weight
        out[f"{key}.bias"] = state.get(f"{key}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype)).reshape(-1)
    conv = state[_SA_CONV]
    if conv.ndim != 4 or conv.shape[:2] != (1, 2) or conv.shape[2] != conv.shape[3] or conv.shape[2] % 2 == 0:
        raise ValueError(f"{path.name}: {_SA_CONV} has shape {tuple(conv.shape)}; expected (1, 2, k, k) with k odd")
    latent, out_dim = state["input_fc.weight"].shape[1], state["output_fc.weight"].shape[0]
    if "skip.weight" in state:
        skip_w = state["skip.weight"]
        skip_b = state.get("skip.bias", torch.zeros(skip_w.shape[0], dtype=skip_w.dtype))
        if latent != out_dim:
            out["skip.weight"], out["skip.bias"] = skip_w, skip_b
        elif not (torch.equal(skip_w, torch.eye(out_dim, dtype=skip_w.dtype)) and not skip_b.any()):
            raise ValueError(
                f"{path.name}: the skip is a trained {out_dim} x {latent} Linear, but mafr's decoder uses an identity "
                "skip when latent and output widths match"
            )
    elif latent != out_dim:
        raise ValueError(f"{path.name} has no 'skip' weights, but latent ({latent}) and output ({out_dim}) widths differ")
    return out


def _cbam_reduction(channels: int, hidden: int, preferred: int) -> int:
    """A reduction ``r`` with ``max(1, channels // r) == hidden`` (mafr's rule), ``preferred`` first."""
    for r in (preferred, channels // max(hidden, 1)):
        if r >= 1 and max(1, channels // r) == hidden:
            return r
    raise ValueError(f"CBAM's channel MLP maps {channels} -> {hidden} channels; no integer reduction gives that")


def convert_reference_checkpoints(
    src_dir: PathLike,
    dst_dir: PathLike,
    category: str,
    *,
    config=None,
    threshold: Optional[float] = None,
    tag: Optional[str] = None,
) -> Path:
    """Turn the MAFR reference code's checkpoint trio for ``category`` into a saved
    :class:`~mafr.MAFRDetector` in ``dst_dir`` (``config.json``, ``model.safetensors``, model card).

    ``src_dir`` holds ``fusion_encoder_{category}_{E}ep_{B}bs.pth``, ``decoder_2D_...`` and
    ``decoder_3D_...`` (directly or under ``src_dir/<category>``; see
    :func:`find_reference_checkpoints`). The detector's config is ``MAFRConfig(preset="reference")``
    (point-wise CBAM, as the checkpoints were trained) unless ``config`` is given; the latent width
    and CBAM sizes are taken from the weights.

    The reference feeds raw features and stores no threshold, so the detector gets identity feature
    normalisation and ``threshold`` (default ``inf``: nothing is flagged until a threshold is set,
    e.g. ``mafr convert reference ... --threshold T`` or ``det.threshold_ = T`` then
    ``save_pretrained``).
    """
    from mafr import __version__
    from mafr.config import MAFRConfig
    from mafr.detector import MAFRDetector
    from mafr.model import FusionAutoencoder

    if threshold is not None and math.isnan(float(threshold)):
        raise ValueError("threshold must be a number, got NaN")
    paths = find_reference_checkpoints(src_dir, category, tag)
    states = {part: _reference_state(path, f"reference {REFERENCE_PARTS[part]} checkpoint") for part, path in paths.items()}
    encoder = reference_encoder_state(states["encoder"], paths["encoder"])
    decoders = {part: reference_decoder_state(states[part], paths[part]) for part in ("decoder_2d", "decoder_3d")}

    hidden, in_dim = encoder["input_fc.weight"].shape
    latent = encoder["output_fc.weight"].shape[0]
    rgb_dim = decoders["decoder_2d"]["output_fc.weight"].shape[0]
    xyz_dim = decoders["decoder_3d"]["output_fc.weight"].shape[0]
    if rgb_dim + xyz_dim != in_dim:
        raise ValueError(
            f"the decoders restore {rgb_dim} + {xyz_dim} channels but the encoder takes {in_dim}: "
            "these files do not belong to one model"
        )
    if hidden != in_dim // 2:
        raise ValueError(
            f"the encoder's hidden width is {hidden}; mafr's fusion encoder uses half its input ({in_dim // 2})"
        )
    for part, dec in decoders.items():
        if dec["input_fc.weight"].shape[1] != latent:
            raise ValueError(f"{paths[part].name} decodes a {dec['input_fc.weight'].shape[1]}-wide latent; the encoder's is {latent}")

    cfg = MAFRConfig(preset="reference") if config is None else config
    if not isinstance(cfg, MAFRConfig):
        raise TypeError(f"config must be a mafr.MAFRConfig, got {type(cfg).__name__}")
    want_rgb, want_xyz = feature_dims(cfg)
    if (want_rgb is not None and want_rgb != rgb_dim) or want_xyz != xyz_dim:
        raise ValueError(
            f"the checkpoints take {rgb_dim} RGB + {xyz_dim} 3D channels, but the config's extractors give "
            f"{want_rgb if want_rgb is not None else '?'} + {want_xyz}; pass a config whose extractors match"
        )
    reductions, kernels = set(), set()
    for dec in decoders.values():
        channels = dec["output_fc.weight"].shape[1]
        reductions.add(_cbam_reduction(channels, dec["cbam.channel_attention.fc.0.weight"].shape[0], cfg.model.cbam_reduction))
        kernels.add(int(dec[_SA_CONV].shape[-1]))
    if len(kernels) > 1:
        raise ValueError(f"the two decoders use different CBAM kernels {sorted(kernels)}; mafr shares one setting")
    # Both decoders must come out of one reduction under mafr's rule; prefer the config's.
    reduction = next((r for r in sorted(reductions) if all(
        max(1, d["output_fc.weight"].shape[1] // r) == d["cbam.channel_attention.fc.0.weight"].shape[0] for d in decoders.values()
    )), None)
    if reduction is None:
        raise ValueError(f"the two decoders' CBAM reductions differ ({sorted(reductions)}); mafr shares one setting")
    data = cfg.to_json_dict()
    # The reference decoders carry CBAM weights, whatever attention the given config names.
    data["model"].update(latent_dim=None if latent == hidden else int(latent), cbam_reduction=reduction, cbam_kernel=kernels.pop(),
                         attention="cbam")
    cfg = MAFRConfig.model_validate(data)
    if cfg.model.cbam != "pointwise":
        warnings.warn(
            "the reference code applies CBAM point-wise; with model.cbam='grid' the converted weights run a "
            "different network than they were trained in",
            stacklevel=2,
        )

    m = cfg.model
    autoencoder = FusionAutoencoder(rgb_dim, xyz_dim, m.latent_dim, m.dropout, m.cbam, m.cbam_reduction, m.cbam_kernel)
    state = {f"encoder.{k}": v for k, v in encoder.items()}
    for part, dec in decoders.items():
        state.update({f"{part}.{k}": v for k, v in dec.items()})
    try:
        autoencoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:  # shape mismatches inside one file, e.g. a LayerNorm of the wrong width
        raise ValueError(f"the reference weights do not fit mafr's fusion autoencoder: {err}") from err
    autoencoder.eval()

    det = MAFRDetector(cfg)
    det.autoencoder_ = autoencoder
    det.stats_ = {
        "rgb_mean": torch.zeros(rgb_dim),
        "rgb_std": torch.ones(rgb_dim),
        "xyz_mean": torch.zeros(xyz_dim),
        "xyz_std": torch.ones(xyz_dim),
    }
    det.threshold_ = math.inf if threshold is None else float(threshold)
    det.fit_info_ = {
        "converted_from": [paths[k].name for k in REFERENCE_PARTS],
        "category": category,
        "feature_normalisation": "identity (the reference feeds raw features)",
        "threshold_note": THRESHOLD_NOTE if threshold is None else "threshold given at conversion",
        "mafr_version": __version__,
    }
    dst = Path(dst_dir)
    det.save_pretrained(dst)
    return dst
