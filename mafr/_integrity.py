"""Fail-closed checks: verifying a saved detector, writing one atomically, and judging whether a
part can be judged at all. The rules are documented in docs/api.md ("Errors", "Saved detectors").
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from .errors import CorruptModelError, DegenerateInputWarning, InvalidInputError, UntrustedConfigError

#: Key of ``config.json`` that records ``{file name: sha256}`` of the files a save wrote.
CHECKSUMS_KEY = "checksums"

# ----------------------------------------------------------------------------- allow-list
#: timm models a loaded config may name without ``trust_config=True``.
ALLOWED_TIMM_MODELS = frozenset(
    {
        "vit_base_patch8_224.dino",
        "vit_base_patch16_224.dino",
        "vit_small_patch8_224.dino",
        "vit_small_patch16_224.dino",
    }
)
#: ``timm.create_model`` keywords a loaded config may set: architecture sizes only, never a
#: location (``pretrained_cfg_overlay``, ``checkpoint_path``, ``cache_dir`` ... can point at files).
ALLOWED_TIMM_KWARGS = frozenset(
    {"embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "img_size", "qkv_bias", "class_token", "reg_tokens"}
)
#: Extractor weight sources a loaded config may name; files saved alongside the detector
#: (``include_extractors=True``) are set by the loader itself after their checksum matched.
ALLOWED_WEIGHTS = frozenset({None, "default", "random"})


def check_allowed(config, where: str) -> None:
    """Refuse a loaded config that reaches outside the model (see :data:`ALLOWED_TIMM_MODELS`)."""
    problems = []
    rgb, pts = config.rgb, config.points
    if rgb.kind == "timm" and rgb.model_name not in ALLOWED_TIMM_MODELS:
        problems.append(f"rgb.model_name {rgb.model_name!r} (known: {', '.join(sorted(ALLOWED_TIMM_MODELS))})")
    for key, value in rgb.timm_kwargs.items():
        if key not in ALLOWED_TIMM_KWARGS:
            problems.append(f"rgb.timm_kwargs[{key!r}] (known: {', '.join(sorted(ALLOWED_TIMM_KWARGS))})")
        elif not isinstance(value, (bool, int, float)) and not (
            isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
        ):
            problems.append(f"rgb.timm_kwargs[{key!r}] = {value!r} (numbers only)")
    for name, value in (("rgb.weights", rgb.weights), ("points.weights", pts.weights)):
        if value not in ALLOWED_WEIGHTS:
            problems.append(f"{name} = {value!r} (a loaded config may only say null, 'default' or 'random')")
    if problems:
        raise UntrustedConfigError(
            f"{where}: the config asks for what mafr does not allow from a shared detector: "
            + "; ".join(problems)
            + ". Load it with trust_config=True (CLI: --trust-config) only if you trust its author.",
            path=where,
        )


# ----------------------------------------------------------------------------- checksums and atomic files
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temp_name(final: Path) -> Path:
    """A unique hidden name next to ``final`` (same directory, so ``os.replace`` is atomic)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_temp(final: Path, write: Callable[[Path], None]) -> Path:
    """Write with ``write(tmp)`` to a temporary name next to ``final``, flush it to disk, and
    return the temporary path; the caller renames it (:func:`commit`)."""
    tmp = temp_name(final)
    try:
        write(tmp)
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
    except BaseException:
        remove(tmp)
        raise
    return tmp


def remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` (a directory replaces a directory)."""
    if tmp.is_dir() and final.is_dir():
        old = temp_name(final)
        os.replace(final, old)
        os.replace(tmp, final)
        remove(old)
    else:
        os.replace(tmp, final)


def verify_checksums(directory: Path, recorded: Any, where: str) -> set[str]:
    """Check every file named in ``config.json``'s checksums; returns the names checked."""
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
        raise CorruptModelError(f"{where}: config.json '{CHECKSUMS_KEY}' must map file names to sha256 strings", path=where)
    root = directory.resolve()
    for name, digest in recorded.items():
        path = (directory / name).resolve()
        if root not in path.parents:
            raise CorruptModelError(f"{where}: config.json names a file outside the detector: {name!r}", path=where)
        if not path.is_file():
            from .errors import ModelNotFoundError

            raise ModelNotFoundError(f"{directory / name}: listed in config.json but missing; the detector is incomplete", path=path)
        if sha256(path) != digest:
            raise CorruptModelError(
                f"{directory / name}: checksum does not match the one config.json records; the file was changed, "
                "corrupted or left from an interrupted save. Save or download the detector again",
                path=path,
            )
    return set(recorded)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale_temps(directory: Path, names) -> list[Path]:
    """Temporary files left by saves that were killed (their process no longer exists)."""
    out = []
    for name in names:
        for tmp in directory.glob(f".{name}.tmp-*"):
            try:
                pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                out.append(tmp)
    return out


def save_files(
    directory: Path,
    writers: Mapping[str, Callable[[Path], Any]],
    config_data: dict,
    *,
    config_name: str,
    card: Callable[[], str],
    owned: tuple[str, ...],
) -> None:
    """Write one consistent detector: every file to a temporary name in ``directory`` first,
    checksums of them into ``config_data``, then rename; ``config.json`` last, so a save killed
    at any point leaves either the previous detector or a checksum mismatch, never a mix that
    loads. Files of ``owned`` that this save does not write (extractor weights of an earlier
    ``include_extractors=True`` save) are removed afterwards."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        checksums: dict[str, str] = {}
        for name, write in writers.items():
            tmp = temps[name] = write_temp(directory / name, write)
            if tmp.is_dir():
                for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                    checksums[f"{name}/{f.relative_to(tmp).as_posix()}"] = sha256(f)
            else:
                checksums[name] = sha256(tmp)
        data = {**config_data, CHECKSUMS_KEY: checksums}
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=True)
        temps["README.md"] = write_temp(directory / "README.md", lambda p: p.write_text(card(), encoding="utf-8"))
        temps[config_name] = write_temp(directory / config_name, lambda p: p.write_text(text, encoding="utf-8"))
        for name in [n for n in temps if n != config_name] + [config_name]:
            commit(temps.pop(name), directory / name)
    finally:
        for tmp in temps.values():
            remove(tmp)
    for name in owned:
        if name not in writers and name != "README.md":
            remove(directory / name)
    for tmp in _stale_temps(directory, (*owned, config_name)):
        remove(tmp)


#: Keys of config.json that describe the fit rather than define the detector.
_NOT_CONFIG = ("mafr_version", "fit", "metrics", CHECKSUMS_KEY)
#: safetensors metadata key holding :func:`config_digest` of the config saved with the weights.
CONFIG_DIGEST_KEY = "mafr_config_sha256"


def config_digest(data: Mapping[str, Any]) -> str:
    """sha256 of the defining part of ``config.json`` as written (so fields added by a later
    mafr do not change it). Stored in the weights' metadata: a config.json edited or damaged after
    the save no longer matches its weights."""
    import json

    body = {k: v for k, v in data.items() if k not in _NOT_CONFIG}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def check_config_digest(weights_path: Path, raw: Mapping[str, Any]) -> None:
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as f:
        recorded = (f.metadata() or {}).get(CONFIG_DIGEST_KEY)
    if recorded is not None and recorded != config_digest(raw):
        raise CorruptModelError(
            f"{weights_path.parent / 'config.json'} does not match the config {weights_path.name} was saved with; "
            "it was edited or damaged after the save (a changed setting would change every score)",
            path=weights_path.parent / "config.json",
        )


def read_config(directory: Path, config_name: str, where: str) -> dict:
    """``config.json`` as a dict, or a :class:`CorruptModelError` saying what is wrong with it."""
    import json

    from .errors import ModelNotFoundError

    path = directory / config_name
    if not path.is_file():
        raise ModelNotFoundError(
            f"{where}: no {config_name} in {directory}; expected a directory written by MAFRDetector.save_pretrained",
            path=path,
        )
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptModelError(f"{path} is not valid JSON ({err}); the file is damaged or not a mafr config", path=path) from err
    if not isinstance(raw, dict):
        raise CorruptModelError(f"{path} must hold a JSON object (a mafr config), got a JSON {type(raw).__name__}", path=path)
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptModelError(f"{path}: 'version' must be a format version number >= 1, got {version!r}", path=path)
    for key in ("fit", "metrics"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise CorruptModelError(f"{path}: {key!r} must be a JSON object, got {type(raw[key]).__name__}", path=path)
    return raw


def load_tensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from .errors import ModelNotFoundError

    if not path.is_file():
        raise ModelNotFoundError(f"{where}: no {path.name} in {path.parent}; the fitted weights are missing", path=path)
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, OSError...: the library's types vary by version
        text = " ".join(str(err).split()) or type(err).__name__
        raise CorruptModelError(
            f"{path} is not a readable safetensors file (truncated, overwritten or not a mafr detector): {text}", path=path
        ) from err


# ----------------------------------------------------------------------------- tensors
def verify_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Every floating tensor finite (``threshold`` may be +inf: "none set"); statistics 1-D,
    paired and positive; a single, non-NaN threshold."""
    for key, t in tensors.items():
        if key == "threshold":
            continue
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CorruptModelError(f"{where}: tensor {key!r} holds {bad} NaN/inf value(s) of {t.numel()}", path=where)
    stats = {k[len("stats."):]: v for k, v in tensors.items() if k.startswith("stats.")}
    missing = sorted({"rgb_mean", "rgb_std", "xyz_mean", "xyz_std"} - set(stats))
    if missing or "threshold" not in tensors or not any(k.startswith("autoencoder.") for k in tensors):
        what = [f"stats.{m}" for m in missing] + (["threshold"] if "threshold" not in tensors else [])
        what += [] if any(k.startswith("autoencoder.") for k in tensors) else ["autoencoder.*"]
        raise CorruptModelError(f"{where}: not a complete mafr detector checkpoint (missing {', '.join(what)})", path=where)
    for mod in ("rgb", "xyz"):
        mean, std = stats[f"{mod}_mean"], stats[f"{mod}_std"]
        for name, t in ((f"{mod}_mean", mean), (f"{mod}_std", std)):
            if not t.is_floating_point() or t.ndim != 1 or t.numel() == 0:
                raise CorruptModelError(
                    f"{where}: stats.{name} must be a non-empty 1-D float tensor, got {tuple(t.shape)} {t.dtype}", path=where
                )
        if mean.shape != std.shape:
            raise CorruptModelError(
                f"{where}: stats.{mod}_mean has {mean.numel()} channels but stats.{mod}_std {std.numel()}", path=where
            )
        if not bool((std > 0).all()):
            raise CorruptModelError(
                f"{where}: stats.{mod}_std has {int((std <= 0).sum())} non-positive value(s); a standard deviation "
                "must be > 0 (dividing by it would make every score meaningless)",
                path=where,
            )
    t = tensors["threshold"]
    if not t.is_floating_point() or t.numel() != 1:
        raise CorruptModelError(f"{where}: threshold must be one float, got {tuple(t.shape)} {t.dtype}", path=where)
    value = float(t.reshape(-1)[0])
    if math.isnan(value) or value == -math.inf:
        raise CorruptModelError(f"{where}: the stored threshold is {value}; every part would be judged the same", path=where)


def check_dims(tensors: Mapping[str, torch.Tensor], dims: tuple[Optional[int], Optional[int]], where: str) -> None:
    """Statistic widths against the channels the config's extractors produce (``None``: unknown)."""
    for mod, want in zip(("rgb", "xyz"), dims):
        have = tensors[f"stats.{mod}_mean"].numel()
        if want is not None and have != want:
            raise CorruptModelError(
                f"{where}: stats.{mod}_mean has {have} channels but the config's {mod} extractor produces {want}; "
                "the weights do not belong to this config",
                path=where,
            )


def check_module_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with dtype checks and a :class:`CorruptModelError`."""
    own = module.state_dict()
    for key, t in state.items():
        if key in own and own[key].dtype != t.dtype:
            raise CorruptModelError(
                f"{where}: tensor 'autoencoder.{key}' has dtype {t.dtype}, expected {own[key].dtype}", path=where
            )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        text = " ".join(str(err).split())
        raise CorruptModelError(f"{where}: the autoencoder weights do not fit the config: {text}", path=where) from err


# ----------------------------------------------------------------------------- inputs and results
#: Below this many pixels per side a part cannot be judged; below SMALL_SIDE it is flagged.
MIN_SIDE, SMALL_SIDE = 4, 32
#: Fewer valid 3D pixels than this at the network's input cannot be judged (one 3 x 3 patch).
MIN_VALID_PIXELS = 9
#: Valid 3D share of the network input below which a result is flagged ``little_3d``.
LITTLE_3D_FRACTION = 0.02
#: An RGB image whose channels span at most this many grey levels has no image content.
UNIFORM_LEVELS = 2


def judge_input(rgb: np.ndarray, valid_network: torch.Tensor, image: bool = True) -> list[str]:
    """Raise :class:`InvalidInputError` for a part that cannot be judged; return flags (and warn)
    for one that can but is suspicious. ``image=False``: the part is judged on 3D alone and
    ``rgb`` is only a rendering of it, so it is not checked as a photograph."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidInputError(
            f"the image is {h} x {w} pixels: too small to judge (at least {MIN_SIDE} per side; {SMALL_SIDE}+ recommended)"
        )
    # Per channel plane: a reduction over the two leading axes at once is 20x slower.
    lo = np.array([rgb[..., c].min() for c in range(rgb.shape[-1])])
    hi = np.array([rgb[..., c].max() for c in range(rgb.shape[-1])])
    if image and int((hi.astype(int) - lo).max()) <= UNIFORM_LEVELS:
        raise InvalidInputError(
            f"the RGB image is uniform (every pixel about {tuple(int(v) for v in lo)}): no image content to judge; "
            "camera failure, lens cap or exposure?"
        )
    n_valid = int(valid_network.sum())
    size = valid_network.shape[-1]
    if n_valid < MIN_VALID_PIXELS:
        raise InvalidInputError(
            f"only {n_valid} valid 3D pixel(s) remain at the network's {size} x {size} input (at least "
            f"{MIN_VALID_PIXELS} needed): the part covers too little of the image, or the scan is empty"
        )
    flags = []
    if min(h, w) < SMALL_SIDE:
        flags.append("small_image")
    if n_valid < LITTLE_3D_FRACTION * valid_network.numel():
        flags.append("little_3d")
    if flags:
        warnings.warn(
            f"mafr: judged, but the input is suspicious ({', '.join(flags)}): image {h} x {w}, "
            f"{n_valid} valid 3D pixels of {size * size} at the network's input; see result.flags",
            DegenerateInputWarning,
            stacklevel=4,
        )
    return flags


def check_result(maps: np.ndarray, score: float, threshold: float, model_tensors: Callable[[], Mapping[str, torch.Tensor]]) -> None:
    """A result is returned only if every value is finite and the threshold can decide.

    ``model_tensors`` is called only on failure, to tell a corrupt detector from an input whose
    values overflow the computation."""
    if math.isnan(threshold) or threshold == -math.inf:
        raise CorruptModelError(f"the detector's threshold is {threshold}; it cannot decide")
    if math.isfinite(score) and np.isfinite(maps).all():
        return
    bad = int((~np.isfinite(maps)).sum())
    what = f"a non-finite score ({score}) or {bad} non-finite map value(s)"
    try:
        verify_tensors(model_tensors(), "the detector in memory")
    except CorruptModelError as err:
        raise CorruptModelError(f"the detector produced {what}: {err}") from err
    raise InvalidInputError(
        f"the detector produced {what} for this part although the detector itself is finite; the input's "
        "values are far outside what it was fitted on (units? metres expected for xyz)"
    )
