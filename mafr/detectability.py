"""What a fitted detector can see: defects implanted into good parts it was not fitted on.

:meth:`mafr.MAFRDetector.check` and the check :meth:`~mafr.MAFRDetector.fit` runs on its held-out
parts (docs/concepts.md, "What a detector can see"). Each good part is scored as it is and with
one implanted defect of each kind (:mod:`mafr.datasets.implant`, at physical sizes); the report
says, per kind and size, how well the scores separate the implanted parts from the good ones
(AUROC) and how many the detector's own decision catches (recall). A detector whose overall
AUROC is under :data:`BLIND_BELOW` is ``blind``: it cannot tell its default-size defects from
good parts, and saying "good" about a part means little.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .datasets.implant import (COLOUR_ONLY, DEFAULT_SIZES_MM, DEFAULT_SIZES_PX, GEOMETRY_ONLY, KINDS, implant_defect,
                               kinds_for, part_pixels)
from .io import as_sample, load_rgb, load_xyz
from .metrics import _auroc_from_scores
from .errors import BlindDetectorWarning, InvalidInputError
from .preparation import depth_image, describe
from .training import held_out_split
from .types import Sample

#: Overall AUROC under this: the detector cannot separate its default-size defects from good parts.
BLIND_BELOW = 0.70
#: The fewest good parts a check needs (fit skips it with fewer held-out parts).
MIN_PARTS = 2


class DefectDetectability(BaseModel):
    """How well one kind and size of implanted defect is seen."""

    model_config = ConfigDict(frozen=True)

    kind: str
    size: float
    unit: str  # "mm" on parts with 3D, "px" on images alone
    #: Implanted parts' scores against the good parts' (0.5: chance, 1: every one above every good one).
    auroc: float
    #: Share of the implanted parts the detector's decision calls anomalous (``None``: no threshold).
    recall: Optional[float]
    n: int


class DetectabilityReport(BaseModel):
    """The result of :meth:`mafr.MAFRDetector.check`."""

    model_config = ConfigDict(frozen=True)

    #: Every implanted part against every good part.
    auroc: float
    #: ``auroc < BLIND_BELOW``: the detector cannot see its default-size defects.
    blind: bool
    per_type: tuple[DefectDetectability, ...]
    #: Good parts checked, and the share of them its decision calls anomalous (``None``: no threshold).
    n_good: int
    false_alarm_rate: Optional[float]
    seed: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready (what the fit history, the model card and ``mafr info`` keep)."""
        return self.model_dump()

    def table(self) -> str:
        """A plain-text table: one row per kind and size, then the overall figures."""
        rows = [f"{'defect':<10} {'size':>8}  {'AUROC':>6}  {'recall':>6}  {'n':>4}"]
        for t in self.per_type:
            recall = "-" if t.recall is None else f"{t.recall:.2f}"
            rows.append(f"{t.kind:<10} {t.size:>5.1f} {t.unit:<2}  {t.auroc:>6.3f}  {recall:>6}  {t.n:>4}")
        fa = "-" if self.false_alarm_rate is None else f"{self.false_alarm_rate:.2f}"
        rows.append(f"overall AUROC {self.auroc:.3f} on {self.n_good} good parts (false alarms {fa})"
                    + ("  BLIND: cannot tell these defects from good parts" if self.blind else ""))
        return "\n".join(rows)


def _arrays(item: Any, modalities: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A good part's image and scan as far as it has them: the scan gives sizes in millimetres
    even to a detector that judges the image alone."""
    sample = as_sample(item, modalities)
    if sample.rgb is None:  # a scan alone: its grey rendering is the picture
        xyz = load_xyz(sample.xyz, None)
        return depth_image(xyz), xyz
    # Read once, on the image's grid: a PointCloud can only be projected onto one.
    rgb = load_rgb(sample.rgb)
    return rgb, None if sample.xyz is None else load_xyz(sample.xyz, rgb.shape[:2])


def _as_input(rgb: np.ndarray, xyz: Optional[np.ndarray], modalities: str, name: str) -> Sample:
    if modalities == "rgb":
        return Sample(rgb=rgb, xyz=None, name=name)
    if modalities == "xyz":
        return Sample(rgb=None, xyz=xyz, name=name)
    return Sample(rgb=rgb, xyz=xyz, name=name)


def _flagged_share(results: Sequence[Any]) -> Optional[float]:
    """Share of ``results`` the detector's decision calls anomalous; ``None`` without a decision."""
    decided = [r.is_anomalous for r in results]
    return None if any(d is None for d in decided) else float(np.mean(decided))


def _check_kinds(kinds: Optional[Sequence[str]], sizes: Optional[dict], modalities: str) -> tuple[str, ...]:
    """The kinds to implant, refusing what the detector cannot see by construction (a bump for a
    detector of images alone, a stain for one of scans alone) and sizes for kinds not asked for."""
    chosen = tuple(kinds) if kinds is not None else kinds_for(modalities)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise InvalidInputError(f"kinds must be a non-empty selection of {KINDS}, got {list(chosen)}")
    unseen = {"rgb": GEOMETRY_ONLY, "xyz": COLOUR_ONLY}.get(modalities, ())
    if any(k in unseen for k in chosen):
        raise InvalidInputError(
            f"a detector of modalities={modalities!r} cannot see {[k for k in chosen if k in unseen]} by construction "
            f"(they change only the {'geometry' if modalities == 'rgb' else 'colour'}); leave them out")
    extra = sorted(set(sizes or {}) - set(chosen))
    if extra:
        raise InvalidInputError(f"sizes given for kinds not checked: {extra} (kinds: {list(chosen)})")
    return chosen


def check(det, good_parts: Sequence[Any], *, seed: int = 0, kinds: Optional[Sequence[str]] = None,
          sizes: Optional[dict[str, Sequence[float]]] = None, progress: bool = False) -> DetectabilityReport:
    """Implant each ``kind`` (default: every kind the detector's modalities could show) at each
    size (default: one, ``DEFAULT_SIZES_MM``; on images alone ``DEFAULT_SIZES_PX`` in pixels of the
    network's input, so in the image's own pixels times its longer side over ``rgb.image_size``,
    taken from the first part, never below the defaults) into every good part, seeded, and score them with ``det`` against
    the good parts as they are."""
    modalities = det.config.modalities
    parts = list(good_parts)
    if len(parts) < MIN_PARTS:
        raise ValueError(f"a detectability check needs at least {MIN_PARTS} good parts, got {len(parts)}")
    kinds = _check_kinds(kinds, sizes, modalities)
    loaded = [_arrays(p, modalities) for p in parts]
    if modalities != "xyz" and any(xyz is None for _, xyz in loaded):
        # One unit for every part (a report row has one size): pixels when any part has no scan.
        loaded = [(rgb, None) for rgb, _ in loaded]
        kinds = tuple(k for k in kinds if k not in GEOMETRY_ONLY)  # no geometry to change
    default_sizes = DEFAULT_SIZES_MM
    if loaded[0][1] is None:  # pixels of what the network sees, in the image's own pixels
        scale = max(np.asarray(loaded[0][0]).shape[:2]) / det.config.rgb.image_size
        default_sizes = {k: round(v * max(scale, 1.0), 1) for k, v in DEFAULT_SIZES_PX.items()}
    good = det.predict_batch([_as_input(r, x, modalities, describe(p)) for (r, x), p in zip(loaded, parts)],
                             progress=progress)
    good_scores = np.array([r.score for r in good])
    false_alarms = _flagged_share(good)
    masks = [part_pixels(rgb, xyz) for rgb, xyz in loaded]  # the support is found once per part
    per_type, all_scores = [], []
    for k, kind in enumerate(kinds):
        for size in (sizes or {}).get(kind, (default_sizes[kind],)):
            implanted = []
            for i, ((rgb, xyz), p) in enumerate(zip(loaded, parts)):
                try:
                    defect = implant_defect(rgb, xyz, kind, size=size, seed=seed * 1_000_003 + 7919 * i + 31 * k,
                                            part=masks[i])
                except ValueError as err:
                    raise InvalidInputError(f"good part {i + 1} of {len(parts)} ({describe(p)}): {err}") from err
                implanted.append(_as_input(defect.rgb, defect.xyz, modalities, f"{describe(p)} + {kind}"))
            results = det.predict_batch(implanted, progress=progress)
            scores = np.array([r.score for r in results])
            per_type.append(DefectDetectability(kind=kind, size=float(size), unit=defect.unit,
                                                auroc=_auroc_from_scores(scores, good_scores),
                                                recall=_flagged_share(results),
                                                n=len(scores)))
            all_scores.append(scores)
    auroc = _auroc_from_scores(np.concatenate(all_scores), good_scores)
    return DetectabilityReport(auroc=auroc, blind=auroc < BLIND_BELOW, per_type=tuple(per_type), n_good=len(parts),
                               false_alarm_rate=false_alarms, seed=seed)


def check_at_fit(det, items: Sequence[Any], seed: int, event: str = "fit") -> Optional[DetectabilityReport]:
    """The check :meth:`~mafr.MAFRDetector.fit` (or ``update``, ``event="update"``) runs on the
    parts it held out (the split ``seed`` drew), when it held out at least :data:`MIN_PARTS`;
    recorded in the fit history with the event it followed, warned about when blind. An update
    with too few held-out parts keeps the earlier report (still the best evidence, and a blind
    detector stays flagged)."""
    held, _ = held_out_split(len(items), det.config.train.calibration_fraction, torch.Generator().manual_seed(seed))
    if len(held) < MIN_PARTS:
        if event == "fit":
            det.fit_info_["detectability"] = None
        return None
    t0 = time.perf_counter()
    report = check(det, [items[i] for i in held], seed=seed)
    det.fit_info_["detectability"] = {**report.summary(), "after": event}
    det.fit_info_["check_seconds"] = round(time.perf_counter() - t0, 3)
    if report.blind:
        warnings.warn(
            f"this detector is blind: on {report.n_good} good parts it did not fit on, implanted defects of the "
            f"default sizes score AUROC {report.auroc:.2f} against the good parts (under {BLIND_BELOW}); its 'good' "
            "means little. Its results carry the flag 'blind_detector'. See report.table() via det.check(good_parts) "
            "and docs/concepts.md, 'What a detector can see'",
            BlindDetectorWarning, stacklevel=4)  # the user's fit or update call
    return report


def flag_if_blind(results: list, fit_info: dict) -> list:
    """Results of a detector whose check found it blind carry the flag ``"blind_detector"``."""
    if not (fit_info.get("detectability") or {}).get("blind"):
        return results
    return [r.model_copy(update={"flags": (*r.flags, "blind_detector")}) for r in results]
