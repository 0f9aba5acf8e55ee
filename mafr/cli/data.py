"""``mafr preprocess`` and ``mafr generate``: prepare and write datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import _Out, _sub, EXIT_OK


def _cmd_preprocess(args: argparse.Namespace, out: _Out) -> int:
    from ..datasets import preprocess_dataset

    dst = preprocess_dataset(args.src, args.dst, args.category or None, seed=args.seed, progress=not out.quiet,
                             mask_background=args.mask_background)
    n = sum(1 for _ in Path(dst).glob("*/*/*/xyz/*.tiff"))
    out.result(f"wrote {n} preprocessed parts to {dst}", {"dst": dst, "n_parts": n})
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace, out: _Out) -> int:
    from ..datasets import write_dataset

    root = write_dataset(
        args.root, args.category or None, n_train=args.n_train, n_validation=args.n_validation,
        n_test_good=args.n_test_good, n_test_per_defect=args.n_test_per_defect, size=args.size, seed=args.seed,
    )
    counts: dict[str, int] = {}
    for xyz in Path(root).glob("*/*/*/xyz/*.tiff"):
        split = xyz.parts[-4]
        counts[split] = counts.get(split, 0) + 1
    cats = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.result(f"wrote {text} parts ({', '.join(cats)}; {args.size} px) to {root}",
               {"root": root, "categories": cats, "counts": counts, "size": args.size})
    return EXIT_OK


def add_preprocess(subs, common) -> None:
    """``mafr preprocess``'s arguments."""
    p = _sub(subs, "preprocess", "MVTec 3D-AD preprocessing (docs/method.md) of a dataset",
             "Write a preprocessed copy of an MVTec 3D-AD style dataset: table plane removed (RANSAC on\n"
             "the border), padded to a square, largest cluster kept; masks padded to match. RGB images\n"
             "are only padded, as the reference leaves them, unless --mask-background.",
             "  mafr preprocess mvtec3d mvtec3d_preprocessed --category bagel cookie", [common])
    p.add_argument("src", metavar="SRC", help="dataset root (category folders inside)")
    p.add_argument("dst", metavar="DST", help="output root (must differ from SRC)")
    p.add_argument("--category", nargs="+", action="extend", metavar="C", help="categories (default: all)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="RANSAC seed")
    p.add_argument("--mask-background", action="store_true",
                   help="also blacken the RGB pixels whose points were removed (off: the reference keeps RGB as is)")
    p.set_defaults(func=_cmd_preprocess)


def add_generate(subs, common) -> None:
    """``mafr generate``'s arguments."""
    p = _sub(subs, "generate", "write synthetic parts in the MVTec 3D-AD layout",
             "Write synthetic parts with defects (bump, dent, stain, crack, hole) in the MVTec 3D-AD\n"
             "layout: ROOT/<category>/{train,validation,test}/<type>/{rgb,xyz,gt}/NNN.*",
             "  mafr generate data --category puck --n-train 10 --size 224", [common])
    p.add_argument("root", metavar="ROOT", help="output root")
    p.add_argument("--category", nargs="+", action="extend", metavar="C",
                   help="dome, puck, ring, block (default: all)")
    p.add_argument("--n-train", type=int, default=10, metavar="N", help="good training parts per category (default: 10)")
    p.add_argument("--n-validation", type=int, default=4, metavar="N", help="good validation parts (default: 4)")
    p.add_argument("--n-test-good", type=int, default=8, metavar="N", help="good test parts (default: 8)")
    p.add_argument("--n-test-per-defect", type=int, default=4, metavar="N", help="test parts per defect type (default: 4)")
    p.add_argument("--size", type=int, default=400, metavar="N", help="image side in pixels (default: 400)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the generated parts")
    p.set_defaults(func=_cmd_generate)
