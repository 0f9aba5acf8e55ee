"""The explicit converter of Point-MAE's published checkpoint (``pretrain.pth``, a pickle) into
mafr's safetensors format, and the checkpoint-reading helpers other converters share.

The only place besides :mod:`mafr.convert` where a pickle is read: once, with
``torch.load(..., weights_only=True)``, which refuses arbitrary Python objects. It lives beside
the encoder (not in :mod:`mafr.convert`, which re-exports it) so that :mod:`mafr.download` can
convert what it fetched without importing the detector's converters.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .pointmae import PointMAEConfig, PointMAEEncoder

PathLike = Union[str, os.PathLike]

POINTMAE_URL = "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth"
_MAE_ENCODER = "MAE_encoder."
_BLOCK_KEY = re.compile(r"^blocks\.blocks\.(\d+)\.")


def _describe(obj: Any, limit: int = 10) -> str:
    """Short description of an unexpected checkpoint content, for error messages."""
    if isinstance(obj, Mapping):
        keys = [str(k) for k in obj.keys()]
        more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return f"a dict with keys [{', '.join(keys[:limit])}]{more}"
    return f"a {type(obj).__name__}"


def load_torch_checkpoint(src: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; clear errors for missing/foreign files."""
    path = Path(src).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected a file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a torch checkpoint mafr can read ({what}); it was loaded with "
            f"weights_only=True, which refuses arbitrary Python objects: {err}"
        ) from err


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys starting with ``prefix``, with the prefix removed; other keys are dropped."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def pointmae_encoder_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The encoder's state dict from an official Point-MAE pre-training checkpoint.

    Accepts the saved dict (state dict under ``base_model``) or that state dict itself. Drops a
    leading ``module.`` (DataParallel), keeps ``MAE_encoder.*`` keys without that prefix and
    ignores the rest (decoder, mask token, reconstruction head).
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{source} is not a Point-MAE checkpoint: expected a dict, "
            f"found {_describe(checkpoint)}"
        )
    state = checkpoint.get("base_model", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{source} is not a Point-MAE checkpoint: expected a dict whose 'base_model' entry is "
            f"a state dict, found {_describe(checkpoint)}"
        )
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    encoder = strip_prefix(state, _MAE_ENCODER)
    if not encoder:
        raise ValueError(
            f"{source} holds no Point-MAE encoder keys ('{_MAE_ENCODER}*'); found "
            f"{_describe(state)}. Only the pre-training checkpoint (pretrain.pth) is supported."
        )
    return encoder


def infer_pointmae_config(
    state_dict: Mapping[str, Tensor],
    *,
    num_heads: int = 6,
    out_indices: Optional[Sequence[int]] = None,
    num_groups: int = 1024,
    group_size: int = 128,
) -> PointMAEConfig:
    """Encoder config from weight shapes: width, depth and MLP ratio.

    The number of heads, the grouping and the output blocks are not in the weights: heads default
    to Point-MAE's 6, grouping to MAFR's 1024 groups of 128 points, and ``out_indices`` to
    (3, 7, 11) for a 12-block encoder (required otherwise).
    """
    for key in ("norm.weight", "blocks.blocks.0.mlp.fc1.weight", "encoder.second_conv.3.weight"):
        if key not in state_dict:
            raise ValueError(
                f"Point-MAE encoder weights lack {key!r}; found {_describe(state_dict)}"
            )
    embed_dim = int(state_dict["norm.weight"].shape[0])
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))})
    if blocks != list(range(len(blocks))):
        raise ValueError(f"Point-MAE encoder blocks must be numbered 0..depth-1, found {blocks}")
    depth = len(blocks)
    tokens = int(state_dict["encoder.second_conv.3.weight"].shape[0])
    if tokens != embed_dim:
        raise ValueError(
            f"mini-PointNet emits {tokens} channels but the transformer is {embed_dim} wide; "
            "encoders with a projection in between (e.g. Point-BERT's) are not supported"
        )
    mlp_ratio = state_dict["blocks.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if out_indices is None:
        if depth != 12:
            raise ValueError(
                f"the checkpoint has {depth} blocks, so out_indices must be given (the default "
                "(3, 7, 11) is for 12 blocks)"
            )
        out_indices = (3, 7, 11)
    return PointMAEConfig(
        num_groups=num_groups,
        group_size=group_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        out_indices=tuple(out_indices),
    )


def convert_pointmae_checkpoint(
    src: PathLike,
    dst_dir: PathLike,
    *,
    out_indices: Optional[Sequence[int]] = None,
    num_heads: int = 6,
    num_groups: int = 1024,
    group_size: int = 128,
) -> Path:
    """Convert Point-MAE's ``pretrain.pth`` (a.k.a. ``pointmae_pretrain.pth``) into ``dst_dir``.

    Writes ``model.safetensors`` and ``config.json`` for :meth:`PointMAEEncoder.from_pretrained`
    and returns ``dst_dir``. See :func:`infer_pointmae_config` for the keyword arguments.
    """
    checkpoint = load_torch_checkpoint(src, what=f"Point-MAE checkpoint (download: {POINTMAE_URL})")
    state = pointmae_encoder_state_dict(checkpoint, source=str(src))
    config = infer_pointmae_config(
        state,
        num_heads=num_heads,
        out_indices=out_indices,
        num_groups=num_groups,
        group_size=group_size,
    )
    model = PointMAEEncoder(config)
    model.load_weights(state, source=str(src))
    return model.save_pretrained(dst_dir)
