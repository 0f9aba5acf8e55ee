"""`MAFRDetector`: the public estimator. fit on good parts, predict on new ones, save and share.

Conventions follow scikit-learn: ``fit`` returns ``self``, fitted state ends in ``_`` and is
checked before use, inputs are validated at the boundary and never modified. Saving and loading
follow huggingface_hub's ``ModelHubMixin``: ``config.json`` + ``model.safetensors`` in a
directory or Hub repo; nothing is ever unpickled.
"""

import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelHubMixin

from .config import MAFRConfig
from . import errors as _errors
from . import runtime as _runtime
from . import persistence as _persistence
from . import features as _features
from . import preparation as _preparation
from . import training as _training
from . import calibration as _calibration
from . import scoring as _scoring
from . import detectability as _detectability
from . import augment as _augment
from .results import judge as _judge
from .framing import Framing
from .io import as_sample
from .model import FusionAutoencoder
from .replay import ReplayStore, pool_moments, stack_parts
from .types import AnomalyResult

# Lives in errors.py with the other typed errors; re-exported here for older imports.
NotFittedError = _errors.NotFittedError
_with_threads = _runtime.with_threads


class MAFRDetector(
    ModelHubMixin,
    library_name="mafr",
    tags=["anomaly-detection", "multimodal", "point-cloud", "mafr"],
    repo_url="https://github.com/mafr-project/mafr",
    paper_url="https://arxiv.org/abs/2510.21793",
    coders={MAFRConfig: (_persistence.encode_config, _persistence.decode_config)},
):
    """Multimodal (RGB + 3D) anomaly detector: MAFR fusion restoration.

    >>> det = MAFRDetector(MAFRConfig(extractor_weights="random"))   # doctest: +SKIP
    >>> det.fit(good_parts, seed=0).predict(rgb, xyz).score           # doctest: +SKIP
    """

    def __init__(
        self,
        config: Optional[MAFRConfig] = None,
        *,
        device: Union[str, torch.device] = "auto",
        precision: str = "fp32",
        threads: Optional[int] = None,
    ) -> None:
        # Where and how to compute: not part of the fitted state, never saved (docs/performance.md).
        self.device = _runtime.resolve_device(device)
        self.precision = _runtime.check_precision(precision, self.device)
        self.threads = _runtime.check_threads(threads)
        self.config = config = _persistence.as_config(config)
        #: The frozen extractors (mafr.features), built on first use.
        self.extractors = _features.Extractors(config, self.device, self.precision)
        self.autoencoder_: Optional[FusionAutoencoder] = None
        self.stats_: dict[str, torch.Tensor] = {}
        self.threshold_: Optional[float] = None
        self.fit_info_: dict[str, Any] = {}
        self.metrics_: dict[str, Any] = {}
        #: Compact copy of fit features that :meth:`update` replays (``None``: cannot update).
        self.replay_: Optional[ReplayStore] = None
        #: What held-out good parts look like through this detector (docs/concepts.md,
        #: "Decisions"): ``edge_2d`` / ``edge_3d`` (residual levels by distance from the part's
        #: edge) and ``modality`` (map levels) for calibrated fusion, ``pixel_threshold`` for
        #: ``defect_mask``. Saved as ``calibration.*``.
        self.calibration_: dict[str, torch.Tensor] = {}
        #: How every part is put into the network's square (:class:`mafr.framing.Framing`), set by
        #: the fit parts: the window side (``config.framing="part"``) and the axis parts are turned
        #: to (``config.align="axis"``). Saved as ``framing.side`` and ``framing.axis``.
        self.framing_: Optional[Framing] = None

    # ------------------------------------------------------------------ extractors
    @property
    def rgb_extractor(self) -> torch.nn.Module:
        """The frozen RGB extractor (built on first use)."""
        return self.extractors.rgb

    @property
    def point_extractor(self) -> torch.nn.Module:
        """The frozen 3D extractor (built on first use)."""
        return self.extractors.points

    def to(self, device: Union[str, torch.device]) -> "MAFRDetector":
        """Move extractors, autoencoder and statistics to ``device`` (``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"mps"`` or ``"auto"``); returns the detector."""
        dev = _runtime.resolve_device(device)
        _runtime.check_precision(self.precision, dev)
        self.extractors.to(dev)
        if self.autoencoder_ is not None:
            self.autoencoder_.to(dev)
        self.stats_ = {k: v.to(dev) for k, v in self.stats_.items()}
        self.device = dev
        return self

    @property
    def is_fitted(self) -> bool:
        return self.autoencoder_ is not None and self.threshold_ is not None

    def _check_fitted(self, require_threshold: bool = True) -> None:
        if self.autoencoder_ is None or (require_threshold and self.threshold_ is None):
            raise NotFittedError(
                "this MAFRDetector is not fitted yet: call .fit(good_samples) or load one with "
                "MAFRDetector.from_pretrained(path_or_repo_id)"
            )

    def _normalise(self, feats: _features.Features) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.model.feature_norm != "none" and self.stats_["rgb_mean"].device != self.device:
            # fit and update derive them from moments kept on the CPU: moved once, not per call.
            self.stats_ = {k: v.to(self.device) for k, v in self.stats_.items()}
        return _scoring.normalise(feats, self.stats_, self.config.model.feature_norm, self.device)

    # ------------------------------------------------------------------ fit
    @_with_threads
    def fit(self, samples: Iterable[Any], *, seed: int = 0, progress: bool = True) -> "MAFRDetector":
        """Learn normal appearance and geometry from good parts; returns ``self``.

        Features are extracted once (frozen extractors), then the fusion autoencoder is trained
        on them with the composite loss, seeded and deterministic on CPU. A share of the fit set
        (``config.train.calibration_fraction``, at least one part when there are 3 or more) is held
        out to calibrate the decision threshold; see ``docs/concepts.md`` for the rule.
        """
        # Arguments are checked before any feature is extracted (minutes on a large fit set).
        seed = _runtime.check_seed(seed)
        if not isinstance(progress, (bool, np.bool_)):
            raise _errors.InputTypeError(f"progress must be True or False, got {progress!r}")
        items = _preparation.good_parts(samples, "fit", self.config.modalities)
        t0 = time.perf_counter()
        self._fit_extracted(items, self._extract_all(items, _preparation.fit_window(items, self.config), progress),
                            seed=seed, progress=progress)
        _detectability.check_at_fit(self, items, seed)  # on the held-out parts: what can it see?
        self.fit_info_["extract_seconds"] = round(time.perf_counter() - t0 - self.fit_info_["train_seconds"]
                                                  - self.fit_info_.get("check_seconds", 0.0), 3)
        self.fit_info_["fit_seconds"] = round(time.perf_counter() - t0, 3)
        self.fit_info_["history"][-1]["seconds"] = self.fit_info_["fit_seconds"]
        return self

    @_with_threads
    def extract_features(self, samples: Iterable[Any], *, progress: bool = False) -> list[_features.Features]:
        """Frozen-extractor features of each sample on the autoencoder's grid. They depend only on
        the extractor part of the config, so studies that vary training or scoring can reuse them
        (see ``benchmarks/ablations.py``). On a detector not yet framed (:attr:`framing_`), the
        first call sets the window and axis from its samples as :meth:`fit` would (they are
        taken to be the fit set); later calls frame and turn parts the same way."""
        items = [as_sample(s, self.config.modalities) for s in samples]
        if self.framing_ is None:
            self.framing_ = _preparation.fit_window(items, self.config)
        return self._extract_all(items, self.framing_, progress)

    def _extract_all(self, items: Sequence[Any], framing: Optional[float], progress: bool) -> list[_features.Features]:
        feats: list[_features.Features] = []
        for i, item in enumerate(_runtime.progress(items, desc="mafr: extracting features", enable=progress)):
            with _preparation.naming_part(i, len(items), item):
                prep = _preparation.prepare(item, self.config, self.device, framing)
            feats.extend(self.extractors.extract([prep]))
        return feats

    def _fit_extracted(self, items: Sequence[Any], feats: Sequence[_features.Features], *, seed: int = 0, progress: bool = False):
        """:meth:`_fit_features` with rotated copies of the training parts its split picks."""
        return self._fit_features(feats, seed=seed, progress=progress, copies=_augment.fit_copies(self, items, feats, seed, progress))

    def _fit_features(self, feats: Sequence[_features.Features], *, seed: int = 0, progress: bool = False,
                      copies: Sequence[_features.Features] = ()) -> "MAFRDetector":
        """:meth:`fit`'s second half on extracted features: hold parts out, normalise, train (on ``copies``
        of the training parts too, :mod:`mafr.augment`), calibrate on the parts alone, keep a replay store."""
        with _training.rollback_on_divergence(self):
            t0 = time.perf_counter()
            self.framing_ = _training.common_framing(feats)
            cal_idx, train_idx, gen = _training.fit_split(len(feats), self.config.train.calibration_fraction, seed)
            taught = [*(feats[i] for i in train_idx), *copies]
            moments = _training.feature_moments(taught)
            self.stats_ = _training.stats_from_moments(moments)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.autoencoder_ = _training.build_autoencoder(self.config, feats[0], self.device)
                losses = self._train(taught, gen, progress)
            self.autoencoder_.eval()
            scores = self._calibrate_fit_split(feats, cal_idx, train_idx)
            self.replay_ = ReplayStore.build(*stack_parts(feats), _training.held_out_mask(len(feats), cal_idx), moments,
                                             budget_bytes=self._replay_budget(), seed=seed)
            self.fit_info_ = _training.fit_record(
                n=len(feats), n_train=len(train_idx), n_calibration=len(cal_idx), scores=scores, seed=seed, losses=losses,
                seconds=round(time.perf_counter() - t0, 3), threshold=self.threshold_, replay_parts=len(self.replay_), rotated_copies=len(copies))
        return self

    def _calibrate_fit_split(self, feats: Sequence[_features.Features], cal_idx: Sequence[int],
                             train_idx: Sequence[int]) -> list[float]:
        """Calibrate as :meth:`fit` does on its split of ``feats``; the held-out parts' scores."""
        return self._calibrate_on(*_training.calibration_parts([feats[i] for i in cal_idx], [feats[i] for i in train_idx]))

    @_with_threads
    def update(self, samples: Iterable[Any], *, seed: int = 0, progress: bool = False) -> "MAFRDetector":
        """Incorporate new good parts into a fitted detector without a full refit and without
        forgetting the old ones; returns ``self``.

        The new parts are split like a fit set (a held-out share calibrates). Normalisation
        statistics become those of all training parts so far (pooled exactly from stored
        moments), the autoencoder is fine-tuned for ``config.train.update_steps`` steps on batches
        mixing new parts with parts replayed from the store, and the threshold is re-set by the
        fit rule from the held-out parts, old (stored) and new. The new parts then join the store
        (within ``config.train.replay_budget_mb``). See docs/concepts.md, "Updating a fitted
        detector".
        """
        self._check_fitted(require_threshold=False)
        _training.check_updatable(self.replay_)
        items = _preparation.good_parts(samples, "update", self.config.modalities)
        with _training.rollback_on_divergence(self):
            t0 = time.perf_counter()
            new, store = self.extract_features(items, progress=progress), self.replay_
            _training.check_updatable(store, new[0])
            cal_idx, train_idx, gen = _training.fit_split(len(new), self.config.train.calibration_fraction, seed)
            new_train, new_cal = [new[i] for i in train_idx], [new[i] for i in cal_idx]
            old_train, old_cal = _training.replayed(store)
            taught = new_train + _augment.rotated_features(self, [items[i] for i in train_idx], self.framing_, progress)
            moments = pool_moments(store.moments, _training.feature_moments(taught))
            self.stats_ = _training.stats_from_moments(moments)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                losses = self._train(taught, gen, progress, replay=old_train)
            self.autoencoder_.eval()
            before, on_training_parts = self.threshold_, not (old_cal or new_cal)
            scores = self._calibrate_on(*_training.calibration_parts(old_cal + new_cal, old_train + new_train))
            self.replay_ = store.merged(ReplayStore(*stack_parts(new), _training.held_out_mask(len(new), cal_idx), moments),
                                        budget_bytes=self._replay_budget(), seed=seed)
            self.fit_info_ = _training.update_record(
                self.fit_info_, n=len(new), n_train=len(new_train), n_calibration=len(new_cal), scores=scores,
                on_training_parts=on_training_parts, seed=seed, losses=losses, seconds=round(time.perf_counter() - t0, 3),
                threshold_before=before, threshold=self.threshold_, replay_parts=len(self.replay_))
        _detectability.check_at_fit(self, items, seed, event="update")  # what it can see now
        return self

    @_with_threads
    def calibrate(self, samples: Iterable[Any], *, progress: bool = False) -> "MAFRDetector":
        """Set the decision threshold from good parts not used in training (same rule as
        :meth:`fit`); useful for converted detectors, or after the line's conditions changed."""
        self._check_fitted(require_threshold=False)
        items = _preparation.good_parts(samples, "calibrate", self.config.modalities)
        scores = self._calibrate_on(self.extract_features(items, progress=progress))
        self.fit_info_ = {**self.fit_info_, "calibration_scores": scores, "n_calibration": len(scores), "calibrated_separately": True}
        return self

    @_with_threads
    def check(self, good_parts: Iterable[Any], *, seed: int = 0, kinds: Optional[Sequence[str]] = None,
              sizes: Optional[dict] = None, progress: bool = False) -> _detectability.DetectabilityReport:
        """What this detector can see: defects implanted (:func:`mafr.datasets.implant_defect`) into
        good parts it was *not* fitted on, scored against those parts as they are; per kind and
        size the AUROC and the recall at its own threshold, and ``blind`` (overall AUROC under
        0.70). See docs/concepts.md, "What a detector can see"."""
        self._check_fitted(require_threshold=False)
        return _detectability.check(self, _preparation.good_parts(good_parts, "check", self.config.modalities),
                                    seed=_runtime.check_seed(seed), kinds=kinds, sizes=sizes, progress=progress)

    @_with_threads
    def score_features(self, feats: Sequence[_features.Features]) -> list[float]:
        """Image scores of already extracted features (same rule as :meth:`predict`)."""
        self._check_fitted(require_threshold=False)
        return [float(s) for s in self._score_features(list(feats))[3]]

    def _train(self, train: Sequence[_features.Features], gen: torch.Generator, progress: bool,
               replay: Sequence[_features.Features] = ()) -> list[float]:
        """Fit's training (``replay``: an update's), on this detector's normalised features."""
        self.autoencoder_.train()
        inputs = [self._normalise(f) for f in [*train, *replay]]
        return _training.train_autoencoder(
            self.autoencoder_, torch.stack([r for r, _ in inputs]), torch.stack([x for _, x in inputs]),
            self.config.train, gen, n_new=len(train), n_replay=len(replay), device=self.device,
            precision=self.precision, progress=progress)

    def _replay_budget(self) -> int:
        return int(self.config.train.replay_budget_mb * 1e6)

    def _calibrate_on(self, feats: Sequence[_features.Features], training: Sequence[_features.Features] = ()) -> list[float]:
        """Calibrate levels and thresholds on held-out good parts' features (:func:`mafr.calibration.calibrate`)."""
        self.calibration_, self.threshold_, scores = _calibration.calibrate(
            feats, training, self.config.scoring, self._residual_grids, self._maps, self._context_channels(),
            self.config.modalities)
        return scores

    # ------------------------------------------------------------------ predict
    def _residual_grids(self, feats: Sequence[_features.Features]) -> _scoring.Residuals:
        return _scoring.restore(self.autoencoder_, [self._normalise(f) for f in feats], feats, self.device,
                                _runtime.autocast(self.device, self.precision))

    def _context_channels(self) -> int:
        """Trailing 3D channels that are restored but not scored (the offline extractor's
        curvature); a detector judged on images alone never builds its 3D extractor to ask."""
        return getattr(self.point_extractor, "context_channels", 0) if self.config.modalities != "rgb" else 0

    def _maps(self, res: _scoring.Residuals, calibration: Optional[dict] = None):
        return _scoring.maps_from_residuals(res, self.calibration_ if calibration is None else calibration,
                                            self.config.scoring, self.config.modalities, self._context_channels())

    @torch.inference_mode()
    def _score_features(self, feats: Sequence[_features.Features]):
        return self._maps(self._residual_grids(feats))

    def _results(self, preps: Sequence[_preparation.Prepared], feats: Sequence[_features.Features]) -> list[AnomalyResult]:
        return _detectability.flag_if_blind(_judge(preps, *self._score_features(feats), self.threshold_,
                                                   self.calibration_, self.config, self.state_tensors), self.fit_info_)

    @_with_threads
    def predict(self, rgb: Any = None, xyz: Any = None) -> AnomalyResult:
        """Score one part. ``rgb``: H x W x 3 uint8 array, PIL image or path; ``xyz``: organized
        map, path, :class:`~mafr.PointCloud` or :class:`~mafr.DepthMap`. A detector of one
        modality (``config.modalities``) reads only that one: ``predict(rgb)``, ``predict(xyz=...)``."""
        self._check_fitted()
        prep = _preparation.prepare((rgb, xyz), self.config, self.device, self.framing_)
        return self._results([prep], self.extractors.extract([prep]))[0]

    @_with_threads
    def predict_batch(self, samples: Iterable[Any], *, batch_size: int = 8, progress: bool = False) -> list[AnomalyResult]:
        """Score many parts; RGB features are computed ``batch_size`` images at a time."""
        self._check_fitted()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = [as_sample(s, self.config.modalities) for s in samples]
        results: list[AnomalyResult] = []
        chunks = range(0, len(items), batch_size)
        for start in _runtime.progress(chunks, total=len(chunks), desc="mafr: predicting", enable=progress):
            preps = [_preparation.prepare(s, self.config, self.device, self.framing_) for s in items[start : start + batch_size]]
            results.extend(self._results(preps, self.extractors.extract(preps)))
        return results

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything fitted, as named tensors (what ``model.safetensors`` holds)."""
        self._check_fitted()
        return _persistence.state_tensors(self)

    def save_pretrained(self, save_directory: Union[str, Path], *, include_extractors: bool = False, config: Any = None,
                        repo_id: Optional[str] = None, push_to_hub: bool = False,
                        model_card_kwargs: Optional[dict] = None, **push_to_hub_kwargs) -> Optional[str]:
        """Write ``config.json``, ``model.safetensors`` and a model card (``README.md``) to a
        directory. Extractor weights are referenced by name, not copied, unless
        ``include_extractors=True`` (then ``rgb_extractor.safetensors`` and ``point_extractor/``
        make the directory self-contained; weight-free extractors have nothing to copy)."""
        self._check_fitted()
        if not isinstance(save_directory, (str, os.PathLike)):
            raise _errors.InputTypeError(f"save_directory must be a str or path, got {type(save_directory).__name__}")
        # Not huggingface_hub's save_pretrained: it deletes config.json before writing, so a save
        # killed midway would destroy the previous detector. Ours is atomic (docs/api.md).
        _persistence.save(self, Path(save_directory), include_extractors)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], *, force_download: bool = False, token=None,
                        cache_dir=None, local_files_only: bool = False, revision: Optional[str] = None,
                        trust_config: bool = False, **model_kwargs) -> "MAFRDetector":
        """Load a saved detector from a directory or a Hugging Face Hub repo id, verifying it
        (checksum, finite tensors, shapes, statistics, threshold; docs/api.md, "Saved detectors").

        A config that names extractors, ``timm`` keywords or weight locations outside mafr's
        allow-list is refused (:class:`mafr.UntrustedConfigError`) unless ``trust_config=True``.
        """
        return cls._from_pretrained(
            model_id=_persistence.model_id(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, trust_config=trust_config, **model_kwargs,
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        """ModelHubMixin's hook (push_to_hub saves through it)."""
        _persistence.save(self, Path(save_directory))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: Optional[MAFRConfig] = None, **kwargs) -> "MAFRDetector":
        """ModelHubMixin's hook: :func:`mafr.persistence.load` (the saved config is the one used)."""
        return _persistence.load(cls, model_id, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload ``config.json``, ``model.safetensors`` and the model card to a Hub repo
        (``huggingface_hub`` conventions: token from ``hf auth login``, ``private=``, ``branch=``...)."""
        self._check_fitted()  # before the repo is created, not after
        return super().push_to_hub(repo_id, **kwargs)

    # ------------------------------------------------------------------ model card
    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        from .hub import model_card

        return model_card(self)

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"MAFRDetector(preset={self.config.preset!r}, grid={self.config.grid_size}, {state})"
