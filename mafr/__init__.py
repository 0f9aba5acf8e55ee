"""mafr: multimodal (RGB + 3D) industrial anomaly detection with MAFR fusion restoration.

>>> import mafr
>>> det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline"))   # doctest: +SKIP
>>> det.fit(good_parts, seed=0)                                     # doctest: +SKIP
>>> det.predict(rgb, xyz).score                                     # doctest: +SKIP
"""

__version__ = "0.1.0"

from .config import CONFIG_VERSION, MAFRConfig  # noqa: E402
from .detector import MAFRDetector  # noqa: E402
from .errors import (  # noqa: E402
    BlindDetectorWarning,
    CorruptModelError,
    DegenerateInputWarning,
    InputNotFoundError,
    InputTypeError,
    InvalidInputError,
    MAFRError,
    ModelNotFoundError,
    NotFittedError,
    PartRemovedWarning,
    TrainingDivergedError,
    UnreadableFileError,
    UntrustedConfigError,
)
from .extractors.rgb import WeightsUnavailableError  # noqa: E402
from .types import AnomalyResult, DepthMap, PointCloud, Sample  # noqa: E402
from .detectability import DefectDetectability, DetectabilityReport  # noqa: E402

__all__ = [
    "MAFRDetector",
    "MAFRConfig",
    "Sample",
    "PointCloud",
    "DepthMap",
    "AnomalyResult",
    "MAFRError",
    "InvalidInputError",
    "InputTypeError",
    "UnreadableFileError",
    "InputNotFoundError",
    "CorruptModelError",
    "ModelNotFoundError",
    "UntrustedConfigError",
    "NotFittedError",
    "TrainingDivergedError",
    "DegenerateInputWarning",
    "PartRemovedWarning",
    "BlindDetectorWarning",
    "DetectabilityReport",
    "DefectDetectability",
    "WeightsUnavailableError",
    "CONFIG_VERSION",
    "__version__",
]
