"""Does ``det.check`` say what a detector sees? Generated categories as raw scans (table measured):
the I-AUROC on the generator's own defects against what the check says on good parts the detector
was not fitted on, and what the fit's own check (its 2 held-out parts) said (docs/concepts.md,
section 12). The real-scan counterpart is ``benchmarks/real_scans.py`` (tire: the check against
real defects).

    python benchmarks/check_honesty.py [--categories puck disc cylinder] [--size 400]
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

import mafr
from mafr.datasets.synthetic import generate_sample
from mafr.evaluation import evaluate_detector

DEFECTS = ("bump", "dent", "stain", "crack", "hole")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", nargs="+", default=["puck", "disc", "cylinder"])
    p.add_argument("--size", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # blind fits warn; the figures say it
    for cat in args.categories:
        part = lambda defect, seed: generate_sample(cat, defect, seed=seed, size=args.size, background="plane")  # noqa: E731
        fit = [part(None, s) for s in range(10)]
        goods = [part(None, 100 + s) for s in range(8)]
        defects = [part(d, 200 + 10 * i + s) for i, d in enumerate(DEFECTS) for s in range(3)]
        det = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline")).fit(fit, seed=0, progress=False)
        real = evaluate_detector(det, goods + defects, progress=False)
        report = det.check(goods, seed=0)
        at_fit = det.fit_info_["detectability"]
        print(json.dumps({
            "category": cat, "generated_defects_auroc": round(real["image_auroc"], 3),
            "check_auroc": round(report.auroc, 3), "blind": report.blind,
            "check_per_type": {f"{t.kind} {t.size:g} {t.unit}": round(t.auroc, 3) for t in report.per_type},
            "fit_check_auroc": round(at_fit["auroc"], 3), "fit_check_blind": at_fit["blind"],
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
