"""The ``mafr`` command line: fit, predict, evaluate, prepare data, convert checkpoints, inspect.

Every subcommand takes ``--quiet`` (no progress bars or log lines on stderr) and ``--json``
(machine-readable output on stdout). Bad input ends with one ``mafr: error: ...`` line on stderr
and exit status 2; set ``MAFR_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from . import check, data, evaluate, fit, info, predict, weights
from ._shared import (EXIT_ANOMALOUS, EXIT_ERROR, EXIT_NO_THRESHOLD, EXIT_OK, EXIT_USAGE, PAIRING,  # noqa: F401
                      Part, _common, _error_message, _Out, detector_dir, find_parts, parse_inputs)
from .info import describe_detector  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    common = _common()
    parser = argparse.ArgumentParser(
        prog="mafr",
        description="MAFR: multimodal (RGB + 3D) industrial anomaly detection. Fit on good parts, score new ones.",
        epilog=(
            "examples:\n"
            "  mafr generate data --category puck\n"
            "  mafr fit data/puck detector --preset offline\n"
            "  mafr predict detector part.png part.tiff --overlay panels\n"
            "  mafr info detector\n"
            "  mafr check detector data/puck/validation/good\n\n"
            "Run `mafr COMMAND --help` for details. Errors exit with status 2 (MAFR_DEBUG=1 shows the traceback)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mafr {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fit.add_fit(subs, common)
    predict.add_predict(subs, common)
    evaluate.add_evaluate(subs, common)
    data.add_preprocess(subs, common)
    data.add_generate(subs, common)
    weights.add_convert(subs, common)
    weights.add_download(subs, common)
    fit.add_update(subs, common)
    info.add_info(subs, common)
    check.add_check(subs, common)
    return parser


def _cli_threads(args: argparse.Namespace):
    """torch's thread count for a computing command (restored after it, for callers of main())."""
    import contextlib

    if not hasattr(args, "threads"):
        return contextlib.nullcontext()
    from ..runtime import check_threads, default_cli_threads, num_threads

    return num_threads(default_cli_threads() if args.threads is None else check_threads(args.threads))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``mafr`` and ``python -m mafr``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Out(args.quiet, args.json)
    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from ..detector import NotFittedError
    from ..extractors.rgb import WeightsUnavailableError

    try:
        with _cli_threads(args):
            return args.func(args, out)
    except (ValueError, TypeError, OSError, NotFittedError, WeightsUnavailableError) as err:
        if os.environ.get("MAFR_DEBUG") == "1":
            raise
        print(f"mafr: error: {_error_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mafr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # fail closed: anything unforeseen is an error, not a verdict
        if os.environ.get("MAFR_DEBUG") == "1":
            raise
        print(f"mafr: error: {type(err).__name__}: {_error_message(err)} (MAFR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
