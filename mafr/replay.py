"""The replay store: a compact copy of fit features kept in the saved detector, so that
:meth:`mafr.MAFRDetector.update` can fine-tune on new good parts without forgetting the old ones
(docs/concepts.md, "Updating a fitted detector").

What it keeps, per stored part: the raw (not normalised) feature grids of both modalities,
quantised to 8 bits per channel, the grid's 3D validity and the network-resolution validity mask
(bit-packed); whether the part was held out of training (its score after an update re-calibrates
the threshold honestly) or trained on (it is replayed). Also the raw feature variances and
counts behind the normalisation statistics, so they can be pooled with new parts exactly.

Whole grids rather than single positions: the decoders' attention pools over the grid and the
loss looks at neighbourhoods, so a position replayed outside its grid would train a different
network. 8 bits: the paper architecture's grid is 1.5 MB instead of 3 MB in fp16, and the
quantisation step (1/255 of a channel's range) is far below the normal spread of features.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import CorruptModelError

PREFIX = "replay."
_LEVELS = 255.0


def _quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K, G, G, C)`` float -> uint8 codes with per-channel offset and step."""
    flat = x.reshape(-1, x.shape[-1]).float()
    lo, hi = flat.amin(0), flat.amax(0)
    step = ((hi - lo) / _LEVELS).clamp(min=1e-12)
    codes = ((x.float() - lo) / step).round_().clamp_(0, _LEVELS).to(torch.uint8)
    return codes, lo.contiguous(), step.contiguous()


def _dequantise(codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return codes.float() * step + lo


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(mask.shape[0], -1).numpy().astype(bool), axis=1))


def _unpack(packed: torch.Tensor, side: int) -> torch.Tensor:
    bits = np.unpackbits(packed.numpy(), axis=1, count=side * side).astype(bool)
    return torch.from_numpy(bits.reshape(-1, side, side))


class ReplayStore:
    """Stored parts (``rgb``/``xyz`` grids ``(K, G, G, C)`` float, ``valid_grid`` ``(K, G, G)``,
    ``valid_pixels`` ``(K, S, S)`` bool, ``held_out`` ``(K,)`` bool) plus the moments behind the
    normalisation statistics (``moments``: ``{rgb,xyz}_{mean,var,count}``)."""

    def __init__(self, rgb, xyz, valid_grid, valid_pixels, held_out, moments: dict[str, torch.Tensor]) -> None:
        self.rgb, self.xyz = rgb, xyz
        self.valid_grid, self.valid_pixels, self.held_out = valid_grid, valid_pixels, held_out
        self.moments = moments

    def __len__(self) -> int:
        return int(self.held_out.shape[0])

    @property
    def n_held_out(self) -> int:
        return int(self.held_out.sum())

    # ---------------------------------------------------------------- building
    @staticmethod
    def part_bytes(grid: int, rgb_dim: int, xyz_dim: int, side: int) -> int:
        """Bytes one stored part takes in ``model.safetensors``."""
        return grid * grid * (rgb_dim + xyz_dim + 1) + math.ceil(side * side / 8) + 1

    @classmethod
    def build(
        cls,
        rgb: torch.Tensor,
        xyz: torch.Tensor,
        valid_grid: torch.Tensor,
        valid_pixels: torch.Tensor,
        held_out: torch.Tensor,
        moments: dict[str, torch.Tensor],
        *,
        budget_bytes: int,
        seed: int,
    ) -> "ReplayStore":
        """Keep as many parts as ``budget_bytes`` allows, chosen by a seeded draw that alternates
        held-out and trained-on parts, so both roles stay represented when the budget is tight."""
        k = int(held_out.shape[0])
        per_part = cls.part_bytes(rgb.shape[1], rgb.shape[-1], xyz.shape[-1], valid_pixels.shape[-1])
        room = max(0, int(budget_bytes) // per_part)
        if k > room:
            gen = torch.Generator().manual_seed(seed)
            order = torch.randperm(k, generator=gen).tolist()
            cal = [i for i in order if held_out[i]]
            train = [i for i in order if not held_out[i]]
            picked: list[int] = []
            while len(picked) < room:
                for pool in (train, cal):
                    if pool and len(picked) < room:
                        picked.append(pool.pop(0))
            keep = torch.tensor(sorted(picked), dtype=torch.long)
            rgb, xyz = rgb[keep], xyz[keep]
            valid_grid, valid_pixels, held_out = valid_grid[keep], valid_pixels[keep], held_out[keep]
        return cls(rgb, xyz, valid_grid, valid_pixels, held_out.bool(), moments)

    def merged(self, other: "ReplayStore", *, budget_bytes: int, seed: int) -> "ReplayStore":
        """This store plus ``other``'s parts (moments are taken from ``other``: the caller pools them)."""
        cat = lambda a, b: torch.cat([a, b]) if len(a) else b  # noqa: E731
        return ReplayStore.build(
            cat(self.rgb, other.rgb), cat(self.xyz, other.xyz), cat(self.valid_grid, other.valid_grid),
            cat(self.valid_pixels, other.valid_pixels), cat(self.held_out, other.held_out), other.moments,
            budget_bytes=budget_bytes, seed=seed,
        )

    # ---------------------------------------------------------------- persistence
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors for ``model.safetensors``, every key under :data:`PREFIX`."""
        out: dict[str, torch.Tensor] = {}
        for name, x in (("rgb", self.rgb), ("xyz", self.xyz)):
            if len(self):
                codes, lo, step = _quantise(x)
            else:
                codes = torch.zeros((0, *x.shape[1:]), dtype=torch.uint8)
                lo = step = torch.zeros(x.shape[-1])
            out[name], out[f"{name}_lo"], out[f"{name}_step"] = codes.contiguous(), lo, step
        out["valid_grid"] = self.valid_grid.to(torch.uint8).contiguous()
        out["valid_pixels"] = _pack(self.valid_pixels).contiguous()
        out["held_out"] = self.held_out.to(torch.uint8).contiguous()
        out["side"] = torch.tensor([self.valid_pixels.shape[-1]], dtype=torch.int64)
        for key, value in self.moments.items():
            out[f"moments.{key}"] = value.contiguous()
        return {PREFIX + k: v for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], where: str = "model.safetensors") -> Optional["ReplayStore"]:
        """The store in a checkpoint's tensors, ``None`` when it has none (saved before mafr kept
        one, or converted). A store that is present but inconsistent, or that does not fit the
        checkpoint's statistics, raises :class:`~mafr.errors.CorruptModelError`."""
        t = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if not t:
            return None
        need = {"rgb", "rgb_lo", "rgb_step", "xyz", "xyz_lo", "xyz_step", "valid_grid", "valid_pixels", "held_out", "side"}
        moments = {k[len("moments."):]: v for k, v in t.items() if k.startswith("moments.")}
        need_m = {f"{m}_{s}" for m in ("rgb", "xyz") for s in ("mean", "var", "count")}
        missing = sorted((need - set(t)) | {f"moments.{m}" for m in need_m - set(moments)})
        if missing:
            raise CorruptModelError(
                f"{where}: the replay store is incomplete (missing {', '.join(PREFIX + m for m in missing)})", path=where
            )
        k = t["held_out"].shape[0]
        side = int(t["side"][0])
        shapes_ok = (
            t["rgb"].dtype == torch.uint8 and t["xyz"].dtype == torch.uint8
            and t["rgb"].shape[0] == t["xyz"].shape[0] == t["valid_grid"].shape[0] == t["valid_pixels"].shape[0] == k
            and t["rgb"].shape[1:3] == t["xyz"].shape[1:3] == t["valid_grid"].shape[1:3]
            and t["valid_pixels"].shape[1] == math.ceil(side * side / 8)
            and t["rgb_lo"].shape == t["rgb_step"].shape == (t["rgb"].shape[-1],)
            and t["xyz_lo"].shape == t["xyz_step"].shape == (t["xyz"].shape[-1],)
            and all(moments[f"{m}_mean"].shape == moments[f"{m}_var"].shape == t[f"{m}_lo"].shape for m in ("rgb", "xyz"))
        )
        for m in ("rgb", "xyz"):
            stats = tensors.get(f"stats.{m}_mean")
            shapes_ok = shapes_ok and (stats is None or stats.shape == t[f"{m}_lo"].shape)
        finite = all(torch.isfinite(v.float()).all() for v in t.values())
        if not shapes_ok or not finite:
            raise CorruptModelError(
                f"{where}: the replay store's tensors do not fit together or with the statistics "
                "(shapes, dtypes or non-finite values)", path=where
            )
        return cls(
            _dequantise(t["rgb"], t["rgb_lo"], t["rgb_step"]),
            _dequantise(t["xyz"], t["xyz_lo"], t["xyz_step"]),
            t["valid_grid"].bool(),
            _unpack(t["valid_pixels"], side),
            t["held_out"].bool(),
            moments,
        )


def moments_of(rgb_rows: torch.Tensor, xyz_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean, unbiased variance and count of ``(N, C)`` feature rows of each modality."""
    out = {}
    for name, x in (("rgb", rgb_rows), ("xyz", xyz_rows)):
        x = x.double()
        out[f"{name}_mean"] = x.mean(0)
        out[f"{name}_var"] = x.var(0) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
        out[f"{name}_count"] = torch.tensor([x.shape[0]], dtype=torch.int64)
    return out


def pool_moments(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Moments of the union of two sets of rows from the moments of each (Chan et al.), exact up
    to rounding: the statistics after an update equal those of fitting on everything at once."""
    out = {}
    for name in ("rgb", "xyz"):
        na, nb = float(a[f"{name}_count"][0]), float(b[f"{name}_count"][0])
        ma, mb = a[f"{name}_mean"].double(), b[f"{name}_mean"].double()
        va, vb = a[f"{name}_var"].double(), b[f"{name}_var"].double()
        n = na + nb
        delta = mb - ma
        m2 = va * max(na - 1, 0) + vb * max(nb - 1, 0) + delta**2 * na * nb / n
        out[f"{name}_mean"] = ma + delta * nb / n
        out[f"{name}_var"] = m2 / max(n - 1, 1)
        out[f"{name}_count"] = torch.tensor([int(n)], dtype=torch.int64)
    return out


def stack_parts(parts: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rgb, xyz, valid_grid, valid_pixels)`` stacked from detector feature records, on the CPU
    (the store is saved, and packed with numpy) whatever device extracted them."""
    return (
        torch.stack([p.rgb for p in parts]).float().cpu(),
        torch.stack([p.xyz for p in parts]).float().cpu(),
        torch.stack([p.valid_grid for p in parts]).bool().cpu(),
        torch.stack([p.valid_pixels for p in parts]).bool().cpu(),
    )
