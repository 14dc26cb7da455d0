#!/usr/bin/env bash
# Chapter 10's GPU checks in one short run, for a machine with an NVIDIA GPU, CuPy and (for the comparison) PyTorch
# with CUDA: the versions, `pytest -m gpu`, then bench/bench_gpu.py. Each output is also written under $OUT (default
# gpu_out/), to be recorded in the chapter and the README. Run from anywhere: bash .ci/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export MPLBACKEND=Agg
python - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import numpy, platform
print('python', platform.python_version(), 'numpy', numpy.__version__)
try:
    import cupy; print('cupy', cupy.__version__, '|', cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())
except Exception as e: print('cupy: not usable:', type(e).__name__, e)
try:
    import torch; print('torch', torch.__version__, '| cuda available:', torch.cuda.is_available())
except ImportError: print('torch: not installed')
PY
python -c "import tinynn_book" 2>/dev/null || pip install -q --no-deps -e . 2>&1 | tail -1
python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 480 python bench/bench_gpu.py --repeats 5 --steps 30 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
