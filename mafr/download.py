"""Point-MAE's published checkpoint, fetched on first use, hash-checked and converted once.

The paper preset needs Point-MAE's ShapeNet pre-training checkpoint. With default weights and no
converted copy in the cache, :func:`ensure_pointmae` downloads ``pretrain.pth`` from the Point-MAE
GitHub release, checks its SHA-256, converts it to safetensors (``torch.load(weights_only=True)``,
see :mod:`mafr.convert`) and keeps only the converted form. ``mafr download pointmae`` does the
same ahead of time. Everything happens in a staging folder that is moved into place only when
complete, so a failed, partial or wrong download leaves nothing in the cache (docs/getting-started.md).

Where things go: ``$MAFR_POINTMAE_WEIGHTS`` if set (the converted encoder itself), else
``<cache>/pointmae`` with ``<cache>`` = ``$MAFR_CACHE``, else ``$XDG_CACHE_HOME/mafr``, else
``~/.cache/mafr``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from .extractors.rgb import WeightsUnavailableError

__all__ = [
    "POINTMAE_URL",
    "POINTMAE_SHA256",
    "cache_root",
    "pointmae_dir",
    "download_pointmae",
    "ensure_pointmae",
]

POINTMAE_URL = "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth"
POINTMAE_SHA256 = "27ded932bb0a2625d5a8eb006df199b2578598c774aee6d86b985300b6a5fd20"
CACHE_ENV = "MAFR_CACHE"
POINTMAE_ENV = "MAFR_POINTMAE_WEIGHTS"
WEIGHTS_NAME = "model.safetensors"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "ON", "YES", "TRUE"}

PathLike = Union[str, os.PathLike]


def cache_root() -> Path:
    """``$MAFR_CACHE``, else ``$XDG_CACHE_HOME/mafr``, else ``~/.cache/mafr``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mafr"


def pointmae_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """Folder of the converted Point-MAE encoder: ``cache_dir/pointmae`` when given, else
    ``$MAFR_POINTMAE_WEIGHTS``, else ``cache_root()/pointmae``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "pointmae"
    env = os.environ.get(POINTMAE_ENV)
    if env:
        return Path(env).expanduser()
    return cache_root() / "pointmae"


def _offline() -> bool:
    # Read at call time (huggingface_hub reads it once at import), so a test or a notebook can
    # switch it.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _manual_steps(target: Path, url: str, sha256: str) -> str:
    return (
        f"To install it by hand: on a machine with network, download {url} (SHA-256 {sha256}) and run "
        f"`mafr convert pointmae pretrain.pth {target}` here, or run `mafr download pointmae --cache-dir DIR` "
        f"there and copy DIR/pointmae to {target} (or point $MAFR_POINTMAE_WEIGHTS at it). Alternatives: "
        "MAFRConfig(points={'weights': DIR_OR_REPO_ID}), preset='offline' for weight-free features, or "
        "extractor_weights='random' for tests."
    )


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _HEX64.match(sha256.strip().lower()):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return sha256.strip().lower()


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float) -> tuple[str, int]:
    """Stream ``url`` to ``dest``; returns (SHA-256 hex, bytes). Raises on a short read."""
    from huggingface_hub.utils import tqdm

    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"mafr/{__version__}"})
    digest, got = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with open(dest, "wb") as f, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024,
            desc="mafr: downloading Point-MAE", disable=not progress, leave=False,
        ) as bar:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise http.client.IncompleteRead(b"", total - got)
    return digest.hexdigest(), got


def download_pointmae(
    *,
    url: Optional[str] = None,
    sha256: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download Point-MAE's ``pretrain.pth``, check its SHA-256, convert it and return the folder
    of the converted encoder (``model.safetensors`` + ``config.json``).

    Returns at once when the converted encoder is already there. ``url`` defaults to
    :data:`POINTMAE_URL` (pass an internal mirror's), ``sha256`` to the published file's hash.
    Nothing is left in the cache when anything fails; the error says what happened.
    """
    url = POINTMAE_URL if url is None else url
    sha256 = _check_sha256(POINTMAE_SHA256 if sha256 is None else sha256)
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ValueError(f"url must be an http(s) URL, got {url!r}")
    target = pointmae_dir(cache_dir)
    if (target / WEIGHTS_NAME).is_file():
        return target
    if _offline():
        raise WeightsUnavailableError(
            f"no converted Point-MAE weights at {target}, and HF_HUB_OFFLINE=1 forbids downloading them. "
            + _manual_steps(target, url, sha256)
        )
    if target.exists() and any(target.iterdir()):
        raise WeightsUnavailableError(
            f"{target} exists but holds no {WEIGHTS_NAME}; remove it (or choose another folder) and retry"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Staged next to the target so the final move is a rename on one file system.
    staging = Path(tempfile.mkdtemp(prefix=".pointmae-download-", dir=target.parent))
    try:
        raw = staging / "pretrain.pth"
        try:
            digest, size = _fetch(url, raw, progress=progress, timeout=timeout)
        except http.client.IncompleteRead as err:
            raise WeightsUnavailableError(
                f"the download of {url} stopped early ({err.expected} bytes missing); nothing was kept in "
                f"{target.parent}. Retry, or: " + _manual_steps(target, url, sha256)
            ) from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else str(
                getattr(err, "reason", err)
            )
            raise WeightsUnavailableError(
                f"no converted Point-MAE weights at {target}, and downloading {url} failed ({reason}); "
                "nothing was kept in the cache. " + _manual_steps(target, url, sha256)
            ) from err
        if digest != sha256:
            raise WeightsUnavailableError(
                f"the file downloaded from {url} ({size} bytes) has SHA-256 {digest}, expected {sha256}: it is "
                "not the published Point-MAE checkpoint (or it was corrupted on the way), so it was deleted "
                "and nothing was kept in the cache"
            )
        from .extractors.pointmae_checkpoint import convert_pointmae_checkpoint

        convert_pointmae_checkpoint(raw, staging / "pointmae")
        raw.unlink()  # only the converted form is kept
        try:
            os.replace(staging / "pointmae", target)
        except OSError:
            # Another process finished the same download first: theirs is as good as ours.
            if not (target / WEIGHTS_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_pointmae(*, progress: bool = True) -> Path:
    """The converted default Point-MAE encoder, downloaded on first use (see module docs)."""
    return download_pointmae(progress=progress)
