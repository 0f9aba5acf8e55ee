"""Training: the fusion autoencoder learns good parts' features (docs/concepts.md, section 6).

The third stage of :class:`mafr.MAFRDetector` (docs/architecture.md): how a fit set is split into
training and held-out calibration parts (:func:`held_out_split`), the per-channel normalisation
statistics and the moments they come from (kept in the replay store, so that ``update`` pools
them exactly), the autoencoder, and its seeded training loop for ``fit`` and ``update``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import errors as _errors
from . import runtime as _runtime
from .config import MAFRConfig, TrainConfig
from .features import Features
from .losses import restoration_loss
from .model import FusionAutoencoder
from .replay import moments_of

_STD_FLOOR = 1e-6
#: Each channel's variance is floored at this share of the mean channel variance.
_VAR_FLOOR = 0.01


def robust_std(x: torch.Tensor) -> torch.Tensor:
    """Per-channel std with a floor relative to the typical channel: a channel that is nearly
    constant on good parts (an empty histogram bin, say) must not turn sensor noise into
    huge normalised values."""
    return std_from_var(x.var(0))


def std_from_var(var: torch.Tensor) -> torch.Tensor:
    return (var + _VAR_FLOOR * var.mean()).sqrt().clamp(min=_STD_FLOOR)


def held_out_split(n: int, fraction: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """``(calibration, training)`` indices of ``n`` new good parts: a seeded draw of
    ``max(1, round(fraction * n))`` held out, none below 3 parts (fit and update share the rule;
    ``gen`` then goes on to shuffle the training batches)."""
    order = torch.randperm(n, generator=gen).tolist()
    n_cal = 0 if n < 3 or fraction == 0 else max(1, round(fraction * n))
    return sorted(order[:n_cal]), sorted(order[n_cal:])


def batches(n: int, batch: int, gen: torch.Generator):
    """Endless shuffled batches of ``range(n)``, reshuffled when fewer than ``batch`` remain."""
    perm, cursor = torch.randperm(n, generator=gen), 0
    while True:
        if cursor + batch > len(perm):
            perm, cursor = torch.randperm(n, generator=gen), 0
        yield perm[cursor : cursor + batch]
        cursor += batch




#: Loss values are read back every this many steps off the CPU: each read is a device sync.
SYNC_EVERY = 25


def sync_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else SYNC_EVERY


def feature_moments(feats: Sequence[Features]) -> dict[str, torch.Tensor]:
    """Per-channel moments of every grid position (RGB) and every position with 3D (xyz).
    Kept in the replay store, so an update pools them with new parts' moments exactly."""
    rgb = torch.cat([f.rgb.reshape(-1, f.rgb.shape[-1]) for f in feats])
    xyz = torch.cat([f.xyz[f.valid_grid] for f in feats])
    if xyz.shape[0] < 2:
        xyz = torch.cat([f.xyz.reshape(-1, f.xyz.shape[-1]) for f in feats])
    return {k: v.cpu() for k, v in moments_of(rgb, xyz).items()}  # stored with the replay parts

def stats_from_moments(m: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "rgb_mean": m["rgb_mean"].float(),
        "rgb_std": std_from_var(m["rgb_var"]).float(),
        "xyz_mean": m["xyz_mean"].float(),
        "xyz_std": std_from_var(m["xyz_var"]).float(),
    }


def build_autoencoder(config: MAFRConfig, example: Features, device: torch.device) -> FusionAutoencoder:
    """A fresh fusion autoencoder for features shaped like ``example``, on ``device``."""
    return FusionAutoencoder.from_config(example.rgb.shape[-1], example.xyz.shape[-1], config.model).to(device)


def train_autoencoder(ae: FusionAutoencoder, rgb_all: torch.Tensor, xyz_all: torch.Tensor, tc: TrainConfig,
                      gen: torch.Generator, *, n_new: int, n_replay: int = 0, device: torch.device,
                      precision: str = "fp32", progress: bool = False) -> list[float]:
    """Train ``ae`` (in train mode) on normalised features ``(N, g, g, C)`` of each modality; the
    loss history. Fit: every part, ``tc.steps`` (or ``tc.epochs``) with early stopping. Update
    (``n_replay`` > 0: the last ``n_replay`` parts are replayed ones): ``tc.update_steps`` fixed
    steps at ``update_lr_scale * lr``, each batch half new parts and half replayed ones. A
    non-finite loss raises :class:`mafr.TrainingDivergedError` (fail closed)."""
    n_all = rgb_all.shape[0]
    if n_replay:
        b_new = min(max(1, tc.batch_size // 2), n_new)
        b_old = min(max(1, tc.batch_size - b_new), n_replay)
        new_batches, old_batches = batches(n_new, b_new, gen), batches(n_replay, b_old, gen)
        order = (torch.cat([new, n_new + old]) for new, old in zip(new_batches, old_batches))
        steps, lr, patience = tc.update_steps, tc.lr * tc.update_lr_scale, None
    else:
        batch = min(tc.batch_size, n_all)
        order = batches(n_all, batch, gen)
        steps = tc.epochs * math.ceil(n_all / batch) if tc.epochs else tc.steps
        lr, patience = tc.lr, tc.early_stop_patience
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    loss_kw = dict(
        w_similarity=tc.w_similarity,
        w_smoothness=tc.w_smoothness,
        w_census=tc.w_census,
        census_kernel=tc.census_kernel,
        smoothness_first_two_channels=tc.smoothness_first_two_channels,
        form=tc.loss_form,
    )
    history: list[float] = []
    best, since_best, ema, stop = math.inf, 0, None, False
    # fp16 gradients underflow without loss scaling; for fp32/bf16 the scaler is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    every = sync_every(device)
    pending: list[torch.Tensor] = []
    bar = _runtime.progress(range(steps), desc="mafr: training", enable=progress)
    for step in bar:
        idx = next(order)
        rgb, xyz = rgb_all[idx], xyz_all[idx]
        with _runtime.autocast(device, precision):
            out_rgb, out_xyz = ae(rgb, xyz)
        # The loss (normalisation, census) is computed in fp32 whatever the network ran in.
        loss = restoration_loss(rgb, out_rgb.float(), **loss_kw) + restoration_loss(xyz, out_xyz.float(), **loss_kw)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        pending.append(loss.detach())
        if len(pending) < every and step + 1 < steps:
            continue
        # Off the CPU early stopping is judged every `every` steps, so it may stop that much later.
        values, pending = torch.stack(pending).tolist(), []
        if not all(math.isfinite(v) for v in values):
            # Fail closed: a diverged network must not become a detector that says "good".
            bad = len(history) + next(i for i, v in enumerate(values) if not math.isfinite(v)) + 1
            raise _errors.TrainingDivergedError(
                f"training diverged: the loss became non-finite at step {bad} of {steps} "
                f"(precision {precision}); nothing was fitted. Try precision='fp32' or a lower train.lr"
            )
        for value in values:
            history.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            if patience is not None and not stop:
                if ema < best * (1 - tc.early_stop_tol):
                    best, since_best = ema, 0
                else:
                    since_best += 1
                    stop = since_best >= patience
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
        if stop:
            break
    return history
