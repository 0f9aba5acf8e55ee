"""Frozen Point-MAE encoder: the 3D feature extractor of MAFR.

Architecture and parameter names follow the official Point-MAE encoder
(https://github.com/Pang-Yatian/Point-MAE, ``models/Point_MAE.py``, class ``MaskTransformer``
without masking), so a converted checkpoint loads key for key:

- grouping: FPS centres from index 0, kNN neighbourhoods relative to their centre;
- ``encoder``: mini-PointNet (Conv1d 3->128, BN, ReLU, Conv1d 128->256, max-pool, concat the
  global vector, Conv1d 512->512, BN, ReLU, Conv1d 512->embed_dim, max-pool);
- ``pos_embed``: Linear 3->128, GELU, Linear 128->embed_dim, added before every block;
- ``blocks.blocks.{i}``: pre-norm transformer blocks without qkv bias;
- ``norm``: one LayerNorm applied to the outputs of the blocks in ``out_indices``, concatenated.

Weights are stored as ``model.safetensors`` + ``config.json``; nothing is ever unpickled. Convert
the official ``.pth`` with :func:`mafr.convert.convert_pointmae_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mafr.extractors.pointops import group_points

__all__ = ["PointMAEConfig", "PointMAEEncoder", "ARCHITECTURE", "FORMAT_VERSION"]

#: ``architecture`` value written to config.json.
ARCHITECTURE = "pointmae_encoder"
#: On-disk format this version of mafr reads and writes.
FORMAT_VERSION = 1

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Key of the config copy in the safetensors header: a lone .safetensors file stays self-describing.
_METADATA_KEY = "mafr_config"
# Bookkeeping buffers that do not influence inference; checkpoints may omit them.
_OPTIONAL_SUFFIX = "num_batches_tracked"
# Groups per chunk of the mini-PointNet: keeps the (chunk * K) x 512 activations cache-sized on a
# CPU (16: 2 MB per chunk, 0.45 -> 0.42 s for 1024 groups of 128 points on 2 cores against 64;
# the same values, each group is computed alone). A GPU takes larger chunks: fewer launches.
_GROUP_CHUNK = 16
_GROUP_CHUNK_DEVICE = 64

PathLike = Union[str, os.PathLike]


class PointMAEConfig(BaseModel):
    """Shape of the encoder. Defaults are Point-MAE's (and MAFR's): 1024 groups of 128 points."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_groups: int = Field(1024, ge=1)
    group_size: int = Field(128, ge=1)
    embed_dim: int = Field(384, ge=1)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    #: Stochastic depth of the pre-training; inactive in this inference-only encoder.
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    #: Blocks (0-based) whose normed outputs are concatenated: 4th, 8th, 12th -> 3 x 384 = 1152.
    out_indices: tuple[int, ...] = (3, 7, 11)
    #: FPS on an evenly strided subsample of at most this many points; ``None`` = all points.
    fps_max_points: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "PointMAEConfig":
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ValueError(
                f"embed_dim * mlp_ratio must be >= 1, got {self.embed_dim * self.mlp_ratio}"
            )
        if not self.out_indices:
            raise ValueError("out_indices must name at least one block")
        bad = [i for i in self.out_indices if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"out_indices must lie in [0, depth - 1] = [0, {self.depth - 1}], got {bad}"
            )
        if len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(f"out_indices must not repeat, got {self.out_indices}")
        if self.fps_max_points is not None and self.fps_max_points < self.num_groups:
            raise ValueError(
                f"fps_max_points ({self.fps_max_points}) must be >= num_groups ({self.num_groups})"
            )
        return self

    @property
    def out_dim(self) -> int:
        """Channels per centre: ``embed_dim * len(out_indices)``."""
        return self.embed_dim * len(self.out_indices)

    @property
    def min_points(self) -> int:
        """Fewest points a cloud needs: one per group and enough for a full neighbourhood."""
        return max(self.num_groups, self.group_size)


def _fold_bn(weight: Tensor, bias: Tensor, bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Fold an inference-mode BatchNorm into the linear map (weight, bias) before it."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale[:, None], (bias - bn.running_mean) * scale + bn.bias


class MiniPointNet(nn.Module):
    """Point-MAE's per-group embedding; parameters named as the official ``Encoder``.

    ``forward`` never runs the Conv1d/BatchNorm modules: they only hold the parameters. It uses
    matrix products with BatchNorm folded in, and splits the 512->512 layer into its global and
    per-point halves, so the max-pooled global feature is multiplied once per group instead of
    once per point. The per-point half is multiplied into the 128->256 layer before it (one
    128->512 product replaces 256->512), the 256-d feature being still computed for the max-pool.
    The folding is redone on every call (about a millisecond), so loaded weights always apply.
    """

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, out_dim, 1),
        )

    def _folded(self) -> dict[str, Tensor]:
        c1, bn1, _, c2 = self.first_conv
        c3, bn3, _, c4 = self.second_conv
        w1, b1 = _fold_bn(c1.weight[:, :, 0], c1.bias, bn1)
        w2, b2 = c2.weight[:, :, 0], c2.bias
        w3, b3 = _fold_bn(c3.weight[:, :, 0], c3.bias, bn3)
        g = w2.shape[0]  # the global feature comes first in the concatenation
        w3_global, w3_point = w3[:, :g], w3[:, g:]
        return {
            "w1": w1.t().contiguous(),
            "b1": b1,
            "w2": w2.t().contiguous(),
            "b2": b2,
            "w3_global": w3_global.t().contiguous(),
            "b3": b3 + w3_point @ b2,
            "w32": (w3_point @ w2).t().contiguous(),
            "w4": c4.weight[:, :, 0].t().contiguous(),
            "b4": c4.bias,
        }

    def forward(self, groups: Tensor) -> Tensor:
        """groups (B, G, K, 3), relative to their centres -> one token (B, G, out_dim) per group."""
        b, g, k, _ = groups.shape
        p = self._folded()
        flat = groups.reshape(b * g, k, 3)
        tokens = []
        chunk = _GROUP_CHUNK if groups.device.type == "cpu" else _GROUP_CHUNK_DEVICE
        for s in range(0, b * g, chunk):
            x = flat[s : s + chunk]
            n = x.shape[0]
            h1 = torch.addmm(p["b1"], x.reshape(n * k, 3), p["w1"]).relu_()
            f = torch.addmm(p["b2"], h1, p["w2"])
            glob = f.view(n, k, -1).amax(dim=1)
            per_group = torch.addmm(p["b3"], glob, p["w3_global"])
            h = torch.mm(h1, p["w32"]).view(n, k, -1).add_(per_group.unsqueeze(1)).relu_()
            # the last bias is constant over the group's points, so it goes after the max-pool
            out = torch.mm(h.view(n * k, -1), p["w4"]).view(n, k, -1).amax(dim=1)
            tokens.append(out.add_(p["b4"]))
        return torch.cat(tokens).view(b, g, -1)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias, scale head_dim ** -0.5."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, head_dim)
        # SDPA's default scale is head_dim ** -0.5, as in Point-MAE
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (drop path omitted: it is the identity at inference)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Holds the blocks as ``blocks.blocks.{i}``, the official nesting."""

    def __init__(self, config: PointMAEConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )


class PointMAEEncoder(nn.Module):
    """Frozen Point-MAE encoder: point cloud (B, N, 3) -> per-centre features and centres.

    ``forward`` always has inference semantics (BatchNorm running statistics, no dropout or drop
    path), whatever ``train()``/``eval()`` says, and runs without autograd; parameters are created
    with ``requires_grad=False``. Build it with :meth:`from_pretrained` (converted official
    weights) or :meth:`random` (tests, benchmarks).
    """

    def __init__(self, config: Optional[PointMAEConfig] = None) -> None:
        super().__init__()
        if config is None:
            config = PointMAEConfig()
        if not isinstance(config, PointMAEConfig):
            raise TypeError(f"config must be a PointMAEConfig or None, got {type(config).__name__}")
        self.config = config.model_copy()
        self.encoder = MiniPointNet(config.embed_dim)
        self.pos_embed = nn.Sequential(
            nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.embed_dim)
        )
        self.blocks = TransformerEncoder(config)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.requires_grad_(False)
        self.eval()

    @property
    def out_dim(self) -> int:
        """Channels per centre."""
        return self.config.out_dim

    def _check_points(self, points: object) -> None:
        if not isinstance(points, Tensor):
            raise TypeError(
                f"points must be a torch.Tensor of shape (B, N, 3), got {type(points).__name__}"
            )
        if not points.is_floating_point():
            raise TypeError(f"points must be a floating-point tensor, got dtype {points.dtype}")
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] == 0:
            raise ValueError(
                f"points must have shape (B, N, 3) with B >= 1, got {tuple(points.shape)}"
            )
        cfg = self.config
        n = points.shape[1]
        if n < cfg.min_points:
            raise ValueError(
                f"PointMAEEncoder needs at least {cfg.min_points} valid points for "
                f"{cfg.num_groups} groups of {cfg.group_size} points, got {n}"
            )
        if not bool(torch.isfinite(points).all()):
            raise ValueError("points contains NaN or inf; pass only valid (finite) points")

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (features (B, G, out_dim), centres (B, G, 3)).

        Points are moved to the encoder's device and dtype; the caller's tensor is not modified.
        The same as :meth:`group` then :meth:`encode`.
        """
        neighborhood, centres = self.group(points)
        return self.encode(neighborhood, centres), centres

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (neighbourhoods (B, G, K, 3), centres (B, G, 3)): FPS and kNN.

        Every cloud gives ``num_groups`` groups of ``group_size`` points whatever its N, so clouds
        of different sizes, grouped one at a time, are encoded together (:meth:`encode`)."""
        self._check_points(points)
        cfg = self.config
        ref = self.norm.weight
        with torch.no_grad():
            pts = points.detach().to(device=ref.device, dtype=ref.dtype)
            # Grouping picks neighbours by distance: under a caller's bf16/fp16 autocast, cdist
            # would round distances and change which points form a group.
            with torch.autocast(device_type=pts.device.type, enabled=False):
                return group_points(pts, cfg.num_groups, cfg.group_size, cfg.fps_max_points)

    def encode(self, neighborhood: Tensor, centres: Tensor) -> Tensor:
        """Groups from :meth:`group` (any number of clouds, concatenated along the batch) ->
        features (B, G, out_dim): the mini-PointNet tokens and the transformer blocks."""
        cfg = self.config
        with torch.no_grad():
            x = self.encoder(neighborhood)
            pos = self.pos_embed(centres)
            wanted = set(cfg.out_indices)
            outputs: dict[int, Tensor] = {}
            for i, block in enumerate(self.blocks.blocks):
                x = block(x + pos)
                if i in wanted:
                    outputs[i] = self.norm(x)
                    if len(outputs) == len(wanted):
                        break  # later blocks feed no output
            return torch.cat([outputs[i] for i in cfg.out_indices], dim=-1)

    # ------------------------------------------------------------------ construction / IO

    @classmethod
    def random(cls, config: Optional[PointMAEConfig] = None, seed: int = 0) -> "PointMAEEncoder":
        """Encoder with deterministic random weights, drawn from a local generator.

        Point-MAE's initialisation: Linear and Conv1d weights normal with std 0.02 (its
        ``trunc_normal_`` bounds, +-2, never bind at that std, and ``normal_`` is much faster),
        biases zero, LayerNorm and BatchNorm affine at (1, 0). BatchNorm running statistics are at
        their defaults (mean 0, variance 1). The global torch RNG is not touched: the modules are
        built on the meta device (skipping torch's default initialisation), then every tensor is
        set here.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device="cpu")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Conv1d)):
                    module.weight.normal_(0.0, 0.02, generator=gen).clamp_(-2.0, 2.0)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                if isinstance(module, nn.BatchNorm1d):
                    module.reset_running_stats()
        return model

    def save_pretrained(self, directory: PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``; return its path."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "architecture": ARCHITECTURE,
            "format_version": FORMAT_VERSION,
            **self.config.model_dump(mode="json"),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", _METADATA_KEY: json.dumps(config)}
        save_file(tensors, str(out / WEIGHTS_NAME), metadata=metadata)
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: PathLike,
        *,
        revision: Optional[str] = None,
        cache_dir: Optional[PathLike] = None,
        local_files_only: bool = False,
        token: Union[str, bool, None] = None,
    ) -> "PointMAEEncoder":
        """Load converted weights from a directory, a ``.safetensors`` file or a Hub repo id.

        - directory: ``model.safetensors`` and ``config.json`` (default config if absent);
        - ``.safetensors`` file: the config stored in its header by :meth:`save_pretrained`, else
          the default config;
        - anything else is taken as a Hugging Face repo id and fetched with ``hf_hub_download``
          (honours ``HF_HUB_OFFLINE=1`` and ``local_files_only`` with a populated cache).

        The key set must match exactly (BatchNorm ``num_batches_tracked`` may be absent).
        """
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise TypeError(
                f"name_or_path must be a str or path, got {type(name_or_path).__name__}"
            )
        path = Path(name_or_path).expanduser()
        config_file: Optional[Path] = None
        if path.is_dir():
            weights = path / WEIGHTS_NAME
            if not weights.is_file():
                raise FileNotFoundError(
                    f"expected PointMAE weights {WEIGHTS_NAME} in directory {path}, but it is "
                    "not there (convert the official checkpoint with "
                    "mafr.convert.convert_pointmae_checkpoint)"
                )
            config_file = path / CONFIG_NAME if (path / CONFIG_NAME).is_file() else None
        elif path.is_file():
            if path.suffix != ".safetensors":
                raise ValueError(
                    f"expected a .safetensors file or a directory holding {WEIGHTS_NAME}, "
                    f"got {path}; "
                    "convert a Point-MAE .pth with mafr.convert.convert_pointmae_checkpoint"
                )
            weights = path
        else:
            weights, config_file = _hub_download(
                str(name_or_path), revision=revision, cache_dir=cache_dir,
                local_files_only=local_files_only, token=token,
            )
        return cls._load(weights, config_file)

    @classmethod
    def _load(cls, weights: Path, config_file: Optional[Path]) -> "PointMAEEncoder":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        if config_file is not None:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
            source = str(config_file)
        elif _METADATA_KEY in metadata:
            raw = json.loads(metadata[_METADATA_KEY])
            source = f"the header of {weights}"
        else:
            raw, source = {}, "defaults"
        model = cls(_parse_config(raw, source))
        model.load_weights(load_file(str(weights)), source=str(weights))
        return model

    def load_weights(self, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
        """Copy a state dict in; keys and shapes must match (``num_batches_tracked`` optional)."""
        expected = self.state_dict()
        missing = sorted(
            k for k in expected if k not in state_dict and not k.endswith(_OPTIONAL_SUFFIX)
        )
        unexpected = sorted(k for k in state_dict if k not in expected)
        if missing or unexpected:
            raise ValueError(
                f"weights from {source} do not fit PointMAEEncoder({self.config!r}): "
                f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}"
            )
        wrong = [
            f"{k}: expected {tuple(v.shape)}, got {tuple(state_dict[k].shape)}"
            for k, v in expected.items()
            if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
        ]
        if wrong:
            raise ValueError(f"weights from {source} have wrong shapes: {_short(wrong)}")
        self.load_state_dict(state_dict, strict=False)


def _short(items: list[str], limit: int = 12) -> str:
    """List for an error message, cut after ``limit`` entries."""
    if not items:
        return "none"
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _parse_config(raw: Any, source: str) -> PointMAEConfig:
    """Validate a config.json dict (architecture, format version) into a PointMAEConfig."""
    if not isinstance(raw, dict):
        raise ValueError(f"config in {source} must be a JSON object, got {type(raw).__name__}")
    raw = dict(raw)
    version = raw.pop("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"config in {source} has an invalid format_version {version!r}, "
            "expected an integer >= 1"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"config in {source} has format_version {version!r}, but this mafr reads up to "
            f"{FORMAT_VERSION}; upgrade mafr (pip install -U mafr)"
        )
    arch = raw.pop("architecture", ARCHITECTURE)
    if arch != ARCHITECTURE:
        raise ValueError(
            f"config in {source} describes architecture {arch!r}, expected {ARCHITECTURE!r}"
        )
    return PointMAEConfig(**raw)


def _hub_download(
    repo_id: str,
    *,
    revision: Optional[str],
    cache_dir: Optional[PathLike],
    local_files_only: bool,
    token: Union[str, bool, None],
) -> tuple[Path, Optional[Path]]:
    """Fetch (weights, config or None) from a Hub repo, or from the local cache when offline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(
            f"{repo_id!r} is neither an existing directory or .safetensors file nor a valid "
            "Hugging Face repo id (expected a directory with model.safetensors, a .safetensors "
            "file, or 'org/name')"
        ) from None
    kwargs = dict(
        repo_id=repo_id,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    where = f"Hugging Face repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        weights = Path(hf_hub_download(filename=WEIGHTS_NAME, **kwargs))
    except (EntryNotFoundError, OSError) as err:
        # OSError covers the hub's HTTP, offline and cache-miss errors
        raise FileNotFoundError(
            f"could not get {WEIGHTS_NAME} from {where} (no local directory or file of that name "
            f"exists either): {err}"
        ) from err
    try:
        config = Path(hf_hub_download(filename=CONFIG_NAME, **kwargs))
    except EntryNotFoundError:
        config = None  # the weights' header (or the defaults) describe the model
    return weights, config
