"""Fit on a folder of good parts, score a folder of new parts, write a panel per part. Runs offline.

What it shows: the on-disk convention the `mafr` command line also uses (an RGB image
``NAME.png`` next to its organized point cloud ``NAME.tiff``, matched by file stem), fitting and
saving with the Python API, reloading the saved detector, and scoring a whole folder.
Extractor weights: none. The ``"offline"`` preset uses weight-free colour/gradient statistics (RGB)
and multi-scale surface deviation (3D), so nothing is downloaded. The parts are synthetic (``mafr.datasets.generate_sample``).

    python examples/folder_of_parts.py [--out folder_of_parts_out] [--category puck]

The same with the command line, on the folders this script writes:

    mafr fit folder_of_parts_out/good detector --preset offline
    mafr predict detector folder_of_parts_out/new --overlay panels
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tifffile
from PIL import Image

import mafr
from mafr.datasets import generate_sample


def write_part(folder: Path, name: str, sample: mafr.Sample) -> None:
    """``NAME.png`` (H x W x 3 uint8) + ``NAME.tiff`` (H x W x 3 float32 xyz in metres, zeros = no point)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.rgb).save(folder / f"{name}.png")
    tifffile.imwrite(folder / f"{name}.tiff", sample.xyz, photometric="rgb")


def parts_in(folder: Path) -> list[tuple[Path, Path]]:
    """(rgb, xyz) path pairs of a folder, matched by stem."""
    return [(png, png.with_suffix(".tiff")) for png in sorted(folder.glob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("folder_of_parts_out"))
    parser.add_argument("--category", default="puck", choices=mafr.datasets.CATEGORIES)
    parser.add_argument("--n-good", type=int, default=10, help="good parts to fit on")
    args = parser.parse_args()

    # 1. Two folders on disk: good parts to learn from, and new parts to check.
    good_dir, new_dir = args.out / "good", args.out / "new"
    for i in range(args.n_good):
        write_part(good_dir, f"part_{i:03d}", generate_sample(args.category, seed=i))
    truth = {}
    for i, kind in enumerate(["good", "good", "good", "bump", "dent", "stain", "crack", "hole"]):
        name = f"new_{i:02d}"
        write_part(new_dir, name, generate_sample(args.category, None if kind == "good" else kind, seed=1000 + i))
        truth[name] = kind
    print(f"wrote {args.n_good} good parts to {good_dir}/ and {len(truth)} new parts to {new_dir}/")

    # 2. Fit with weight-free extractors, save, and reload as a user of the saved detector would.
    config = mafr.MAFRConfig(preset="offline")
    t0 = time.perf_counter()
    detector = mafr.MAFRDetector(config).fit(parts_in(good_dir), seed=0, progress=False)
    detector.save_pretrained(args.out / "detector")
    print(f"fitted in {time.perf_counter() - t0:.1f} s; threshold {detector.threshold_:.3f}; "
          f"saved to {args.out / 'detector'}/")
    detector = mafr.MAFRDetector.from_pretrained(args.out / "detector")

    # 3. Score the new folder and write one panel per part (RGB, depth, 2D/3D/fused maps, decision).
    pairs = parts_in(new_dir)
    results = detector.predict_batch(pairs, batch_size=4)
    panels = args.out / "panels"
    panels.mkdir(parents=True, exist_ok=True)
    print(f"\n{'part':<8} {'truth':<6} {'score':>8} {'threshold':>10}  decision")
    for (rgb, _), res in zip(pairs, results):
        res.to_panel().save(panels / f"{rgb.stem}_panel.png")
        decision = "ANOMALOUS" if res.is_anomalous else "good"
        print(f"{rgb.stem:<8} {truth[rgb.stem]:<6} {res.score:>8.3f} {res.threshold:>10.3f}  {decision}")
    print(f"\npanels in {panels}/")


if __name__ == "__main__":
    main()
