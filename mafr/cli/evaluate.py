"""``mafr evaluate``: fit per category and score the test split of a benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ._shared import _compute_options, _config_options, _load_config, _Out, _sub, EXIT_OK


def _evaluation_splits(args: argparse.Namespace, out: _Out) -> tuple[Callable, list[str], str, str]:
    from .. import datasets

    root = Path(args.root)
    if args.dataset == "generated":
        cats = args.category or list(datasets.BENCHMARK_SPLITS[args.split][0])
        missing = [c for c in cats if not (root / c).is_dir()]
        if missing:
            _, _, good, per_defect = datasets.BENCHMARK_DIFFICULTIES[args.difficulty]
            out.log(f"generating {', '.join(missing)} under {root} ({args.split} set, {args.difficulty} defects: "
                    f"10 train, {good} good + {per_defect} per defect type test, "
                    f"{datasets.synthetic.DEFAULT_SIZE} px)")
            datasets.write_benchmark(root, args.split, difficulty=args.difficulty, categories=missing)
        return (lambda c, s: datasets.MVTec3D(root, c, s)), cats, "train", "test"
    if args.dataset == "mvtec3d":
        cats = args.category or datasets.categories(root)
        if not cats:
            raise FileNotFoundError(f"no category folders under {root} (expected root/<category>/train/good/rgb, ...)")
        return (lambda c, s: datasets.MVTec3D(root, c, s)), cats, "train", "test"
    if not root.is_dir():
        raise FileNotFoundError(f"Eyecandies root not found: {root}")
    cats = args.category or [c for c in datasets.EYECANDIES_CATEGORIES if (root / c).is_dir()]
    if not cats:
        raise FileNotFoundError(f"no Eyecandies category folders under {root} (known: {', '.join(datasets.EYECANDIES_CATEGORIES)})")
    return (lambda c, s: datasets.Eyecandies(root, c, s)), cats, "train", "test_public"


def _cmd_evaluate(args: argparse.Namespace, out: _Out) -> int:
    from ..evaluation import run_benchmark

    config = _load_config(args, default_preset="offline" if args.dataset == "generated" else "paper")
    load_split, cats, train_split, test_split = _evaluation_splits(args, out)
    out_dir = Path(args.out or f"mafr-eval-{args.dataset}")
    out.log(f"evaluating a {config.preset} detector on {args.dataset}: {', '.join(cats)} -> {out_dir}")
    rows = run_benchmark(
        load_split, cats, config, out_dir, shots=args.shots, seed=args.seed, train_split=train_split,
        test_split=test_split, progress=not out.quiet, log=out.log, protocol=args.protocol,
    )
    scalars = [{k: v for k, v in r.items() if not isinstance(v, (list, dict)) and k != "key"} for r in rows]
    out.result(
        (out_dir / "results.md").read_text().rstrip()
        + f"\n\nwritten to {out_dir / 'results.md'} and {out_dir / 'results.json'}",
        {"out_dir": out_dir, "dataset": args.dataset, "preset": config.preset, "shots": args.shots,
         "protocol": args.protocol, "rows": scalars},
    )
    return EXIT_OK


def add_evaluate(subs, common) -> None:
    """``mafr evaluate``'s arguments."""
    p = _sub(subs, "evaluate", "benchmark on MVTec 3D-AD, Eyecandies or generated data",
             "Fit per category on the good training parts, score the test split, and report I-AUROC,\n"
             "P-AUROC and AUPRO (results.md + results.json in --out). Finished categories are reused\n"
             "when config, shots and seed match, so an interrupted run resumes.\n\n"
             "generated: synthetic parts in the MVTec layout; categories missing under --root are\n"
             "generated first (10 train, 12 good + 6 per defect type test, 400 px; --difficulty hard:\n"
             "30 good + 15 per type, smaller and fainter defects). Its default preset is\n"
             "offline; the others default to paper. Eyecandies is scored on test_public.",
             "  mafr evaluate --dataset generated --root gen --category puck dome --out eval_gen\n"
             "  mafr evaluate --dataset mvtec3d --root mvtec3d_preprocessed --shots 10 --out eval_mvtec", [common])
    p.add_argument("--dataset", required=True, choices=("mvtec3d", "eyecandies", "generated"))
    p.add_argument("--root", required=True, metavar="DIR", help="dataset root (category folders inside)")
    p.add_argument("--category", nargs="+", action="extend", metavar="C", help="categories (default: all present)")
    p.add_argument("--shots", type=int, metavar="N", help="fit on the first N training parts of each category")
    p.add_argument("--out", metavar="DIR", help="results folder (default: mafr-eval-<dataset>)")
    p.add_argument("--split", choices=("report", "tuning"), default="report",
                   help="generated data: the report set (default; the figures in docs/) or the tuning set "
                        "(where defaults are chosen); each has its own categories and data seed")
    p.add_argument("--difficulty", choices=("standard", "hard"), default="standard",
                   help="generated data that is not under --root yet: standard defects (12 good + 6 per type "
                        "test) or smaller, shallower, fainter ones on other parts (30 good + 15 per type); "
                        "see mafr.datasets.HARD_DEFECT_SPECS")
    p.add_argument("--protocol", choices=("exact", "reference"), default="exact",
                   help="exact: maps as predicted, exact PRO curve (default); reference: the reference "
                        "evaluation's per-map rescaling and 99-threshold AUPRO, comparable with the paper "
                        "(docs/method.md)")
    _config_options(p, "offline for generated, else paper", "seed of the fits (and of generated data)")
    _compute_options(p, device=False)
    p.set_defaults(func=_cmd_evaluate)
