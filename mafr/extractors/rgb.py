"""RGB extractor: a frozen timm ViT whose patch tokens form a ``(B, C, h, w)`` feature map."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched or found."""


def _load_safetensors(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"expected RGB extractor weights at {path} (a .safetensors file, or a directory holding model.safetensors)")
    return load_file(str(path))


class RGBExtractor(nn.Module):
    """DINO ViT-B/8 by default (``vit_base_patch8_224.dino``); any timm ViT name works.

    ``weights``: ``"default"`` (timm's pretrained weights through the Hugging Face Hub cache),
    ``"random"`` (seeded, never touches the network) or a local ``.safetensors`` file/directory.
    Input: ``(B, 3, S, S)`` ImageNet-normalised images; output: ``(B, C, S/p, S/p)`` patch tokens
    after the final norm, class/register tokens dropped.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch8_224.dino",
        weights: str = "default",
        image_size: int = 224,
        timm_kwargs: Optional[dict[str, Any]] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(timm_kwargs or {})
        kwargs.setdefault("img_size", image_size)
        pretrained = weights == "default"
        try:
            # timm initialises from the global RNG: fork it so "random" is seeded and the
            # caller's RNG state is left alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vit = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            if not pretrained:
                raise
            raise WeightsUnavailableError(
                f"could not load pretrained weights for timm model {model_name!r} ({type(err).__name__}: {err}). "
                "Without network access, populate the Hugging Face cache first (HF_HUB_OFFLINE=1 then reads it), "
                "pass a local file with MAFRConfig(rgb={'weights': 'path/to/model.safetensors'}), use "
                "MAFRConfig(preset='offline') for weight-free features, or extractor_weights='random' for tests."
            ) from err
        if weights not in ("default", "random"):
            state = _load_safetensors(weights)
            missing, unexpected = self.vit.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("head")]
            if missing or unexpected:
                raise ValueError(
                    f"RGB weights at {weights} do not fit {model_name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        if not hasattr(self.vit, "patch_embed"):
            raise ValueError(f"{model_name!r} is not a ViT with a patch embedding; mafr needs patch tokens")
        self.vit.eval().requires_grad_(False)
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.out_dim = int(self.vit.embed_dim)
        self.image_size = image_size

    def train(self, mode: bool = True) -> "RGBExtractor":
        return super().train(False)  # frozen: dropout and friends stay off

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, S, S), got {tuple(images.shape)}")
        tokens = self.vit.forward_features(images)
        tokens = tokens[:, getattr(self.vit, "num_prefix_tokens", 1):]
        side = images.shape[-1] // self.patch_size
        return tokens.reshape(images.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()
