"""Reader for data in the MVTec 3D-AD layout (the real dataset, preprocessed copies, synthetic).

Layout::

    root/<category>/train/good/{rgb/000.png, xyz/000.tiff}
    root/<category>/validation/good/{rgb, xyz}
    root/<category>/test/<good|defect>/{rgb/000.png, xyz/000.tiff, gt/000.png}

Samples keep ``rgb``/``xyz`` as paths (the detector loads them itself, so iterating a dataset
stays cheap); only the ground-truth mask is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union, overload

import numpy as np
import tifffile
from PIL import Image

from ..types import Sample

PathLike = Union[str, Path]

SPLITS = ("train", "validation", "test")
_LAYOUT = (
    "expected the MVTec 3D-AD layout root/<category>/<train|validation|test>/<good|defect>/"
    "{rgb/NNN.png, xyz/NNN.tiff[, gt/NNN.png]}"
)


def load_xyz_tiff(path: PathLike) -> np.ndarray:
    """Read an organized point cloud (``H x W x 3`` float32, zeros = no measurement)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"xyz file not found: {path}")
    arr = tifffile.imread(str(path))
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{path}: expected an H x W x 3 point map, got shape {arr.shape}")
    return np.asarray(arr, dtype=np.float32)


def load_mask_png(path: PathLike) -> np.ndarray:
    """Read a ground-truth PNG as a bool map (any non-zero channel is defect)."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    return arr.any(axis=-1) if arr.ndim == 3 else arr > 0


def categories(root: PathLike) -> list[str]:
    """Sorted names of the category folders under ``root`` (those holding a train or test split)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root} ({_LAYOUT})")
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in SPLITS)
    )


class MVTec3D(Sequence):
    """One split of one category, as a sequence of :class:`mafr.types.Sample`.

    Samples are in sorted order of (defect type, file name). Each has ``rgb``/``xyz`` paths
    (``xyz`` is ``None`` in a folder without ``xyz/``: images only),
    ``label`` (0 good, 1 defective), ``defect_type``, ``mask`` (bool array from ``gt/`` when the
    file exists, else ``None``) and ``name`` like ``"test/crack/003"``.
    """

    def __init__(self, root: PathLike, category: str, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.category = category
        self.split = split
        split_dir = self.root / category / split
        if not split_dir.is_dir():
            present = categories(self.root) if self.root.is_dir() else []
            raise FileNotFoundError(
                f"split folder not found: {split_dir} ({_LAYOUT}; categories present: {present})"
            )
        entries: list[tuple[str, str, Path, Path]] = []
        for kind_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            rgb_dir = kind_dir / "rgb"
            if not rgb_dir.is_dir():
                raise FileNotFoundError(f"missing rgb folder: {rgb_dir} ({_LAYOUT})")
            # A folder without xyz/ holds images only (MVTec 3D-AD's public tire subset): its
            # samples have xyz=None, for a detector of modalities="rgb"; one with xyz/ must be complete.
            has_xyz = (kind_dir / "xyz").is_dir()
            for rgb in sorted(rgb_dir.glob("*.png")):
                xyz = kind_dir / "xyz" / f"{rgb.stem}.tiff"
                if has_xyz and not xyz.is_file():
                    raise FileNotFoundError(f"no point cloud for {rgb}: expected {xyz} ({_LAYOUT})")
                entries.append((kind_dir.name, rgb.stem, rgb, xyz if has_xyz else None))
        if not entries:
            raise FileNotFoundError(f"no samples under {split_dir} ({_LAYOUT})")
        self._entries = entries

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect-type folder names of this split (``["good"]`` for train/validation)."""
        return sorted({e[0] for e in self._entries})

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        kind, stem, rgb, xyz = self._entries[index]
        gt = rgb.parent.parent / "gt" / f"{stem}.png"
        mask: Optional[np.ndarray] = load_mask_png(gt) if gt.is_file() else None
        return Sample(
            rgb=rgb,
            xyz=xyz,
            label=int(kind != "good"),
            mask=mask,
            defect_type=kind,
            name=f"{self.split}/{kind}/{stem}",
        )

    def __repr__(self) -> str:
        return (f"MVTec3D(root={str(self.root)!r}, category={self.category!r}, "
                f"split={self.split!r}, n={len(self)})")
