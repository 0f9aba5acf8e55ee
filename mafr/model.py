"""The fusion autoencoder: one fusion encoder, two decoders with CBAM (docs/method.md, "Model").

Tensors are channels-last, ``(B, H, W, C)``: every layer but CBAM's spatial convolution is
per-position, and ``nn.Linear`` on the last axis avoids permutes on the hot path. Layer names
follow the reference code so its checkpoints map one to one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

CBAMMode = Literal["grid", "pointwise"]
#: Decoder attention before the output layer: CBAM (the paper), squeeze-and-excitation (its
#: channel gate alone, lighter), or none. See docs/ablations.md for what each costs and keeps.
Attention = Literal["cbam", "se", "none"]


class ChannelAttention(nn.Module):
    """Shared two-layer MLP over average- and max-pooled descriptors, summed, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def gate(self, x: torch.Tensor, mode: CBAMMode) -> torch.Tensor:
        if mode == "pointwise":
            # Each position is its own 1 x 1 map: its average and maximum are the vector itself.
            return torch.sigmoid(2.0 * self.fc(x))
        avg = x.mean(dim=(1, 2), keepdim=True)
        mx = x.amax(dim=(1, 2), keepdim=True)
        return torch.sigmoid(self.fc(avg) + self.fc(mx))


class SpatialAttention(nn.Module):
    """k x k convolution (no bias) over [channel mean, channel max], sigmoid gate."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def gate(self, x: torch.Tensor, mode: CBAMMode) -> torch.Tensor:
        desc = torch.stack([x.mean(dim=-1), x.amax(dim=-1)], dim=1)  # (B, 2, H, W)
        if mode == "pointwise":
            # On a 1 x 1 zero-padded map only the kernel's centre tap ever sees data.
            k = self.conv.kernel_size[0] // 2
            centre = self.conv.weight[0, :, k, k]
            return torch.sigmoid(torch.einsum("bchw,c->bhw", desc, centre)).unsqueeze(-1)
        return torch.sigmoid(self.conv(desc)).permute(0, 2, 3, 1)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel gate, then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, mode: CBAMMode = "grid"):
        super().__init__()
        self.mode: CBAMMode = mode
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_attention.gate(x, self.mode)
        return x * self.spatial_attention.gate(x, self.mode)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): average-pooled descriptor, two-layer MLP,
    sigmoid channel gate. No max-pool branch and no spatial gate, hence cheaper than CBAM."""

    def __init__(self, channels: int, reduction: int = 16, mode: CBAMMode = "grid") -> None:
        super().__init__()
        self.mode: CBAMMode = mode
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Point-wise, each position is its own 1 x 1 map and its average is the vector itself.
        desc = x if self.mode == "pointwise" else x.mean(dim=(1, 2), keepdim=True)
        return x * torch.sigmoid(self.fc(desc))


class FusionEncoder(nn.Module):
    """Linear -> GELU -> LayerNorm -> Dropout, twice (one shared LayerNorm), then the latent Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, latent_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.input_fc = nn.Linear(in_dim, hidden_dim)
        self.layers = nn.ModuleList([nn.Linear(hidden_dim, hidden_dim)])
        self.output_fc = nn.Linear(hidden_dim, latent_dim)
        self.layer_norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.layer_norm(F.gelu(self.input_fc(x))))
        for layer in self.layers:
            h = self.dropout(self.layer_norm(F.gelu(layer(h))))
        return self.output_fc(h)


class Decoder(nn.Module):
    """Latent -> one modality. Norm before activation here (after it in the encoder), as in the
    reference; CBAM before the output layer; a linear skip from the latent."""

    def __init__(
        self,
        latent_dim: int,
        out_dim: int,
        dropout: float = 0.1,
        cbam_mode: CBAMMode = "grid",
        cbam_reduction: int = 16,
        cbam_kernel: int = 7,
        attention: Attention = "cbam",
    ) -> None:
        super().__init__()
        if attention not in ("cbam", "se", "none"):
            raise ValueError(f"attention must be 'cbam', 'se' or 'none', got {attention!r}")
        hidden = out_dim
        self.attention: Attention = attention
        self.input_fc = nn.Linear(latent_dim, hidden)
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        # Registered under its own name so a CBAM decoder keeps the reference's state-dict keys.
        if attention == "cbam":
            self.cbam = CBAM(hidden, cbam_reduction, cbam_kernel, cbam_mode)
        elif attention == "se":
            self.se = SqueezeExcitation(hidden, cbam_reduction, cbam_mode)
        self.output_fc = nn.Linear(hidden, out_dim)
        self.skip = nn.Linear(latent_dim, out_dim) if latent_dim != out_dim else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dropout(F.gelu(self.norm(self.input_fc(z))))
        for layer in self.layers:
            h = self.dropout(F.gelu(self.norm(layer(h))))
        if self.attention == "cbam":
            h = self.cbam(h)
        elif self.attention == "se":
            h = self.se(h)
        return self.output_fc(h) + self.skip(z)


class FusionAutoencoder(nn.Module):
    """concat(rgb, xyz) -> shared latent -> (restored rgb, restored xyz), all ``(B, H, W, C)``."""

    def __init__(
        self,
        rgb_dim: int,
        xyz_dim: int,
        latent_dim: int | None = None,
        dropout: float = 0.1,
        cbam_mode: CBAMMode = "grid",
        cbam_reduction: int = 16,
        cbam_kernel: int = 7,
        attention: Attention = "cbam",
    ) -> None:
        super().__init__()
        in_dim = rgb_dim + xyz_dim
        hidden = in_dim // 2
        latent = latent_dim or hidden
        self.rgb_dim, self.xyz_dim = rgb_dim, xyz_dim
        self.encoder = FusionEncoder(in_dim, hidden, latent, dropout)
        dec = dict(dropout=dropout, cbam_mode=cbam_mode, cbam_reduction=cbam_reduction, cbam_kernel=cbam_kernel,
                   attention=attention)
        self.decoder_2d = Decoder(latent, rgb_dim, **dec)
        self.decoder_3d = Decoder(latent, xyz_dim, **dec)

    @classmethod
    def from_config(cls, rgb_dim: int, xyz_dim: int, m) -> "FusionAutoencoder":
        """The autoencoder a ``ModelConfig`` (``MAFRConfig.model``) describes, for these widths."""
        return cls(rgb_dim, xyz_dim, latent_dim=m.latent_dim, dropout=m.dropout, cbam_mode=m.cbam,
                   cbam_reduction=m.cbam_reduction, cbam_kernel=m.cbam_kernel, attention=m.attention)

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(torch.cat([rgb, xyz], dim=-1))
        return self.decoder_2d(z), self.decoder_3d(z)
