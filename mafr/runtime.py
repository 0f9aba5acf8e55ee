"""Where and how a detector computes: device, mixed precision and CPU threads.

None of this is saved with a detector: the same saved files run on a laptop CPU or a GPU
(docs/performance.md, "Devices, precision and threads").
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import re
from typing import Iterator, Optional, Union

import torch

from .errors import InputTypeError, InvalidInputError

__all__ = ["PRECISIONS", "resolve_device", "check_precision", "autocast", "check_threads", "num_threads", "default_cli_threads"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps|auto)$")
THREADS_ENV = "MAFR_THREADS"

DeviceLike = Union[str, torch.device]


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or
    a ``torch.device`` are checked against what this machine has."""
    if isinstance(device, torch.device):
        spec = str(device)
    elif isinstance(device, str):
        spec = device.strip().lower()
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if not _DEVICE.match(spec):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} was asked for, but torch sees no CUDA GPU here (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'}); use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but the Metal backend is not available here; use 'cpu'")
    return dev


def check_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` everywhere; ``"bf16"`` on CPU, on CUDA GPUs that support it and on MPS;
    ``"fp16"`` on CUDA and MPS (CPUs have no fast fp16 path)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU (cuda or mps); on CPU use 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use 'fp16' or 'fp32'")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the learned networks; fp32 runs exactly as without it."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def check_threads(threads: Optional[int]) -> Optional[int]:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None (torch's setting), got {threads!r}")
    return threads


@contextlib.contextmanager
def num_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's intra-op thread count set for the block and restored after it (``None``: unchanged)."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_threads(method):
    """Run an estimator's public method with its ``threads`` setting, restoring torch's after."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with num_threads(self.threads):
            return method(self, *args, **kwargs)

    return wrapper


def check_seed(seed: object) -> int:
    """A fit's or update's seed: an integer in ``[0, 2**63)`` (torch's generator range)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputTypeError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) < 2**63:
        raise InvalidInputError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_cli_threads() -> int:
    """``$MAFR_THREADS``, else half the cores this process may use (at most 8): torch's default of
    every core is 5-20x slower than one thread when another process is busy on those cores."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"${THREADS_ENV} must be a positive integer, got {env!r}")
        return int(env)
    return max(1, min(8, _available_cores() // 2))


def progress(iterable, *, total=None, desc: str = "", enable: bool = True):
    """huggingface_hub's tqdm over ``iterable`` (off unless ``enable``); bars on long work."""
    from huggingface_hub.utils import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enable, leave=False)
