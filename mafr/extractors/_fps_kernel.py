"""Farthest point sampling as one GPU kernel (Triton), used by
:func:`mafr.extractors.pointops.farthest_point_sample` on CUDA devices.

The torch loop launches six small kernels per chosen centre: 6,000 launches for 1,024 centres,
so on a GPU the loop was launch overhead (docs/performance.md, "GPU figures"). Here one program
per cloud keeps the cloud and each point's distance to its nearest centre in registers and runs
all the steps itself; the clouds of a batch run side by side. Same selections as the CPU path:
squared distances summed as ``dx^2 + dy^2 + dz^2`` in that order without fused multiply-adds,
the first maximum on ties.

Triton ships with torch's CUDA wheels; without it (or for clouds larger than
:data:`MAX_POINTS`, which would not fit in registers) the torch loop runs instead.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

try:  # an optional accelerator, never a dependency: the torch loop is the fallback
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the torch build
    triton = None

__all__ = ["MAX_POINTS", "available", "disable", "farthest_point_sample_kernel"]

#: Largest cloud one program holds in registers (16 warps, 32 points per thread).
MAX_POINTS = 16384

if triton is not None:

    # Integer arguments unspecialised: a start index of 1 would otherwise become a constant and
    # change the loop-carried index's type; one compiled kernel serves every cloud size.
    @triton.jit(do_not_specialize=["n", "n_samples", "start"])
    def _fps(xyz_ptr, skip_ptr, out_ptr, n, n_samples, start, HAS_SKIP: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        inside = offs < n
        base = xyz_ptr + b * n * 3
        x = tl.load(base + offs * 3, mask=inside, other=0.0)
        y = tl.load(base + offs * 3 + 1, mask=inside, other=0.0)
        z = tl.load(base + offs * 3 + 2, mask=inside, other=0.0)
        # Padding lanes sit below everything (never chosen); skipped points at -1, below every
        # real distance, as the CPU path.
        min_d = tl.where(inside, float("inf"), float("-inf")).to(x.dtype)
        if HAS_SKIP:
            skipped = tl.load(skip_ptr + b * n + offs, mask=inside, other=0)
            min_d = tl.where(skipped != 0, -1.0, min_d).to(x.dtype)
        idx = start
        for i in range(n_samples):
            tl.store(out_ptr + b * n_samples + i, idx.to(tl.int64))
            c = base + idx.to(tl.int64) * 3
            dx = x - tl.load(c)
            dy = y - tl.load(c + 1)
            dz = z - tl.load(c + 2)
            d = dx * dx + dy * dy + dz * dz
            min_d = tl.minimum(min_d, d)
            idx = tl.argmax(min_d, axis=0, tie_break_left=True).to(tl.int32)


#: Set when the kernel failed to build or run here (an unsupported GPU or Triton version); the
#: torch loop takes over for the rest of the process.
_broken: Optional[str] = None


def available(xyz: Tensor) -> bool:
    """Whether the kernel can sample ``xyz`` ``(B, N, 3)``: a CUDA tensor, Triton importable and
    working here, N within :data:`MAX_POINTS`."""
    return triton is not None and _broken is None and xyz.is_cuda and xyz.shape[1] <= MAX_POINTS


def disable(reason: str) -> None:
    """Fall back to the torch loop from now on, saying why once (the centres are the same)."""
    global _broken
    if _broken is None:
        warnings.warn(f"mafr: farthest point sampling falls back to the torch loop (slower on a GPU): {reason}",
                      RuntimeWarning, stacklevel=3)
    _broken = reason


def farthest_point_sample_kernel(xyz: Tensor, n_samples: int, start: int, skip: Optional[Tensor]) -> Tensor:
    """``(B, n_samples)`` int64 indices; ``xyz`` contiguous float32/64 ``(B, N, 3)``, arguments
    already checked by the caller. Asynchronous: nothing waits for the GPU."""
    b, n, _ = xyz.shape
    out = torch.empty(b, n_samples, dtype=torch.long, device=xyz.device)
    block = max(16, triton.next_power_of_2(n))
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    skip_arg = skip.to(torch.uint8).contiguous() if skip is not None else out  # unread without skip
    _fps[(b,)](xyz, skip_arg, out, n, n_samples, start, HAS_SKIP=skip is not None, BLOCK=block,
               num_warps=warps, enable_fp_fusion=False)
    return out
