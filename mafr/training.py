"""Training: the fusion autoencoder learns good parts' features (docs/concepts.md, section 6).

The third stage of :class:`mafr.MAFRDetector` (docs/architecture.md): how a fit set is split into
training and held-out calibration parts (:func:`held_out_split`), the per-channel normalisation
statistics and the moments they come from (kept in the replay store, so that ``update`` pools
them exactly), the autoencoder, and its seeded training loop for ``fit`` and ``update``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

import torch

from . import __version__
from . import errors as _errors
from . import runtime as _runtime
from .config import MAFRConfig, TrainConfig
from .features import Features
from .losses import restoration_loss
from .model import FusionAutoencoder
from .replay import ReplayStore, moments_of

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


def fit_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int], torch.Generator]:
    """``(calibration, training, generator)`` of a fit on ``n`` parts with ``seed``: the split is the
    generator's first draw, and the generator goes on to shuffle the batches. The fit, the turned
    copies of its training parts (:mod:`mafr.augment`) and studies that calibrate again all read
    this one function, so they agree on which parts were held out (``update`` splits its new parts
    the same way)."""
    gen = torch.Generator().manual_seed(seed)
    return (*held_out_split(n, fraction, gen), gen)


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


# ---------------------------------------------------------------- fit and update bookkeeping
#: What a fit or an update changes on a detector: restored as a whole if training diverges.
FITTED_STATE = ("stats_", "autoencoder_", "threshold_", "calibration_", "replay_", "fit_info_", "framing_")


@contextlib.contextmanager
def rollback_on_divergence(det):
    """A fit or update whose training diverges leaves ``det`` as it was before the call
    (unfitted, or fitted as before), never half-trained."""
    saved = {k: getattr(det, k, None) for k in FITTED_STATE}
    ae = saved["autoencoder_"]
    ae_state = None if ae is None else copy.deepcopy(ae.state_dict())  # update trains in place
    ae_training = ae is not None and ae.training
    try:
        yield
    except _errors.TrainingDivergedError:
        for k, v in saved.items():
            setattr(det, k, v)
        if ae is not None:
            ae.load_state_dict(ae_state)
            ae.train(ae_training)  # training left it in train mode (dropout on)
        raise


def common_framing(feats: Sequence[Features]):
    """The one :class:`mafr.framing.Framing` (window side, axis) every fit part was extracted with."""
    if not feats:
        raise ValueError("fit needs at least one good sample; got an empty fit set")
    framings = {f.framing for f in feats}
    if len(framings) != 1:
        raise ValueError(f"the fit features were framed differently ({sorted(map(str, framings))}); extract them in one call")
    return framings.pop()


def held_out_mask(n: int, cal_idx: Sequence[int]) -> torch.Tensor:
    held_out = torch.zeros(n, dtype=torch.bool)
    held_out[list(cal_idx)] = True
    return held_out


def calibration_parts(held_out: Sequence[Features], training: Sequence[Features]) -> tuple[list, list]:
    """What calibrates (:func:`mafr.calibration.calibrate`'s two sets): the held-out parts, with the
    training parts beside them; with none held out (fewer than 3 parts), the training parts
    themselves: optimistic, and the docs say so, but better than refusing to work."""
    return (list(held_out), list(training)) if held_out else (list(training), [])


def check_updatable(store: Optional[ReplayStore], example: Optional[Features] = None) -> None:
    """``update`` needs the fit's replay store, holding features of this detector's extractors
    (checked on an ``example`` of the new parts' features)."""
    if store is None or bool(store.held_out.all()):
        raise _errors.NoReplayStoreError(
            "this detector has no replay store of its fit features (converted from reference checkpoints, "
            "saved by mafr before 0.2, or fitted with train.replay_budget_mb=0), so update() would forget what "
            "it learned; refit on all good parts instead"
        )
    if example is not None and (example.rgb.shape[-1], example.xyz.shape[-1]) != (store.rgb.shape[-1], store.xyz.shape[-1]):
        raise _errors.CorruptModelError(
            f"the replay store holds {store.rgb.shape[-1]} + {store.xyz.shape[-1]} feature channels but the "
            f"extractors give {example.rgb.shape[-1]} + {example.xyz.shape[-1]}: the store does not belong to this config"
        )


def replayed(store: ReplayStore) -> tuple[list[Features], list[Features]]:
    """The store's parts as features: ``(trained on, held out)`` at fit."""
    parts = [Features(store.rgb[i], store.xyz[i], store.valid_grid[i], store.valid_pixels[i]) for i in range(len(store))]
    held = store.held_out.tolist()
    return [f for f, h in zip(parts, held) if not h], [f for f, h in zip(parts, held) if h]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fit_record(*, n: int, n_train: int, n_calibration: int, scores: list[float], seed: int, losses: list[float],
               seconds: float, threshold: Optional[float], replay_parts: int, rotated_copies: int = 0) -> dict[str, Any]:
    """``fit_info_`` after a fit: what it saw and did, with the history's first event."""
    return {
        "n_samples": n,
        "n_train": n_train,
        "rotated_copies": rotated_copies,
        "n_calibration": n_calibration,
        "calibration_on_training_parts": not n_calibration,
        "calibration_scores": scores,
        "seed": seed,
        "steps": len(losses),
        "final_loss": losses[-1] if losses else None,
        "train_seconds": seconds,
        "mafr_version": __version__,
        "n_parts_total": n,
        "replay_parts": replay_parts,
        "history": [
            {"event": "fit", "time": _now(), "parts": n, "n_train": n_train, "n_calibration": n_calibration,
             "steps": len(losses), "seconds": seconds, "threshold": threshold}
        ],
    }


def update_record(info: dict[str, Any], *, n: int, n_train: int, n_calibration: int, scores: list[float],
                  on_training_parts: bool, seed: int, losses: list[float], seconds: float,
                  threshold_before: Optional[float], threshold: Optional[float], replay_parts: int) -> dict[str, Any]:
    """``fit_info_`` after an update: ``info`` (left as it was) with the update appended to its history."""
    info = dict(info)
    history = list(info.get("history") or [])
    history.append(
        {"event": "update", "time": _now(), "parts": n, "n_train": n_train, "n_calibration": n_calibration,
         "steps": len(losses), "seconds": seconds, "threshold_before": threshold_before, "threshold": threshold,
         "seed": seed}
    )
    info.update(
        history=history,
        n_updates=sum(1 for e in history if e.get("event") == "update"),
        n_parts_total=int(info.get("n_parts_total", info.get("n_samples", 0))) + n,
        replay_parts=replay_parts,
        calibration_scores=scores,
        calibration_on_training_parts=on_training_parts,
        update_seconds=seconds,
    )
    return info


def recalibrate_as_fitted(det, feats: Sequence[Features], seed: int) -> list[float]:
    """Calibrate ``det`` again, for its current scoring settings, on the split its ``fit`` with
    ``seed`` drew from ``feats`` (the generator's first draw); the held-out scores. For studies
    that change only scoring on one trained autoencoder (``benchmarks/tune_scoring.py``,
    ``benchmarks/defect_types.py``)."""
    cal_idx, train_idx, _ = fit_split(len(feats), det.config.train.calibration_fraction, seed)
    return det._calibrate_fit_split(feats, cal_idx, train_idx)
