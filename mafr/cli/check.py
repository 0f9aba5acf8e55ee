"""``mafr check``: what a saved detector can see, on good parts it was not fitted on."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import _compute_options, _fit_parts, _Out, _sub, detector_dir, EXIT_OK, PAIRING

#: Exit status of a blind detector (overall AUROC under 0.70): a script must not read it as 0.
EXIT_BLIND = 4


def _cmd_check(args: argparse.Namespace, out: _Out) -> int:
    from ..detector import MAFRDetector

    det = MAFRDetector.from_pretrained(str(detector_dir(args.detector)), trust_config=args.trust_config,
                                       device=args.device, precision=args.precision)
    parts = _fit_parts(Path(args.good_dir), det.config.modalities)
    out.log(f"implanting defects into {len(parts)} good parts from {args.good_dir} (seed {args.seed})")
    report = det.check(parts, seed=args.seed, kinds=args.kinds, progress=not out.quiet)
    out.result(report.table(), report.summary())
    return EXIT_BLIND if report.blind else EXIT_OK


def add_check(subs, common) -> None:
    """``mafr check``'s arguments."""
    from ..datasets.implant import KINDS

    p = _sub(subs, "check", "what a saved detector can see: defects implanted into good parts",
             "Implant defects (stain, patch, scratch, bump, dent, hole at physical sizes; mafr.datasets.implant_defect)\n"
             "into good parts the detector was NOT fitted on, and print per defect type and size the AUROC against\n"
             "those good parts and the recall at the detector's own threshold. A detector whose overall AUROC is\n"
             "under 0.70 is blind: it cannot tell these defects from good parts.\n\n"
             "GOOD_DIR holds good parts as `mafr fit` reads them.\n" + PAIRING + "\n\n"
             "Exit status: 0, or 4 if the detector is blind, 2 on an error.",
             "  mafr check detector data/puck/validation/good\n  mafr check detector good_parts/ --kinds stain hole --json",
             [common])
    p.add_argument("detector", metavar="DETECTOR_DIR", help="saved detector directory or Hugging Face repo id")
    p.add_argument("good_dir", metavar="GOOD_DIR", help="folder of good parts the detector was not fitted on")
    p.add_argument("--seed", type=int, default=0, help="where the defects go (default: 0)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, metavar="KIND",
                   help=f"defect kinds to implant (default: every kind the detector's modalities show but patch, which a uniform part cannot show; {', '.join(KINDS)})")
    p.add_argument("--trust-config", action="store_true",
                   help="accept a detector whose config names extractors outside mafr's allow-list")
    _compute_options(p)
    p.set_defaults(func=_cmd_check)
