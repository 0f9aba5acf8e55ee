"""Typed errors and warnings: what a detector raises when it cannot judge a part.

mafr fails closed (docs/api.md, "Errors"): input that cannot be judged and a saved detector that
does not verify raise one of these, never a result with ``is_anomalous=False``. Each subclasses
the builtin that older callers already catch (``ValueError``, ``OSError``, ``RuntimeError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class MAFRError(Exception):
    """Base of every error mafr raises on purpose. ``path`` names the file involved, if any."""

    def __init__(self, message: str, *, path: Optional[Union[str, Path]] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class InvalidInputError(MAFRError, ValueError):
    """An input part (image, scan, point cloud, argument) that cannot be judged."""


class UnreadableFileError(InvalidInputError, OSError):
    """An input file exists but is not a readable image or scan (truncated, not an image, not a
    TIFF...). The message names the file and what is wrong with it."""

    def __str__(self) -> str:  # OSError would otherwise format its own args
        return str(self.args[0]) if self.args else ""


class InputTypeError(InvalidInputError, TypeError):
    """An input of the wrong kind or dtype (a list where an array was expected, float RGB...)."""


class InputNotFoundError(UnreadableFileError, FileNotFoundError):
    """An input file or detector directory that does not exist."""


class CorruptModelError(MAFRError, ValueError):
    """A saved detector (or one in memory) failed verification: checksum, missing or non-finite
    tensors, shapes that do not fit the config, a non-positive statistic, a NaN threshold, a
    malformed ``config.json``. Never ignore it: the detector's judgements would be meaningless."""


class ModelNotFoundError(MAFRError, FileNotFoundError):
    """A detector directory, Hub repo or one of its required files does not exist."""

    def __str__(self) -> str:  # OSError would otherwise format its own args
        return str(self.args[0]) if self.args else ""


class UntrustedConfigError(CorruptModelError):
    """A loaded ``config.json`` asks for an extractor, keyword argument or weights location
    outside mafr's allow-list; load with ``trust_config=True`` only if you trust its author."""


class NotFittedError(MAFRError, RuntimeError):
    """The detector was used before :meth:`MAFRDetector.fit` (or loading a fitted one)."""


class DegenerateInputWarning(UserWarning):
    """The part was judged, but its input is suspicious (little valid 3D, a tiny image, a
    detector without a threshold); the result's ``flags`` say which."""


class PartRemovedWarning(DegenerateInputWarning):
    """Preprocessing (``mafr.datasets.preprocess_sample``) would take the part with its support,
    or cannot tell them apart; the message gives the share of measured pixels kept and the
    estimated part height, and names the file where there is one."""


class BlindDetectorWarning(UserWarning):
    """The detector cannot tell defects of the default sizes, implanted into good parts it did not
    fit on, from those good parts (:meth:`MAFRDetector.check`, overall AUROC under 0.70): its
    "good" means little. Raised by ``fit``; its results carry the flag ``"blind_detector"``."""


class TrainingDivergedError(MAFRError, RuntimeError):
    """Training (``fit`` or ``update``) produced a non-finite loss or non-finite calibration
    scores: the detector it would leave cannot judge a part, so none is returned. The message
    names the step; ``precision="fp32"`` or a lower ``train.lr`` are the usual remedies."""


class NoReplayStoreError(MAFRError, RuntimeError):
    """:meth:`MAFRDetector.update` on a detector without a replay store (converted from reference
    checkpoints, saved by an older mafr, or fitted with ``train.replay_budget_mb=0``): without
    the old features it would forget them. Refit on all good parts instead."""
