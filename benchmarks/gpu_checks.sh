#!/usr/bin/env bash
# The CUDA checks behind docs/performance.md ("GPU"), in one run on a machine with an NVIDIA GPU:
# the card, the CUDA tests (device="auto" picks the GPU, so every detector in them runs on CUDA,
# and the CUDA-only tests run instead of skipping), then the FPS, predict and fit benchmarks on
# the GPU. FULL=1 also runs the whole test suite there (about 5 minutes).
#
#     bash benchmarks/gpu_checks.sh [OUT_DIR]
#
# Each step has its own time limit so that one slow step still leaves the others' figures; logs
# and the benchmarks' JSON lines land in OUT_DIR (default: gpu-checks/).
set -uo pipefail
out="${1:-${OUT:-gpu-checks}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{ nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$out/card.txt"

timeout 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_devices.py tests/test_pointops.py 2>&1 | tee "$out/tests_devices.txt" | tail -5
timeout 90 python3 benchmarks/bench_fps.py --device cuda --repeats 10 --threads 4 2>"$out/bench_fps.err" | tee "$out/bench_fps.json"
timeout 150 python3 benchmarks/bench_predict.py --device cuda --repeats 10 --threads 4 2>"$out/bench_predict.err" | tee "$out/bench_predict.json"
timeout 120 python3 benchmarks/bench_fit.py --device cuda --skip-accuracy --skip-memory --threads 4 2>"$out/bench_fit.err" | tee "$out/bench_fit.json"
if [ "${FULL:-0}" = 1 ]; then
  timeout 300 python3 -m pytest -q --full -p no:cacheprovider tests 2>&1 | tee "$out/tests_all.txt" | tail -5
fi
