"""Datasets: MVTec 3D-AD and Eyecandies readers, a synthetic generator with a tuning and a report set, preprocessing."""

from .eyecandies import EYECANDIES_CATEGORIES, Eyecandies, eyecandies_intrinsics
from .implant import KINDS as IMPLANT_KINDS, Implanted, implant_defect
from .mvtec3d import MVTec3D, categories, load_xyz_tiff
from .preprocess import (
    keep_largest_component,
    pad_to_square,
    preprocess_dataset,
    preprocess_sample,
    remove_background_plane,
)
from .synthetic import (
    BENCHMARK_DIFFICULTIES,
    BENCHMARK_SPLITS,
    CATEGORIES,
    DEFECT_SPECS,
    HARD_DEFECT_SPECS,
    DEFECTS,
    DefectSpec,
    camera_intrinsics,
    generate_sample,
    write_benchmark,
    write_dataset,
)

__all__ = [
    "IMPLANT_KINDS",
    "Implanted",
    "implant_defect",
    "BENCHMARK_DIFFICULTIES",
    "BENCHMARK_SPLITS",
    "CATEGORIES",
    "DEFECT_SPECS",
    "HARD_DEFECT_SPECS",
    "DefectSpec",
    "DEFECTS",
    "EYECANDIES_CATEGORIES",
    "Eyecandies",
    "MVTec3D",
    "camera_intrinsics",
    "categories",
    "eyecandies_intrinsics",
    "generate_sample",
    "keep_largest_component",
    "load_xyz_tiff",
    "pad_to_square",
    "preprocess_dataset",
    "preprocess_sample",
    "remove_background_plane",
    "write_benchmark",
    "write_dataset",
]
