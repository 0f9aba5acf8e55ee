"""Reader for the Eyecandies dataset (Bonfiglioli et al., ACCV 2022) as distributed.

On-disk layout (one Pipelime "underfolder" per split; project page
https://eyecan-ai.github.io/eyecandies/, "Dataset folder format")::

    root/<Category>/<split>/data/<id>_<item>.<ext>

with ``<Category>`` one of :data:`EYECANDIES_CATEGORIES` (the names without spaces, as the
official ``ec-get`` downloader writes them), ``<split>`` one of ``train``, ``val``,
``test_public``, ``test_private`` (no ground truth), zero-padded numeric ids, and per sample:

- ``image_0.png`` .. ``image_5.png``: RGB under six lightings (0: all spotlights, 1: bottom
  spot, 2: right, 3: top, 4: left, 5: all spotlights + camera light);
- ``depth.png``: 16-bit depth normalised to [0, 65535], with the range in
  ``info_depth.yaml`` (``normalization: {min, max}``, metres):
  ``depth = png / 65535 * (max - min) + min`` (eyecan-ai/eyecandies,
  ``eyecandies/stages/depth.py``, ``DepthToMetersStage``);
- ``normals.png``, ``pose.txt`` (camera pose), ``object_params.yaml``;
- ``mask.png`` (all defect types) and ``bumps_mask.png``, ``colors_mask.png``,
  ``dents_mask.png``, ``normals_mask.png``; ``metadata.yaml`` with ``anomalous: 0/1``.

The project page writes the YAML suffix as ``.yml``, the released files and every loader we found
use ``.yaml``; both are accepted.

The depth is the z-depth of a pinhole camera with focal length 711.11 px and principal point at
the image centre (W/2, H/2) for the 512 x 512 renders (``DepthToPCStage`` in
eyecan-ai/eyecandies ``eyecandies/stages/depth.py``, and ``FOCAL_LENGTH = 711.11`` in M3DM's
``preprocess_eyecandies.py``); 711.11 = 50 mm / 36 mm * 512 px, Blender's default lens.
The whole frame is measured (the conveyor belt is background, not zeros), so background removal is
up to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from ..types import DepthMap, Sample

PathLike = Union[str, Path]

EYECANDIES_CATEGORIES: tuple[str, ...] = (
    "CandyCane",
    "ChocolateCookie",
    "ChocolatePraline",
    "Confetto",
    "GummyBear",
    "HazelnutTruffle",
    "LicoriceSandwich",
    "Lollipop",
    "Marshmallow",
    "PeppermintCandy",
)
EYECANDIES_SPLITS = ("train", "val", "test_public", "test_private")
_SPLIT_ALIASES = {"validation": "val", "test": "test_public"}
#: Focal length in pixels of the 512 x 512 renders (see the module docstring for the source).
FOCAL_LENGTH = 711.11
_RENDER_SIZE = 512
#: Per-type ground-truth masks shipped with each test sample.
DEFECT_TYPES = ("bumps", "colors", "dents", "normals")
_N_LIGHTS = 6
_LAYOUT = "expected root/<Category>/<train|val|test_public|test_private>/data/<id>_depth.png, ..."


def eyecandies_intrinsics(width: int = _RENDER_SIZE, height: int = _RENDER_SIZE) -> np.ndarray:
    """Pinhole matrix of the Eyecandies camera for a ``width`` x ``height`` image.

    The focal length scales with the width (711.11 px at the native 512), so resized copies
    keep the right field of view.
    """
    f = FOCAL_LENGTH * width / _RENDER_SIZE
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# A tiny YAML subset: nested block mappings, flow mappings ``{a: 1}``, scalars. Enough for
# info_depth.yaml and metadata.yaml without a PyYAML dependency.

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[^:#\s][^:#]*?)\s*:(?:\s+(?P<value>.*?))?\s*$")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("null", "~", ""):
        return None
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if _FLOAT.match(text) or low in (".inf", "-.inf", "+.inf", ".nan"):
        return float(low.replace(".inf", "inf").replace(".nan", "nan"))
    if text.startswith("{") and text.endswith("}"):
        out = {}
        for part in filter(None, (p.strip() for p in text[1:-1].split(","))):
            key, _, value = part.partition(":")
            out[_scalar(key)] = _scalar(value)
        return out
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(p) for p in text[1:-1].split(",") if p.strip()]
    return text


def parse_simple_yaml(text: str) -> dict[str, Any]:
    """Parse the small YAML files of Eyecandies (nested mappings of scalars) into a dict.

    Sequences in block style (``- item``) become lists of scalars; anything fancier is kept as
    a string rather than guessed at.
    """
    root: dict[str, Any] = {}
    stack: list[tuple[int, Any]] = [(-1, root)]  # (indent, container)
    last_key: Optional[tuple[dict, str, int]] = None  # where an empty value may open a block
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw) if "#" in raw else raw
        if not line.strip() or line.lstrip().startswith(("#", "---", "...")):
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if stripped.startswith("- ") or stripped == "-":
            # A block sequence may sit at its key's indent or deeper.
            if last_key is not None and last_key[2] <= indent and last_key[0].get(last_key[1]) == {}:
                while len(stack) > 1 and stack[-1][1] is not last_key[0]:
                    stack.pop()
                last_key[0][last_key[1]] = []
                stack.append((indent - 0.5, last_key[0][last_key[1]]))
                last_key = None
            container = stack[-1][1]
            if isinstance(container, list):
                container.append(_scalar(stripped[1:]))
            continue
        # Sequences hold scalars only, so a key line always closes them.
        while len(stack) > 1 and (indent <= stack[-1][0] or isinstance(stack[-1][1], list)):
            stack.pop()
        match = _KEY.match(line)
        container = stack[-1][1]
        if not match or not isinstance(container, dict):
            continue
        key = str(_scalar(match.group("key")))
        value = match.group("value")
        if value is None or value == "":
            container[key] = {}
            stack.append((indent, container[key]))
            last_key = (container, key, indent)
        else:
            container[key] = _scalar(value)
    return root


def read_simple_yaml(path: PathLike) -> dict[str, Any]:
    """:func:`parse_simple_yaml` on a file."""
    return parse_simple_yaml(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------


def load_depth_png(depth_path: PathLike, info_path: PathLike) -> np.ndarray:
    """Eyecandies depth in metres (float32 H x W) from the 16-bit PNG and its info YAML."""
    info = read_simple_yaml(info_path)
    norm = info.get("normalization")
    if not isinstance(norm, dict) or not all(isinstance(norm.get(k), (int, float)) for k in ("min", "max")):
        raise ValueError(
            f"{info_path}: expected 'normalization: {{min: <metres>, max: <metres>}}', got {info!r}"
        )
    with Image.open(depth_path) as img:
        raw = np.asarray(img)
    if raw.ndim != 2:
        raise ValueError(f"{depth_path}: expected a single-channel 16-bit depth PNG, got shape {raw.shape}")
    lo, hi = float(norm["min"]), float(norm["max"])
    return (raw.astype(np.float64) / 65535.0 * (hi - lo) + lo).astype(np.float32)


def _mask(path: Path) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    with Image.open(path) as img:
        arr = np.asarray(img)
    return arr.any(axis=-1) if arr.ndim == 3 else arr > 0


def _find(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Optional[Path]:
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


class Eyecandies(Sequence):
    """One split of one Eyecandies category, as a sequence of :class:`mafr.types.Sample`.

    Args:
        root: folder holding the category folders.
        category: e.g. ``"CandyCane"`` (case and spaces are ignored: ``"candy cane"`` works).
        split: ``"train"``, ``"val"``, ``"test_public"`` or ``"test_private"``
            (``"validation"`` and ``"test"`` are accepted as aliases of ``"val"`` and
            ``"test_public"``).
        lighting: which image becomes ``rgb``: an index 0-5 (a path, loaded by the detector) or
            ``"mean"`` (the uint8 average of the six lightings, loaded here). The default, 4
            (left spotlight), is the image M3DM's ``preprocess_eyecandies.py`` copies into its
            MVTec-style ``rgb`` folders, i.e. what the CFM/MAFR line of work evaluated on.

    Each Sample has ``xyz = DepthMap(depth in metres, intrinsics)``; ``label``, ``defect_type``
    (``"good"``, or the non-empty per-type masks joined by ``"+"``, e.g. ``"bumps+colors"``) and
    ``mask`` come from ``metadata.yaml`` and the masks, and are ``None`` where the split ships no
    ground truth (``test_private``). ``name`` is ``"<split>/<id>"``.
    """

    def __init__(self, root: PathLike, category: str, split: str = "train",
                 lighting: Union[int, str] = 4) -> None:
        split = _SPLIT_ALIASES.get(split, split)
        if split not in EYECANDIES_SPLITS:
            raise ValueError(
                f"split must be one of {EYECANDIES_SPLITS} (or 'validation'/'test'), got {split!r}"
            )
        if lighting != "mean" and not (
            isinstance(lighting, (int, np.integer)) and not isinstance(lighting, bool)
            and 0 <= lighting < _N_LIGHTS
        ):
            raise ValueError(f"lighting must be an integer 0-5 or 'mean', got {lighting!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Eyecandies root not found: {self.root} ({_LAYOUT})")
        self.category = self._resolve_category(category)
        self.split = split
        self.lighting = lighting if lighting == "mean" else int(lighting)
        split_dir = self.root / self.category / split
        folder = split_dir / "data"
        if not folder.is_dir():
            folder = split_dir  # a flattened copy without the Pipelime "data" level
        if not folder.is_dir():
            raise FileNotFoundError(f"split folder not found: {split_dir / 'data'} ({_LAYOUT})")
        ids = sorted(
            (m.group(1) for m in (re.match(r"^(\d+)_depth\.png$", p.name) for p in folder.iterdir()) if m),
            key=int,
        )
        if not ids:
            raise FileNotFoundError(f"no <id>_depth.png files in {folder} ({_LAYOUT})")
        self._folder = folder
        self._ids = ids

    def _resolve_category(self, category: str) -> str:
        if (self.root / category).is_dir():
            return category
        wanted = "".join(category.split()).lower()
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and "".join(p.name.split()).lower() == wanted:
                return p.name
        present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"category folder not found: {self.root / category} (folders present: {present}; "
            f"known categories: {EYECANDIES_CATEGORIES}; {_LAYOUT})"
        )

    @property
    def ids(self) -> list[str]:
        """Sample ids as they appear in the file names (e.g. ``"007"``)."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        sid = self._ids[index]
        folder = self._folder

        info = _find(folder, f"{sid}_info_depth", (".yaml", ".yml"))
        if info is None:
            raise FileNotFoundError(f"missing {folder / (sid + '_info_depth.yaml')} for the depth range")
        depth = load_depth_png(folder / f"{sid}_depth.png", info)
        intrinsics = eyecandies_intrinsics(depth.shape[1], depth.shape[0])

        rgb: Any
        if self.lighting == "mean":
            stack = []
            for k in range(_N_LIGHTS):
                path = folder / f"{sid}_image_{k}.png"
                if not path.is_file():
                    raise FileNotFoundError(f"missing {path} (lighting='mean' needs all six images)")
                with Image.open(path) as img:
                    stack.append(np.asarray(img.convert("RGB"), dtype=np.float32))
            rgb = np.clip(np.rint(np.mean(stack, axis=0)), 0, 255).astype(np.uint8)
        else:
            rgb = folder / f"{sid}_image_{self.lighting}.png"
            if not rgb.is_file():
                raise FileNotFoundError(f"missing {rgb}")

        label, defect_type, mask = self._ground_truth(folder, sid)
        return Sample(
            rgb=rgb,
            xyz=DepthMap(depth=depth, intrinsics=intrinsics),
            label=label,
            mask=mask,
            defect_type=defect_type,
            name=f"{self.split}/{sid}",
        )

    def _ground_truth(
        self, folder: Path, sid: str
    ) -> tuple[Optional[int], Optional[str], Optional[np.ndarray]]:
        if self.split in ("train", "val"):
            # Training and validation parts are defect-free by construction.
            return 0, "good", _mask(folder / f"{sid}_mask.png")
        meta_path = _find(folder, f"{sid}_metadata", (".yaml", ".yml"))
        meta = read_simple_yaml(meta_path) if meta_path is not None else {}
        mask = _mask(folder / f"{sid}_mask.png")
        if "anomalous" in meta:
            label: Optional[int] = int(bool(meta["anomalous"]))
        elif mask is not None:
            label = int(mask.any())
        else:
            return None, None, None  # test_private: no ground truth shipped
        if label == 0:
            return 0, "good", mask
        types = []
        for kind in DEFECT_TYPES:
            kind_mask = _mask(folder / f"{sid}_{kind}_mask.png")
            flagged = meta.get(kind)
            if (kind_mask is not None and kind_mask.any()) or (
                isinstance(flagged, (int, float, bool)) and flagged
            ):
                types.append(kind)
        return 1, "+".join(types) if types else "anomalous", mask

    def __repr__(self) -> str:
        return (f"Eyecandies(root={str(self.root)!r}, category={self.category!r}, split={self.split!r}, "
                f"lighting={self.lighting!r}, n={len(self)})")
