"""What every ``mafr`` command shares: output, exit codes, finding parts on disk, configs and
the common options."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

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
        from ..datasets import MVTec3D

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
    from ..config import MAFRConfig

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


def _error_message(err: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        text = "invalid config: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in err.errors()
        )
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())  # one line, whatever the exception's formatting
