"""Speed of this checkout against an earlier release's code, measured in the same run (ratios).

Two worker processes run the same task on the same parts: one imports mafr from this checkout,
the other from ``git archive REV``. They take turns, one timed call at a time, so a change in
the machine's load hits both; the other waits idle meanwhile (two torch jobs at once on two cores
slow both several times). Prints one JSON line: per task the median seconds of each and the ratio
``now / then`` (above 1: slower now). No target is judged: the ratios go in the closing note and
docs/performance.md.

Tasks (parts generated once by this checkout, 400 x 400, the table measured as a sensor gives it):

- ``predict-offline``: the offline preset's predict of one part (fitted on 10).
- ``predict-paper``: the paper architecture (random weights), one part with its full cloud: every
  pixel measured and kept (``support="keep"`` where the release has the setting).
- ``fit-offline``: the offline preset's fit on 10 parts (``train.steps=60``), with whatever a
  fit does in that release (its detectability check on the 2 held-out parts, from 2026-12-06).

    python benchmarks/bench_release.py --against 0149cd5 [--tasks predict-offline fit-offline] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("predict-offline", "predict-paper", "fit-offline")

WORKER = r"""
import json, sys, time, warnings
root, task, parts_file, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, root)
warnings.simplefilter("ignore")
import numpy as np, torch
torch.set_num_threads(threads)
import mafr
data = np.load(parts_file)
parts = [(data[f"rgb{i}"], data[f"xyz{i}"]) for i in range(int(data["n"]))]
fit, probe = parts[:-1], parts[-1]
fields = mafr.MAFRConfig.model_fields
if task == "predict-paper":
    extra = {"support": "keep"} if "support" in fields else {}
    config = mafr.MAFRConfig(preset="paper", extractor_weights="random", train={"steps": 2}, **extra)
else:
    config = mafr.MAFRConfig(preset="offline", train={"steps": 60} if task == "fit-offline" else {})
det = mafr.MAFRDetector(config, threads=threads)
if task.startswith("predict"):
    det.fit(fit, seed=0, progress=False)
    run = lambda: det.predict(*probe)
else:
    run = lambda: mafr.MAFRDetector(config, threads=threads).fit(fit, seed=0, progress=False)
run()  # warm-up: allocator, kernels, lazily built extractors
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    run()
    print(time.perf_counter() - t0, flush=True)
"""


def _write_parts(path: Path, n: int) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from mafr.datasets.synthetic import generate_sample

    arrays = {"n": np.array(n)}
    for i in range(n):
        s = generate_sample("dome", seed=i, size=400, background="plane")
        arrays[f"rgb{i}"], arrays[f"xyz{i}"] = s.rgb, s.xyz
    np.savez(path, **arrays)


def _export(rev: str, into: Path) -> None:
    """The release's tracked files (``git archive``), never the working tree's."""
    archive = into / "release.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "release", filter="data")


class _Worker:
    def __init__(self, root: Path, task: str, parts: Path, threads: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), task, str(parts), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker for {root} ({task}) did not start")

    def time_one(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = {"benchmark": "release", "against": args.against, "threads": args.threads, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _export(args.against, tmp)
        parts = tmp / "parts.npz"
        _write_parts(parts, 11)
        for task in args.tasks:
            # One worker at a time is built, and then only one of them runs at any moment.
            now, then = _Worker(ROOT, task, parts, args.threads), _Worker(tmp / "release", task, parts, args.threads)
            times = {"now": [], "then": []}
            try:
                for i in range(args.rounds):
                    # Alternate who goes first so neither always follows the other's cache state.
                    order = (("now", now), ("then", then)) if i % 2 == 0 else (("then", then), ("now", now))
                    for name, worker in order:
                        times[name].append(worker.time_one())
            finally:
                now.close()
                then.close()
            med = {k: statistics.median(v) for k, v in times.items()}
            result[task] = {"now_s": round(med["now"], 4), "then_s": round(med["then"], 4),
                            "now_over_then": round(med["now"] / med["then"], 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
