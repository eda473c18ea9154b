#!/usr/bin/env bash
# The GPU tables of BENCHMARKS.md, as run on a lent H200 (the workplace's `device` tool): the machine has
# torch/triton but not diffusers or torchao, which travel as wheels in .whl/ (see the tool's README).
# Writes into $OUT: the kernel tests' log, the launch-shape sweep and the `--accel --gpu` report.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:packages/core/src PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, triton, torchao, diffusers; print('torch', torch.__version__, 'triton', triton.__version__,
'torchao', torchao.__version__, 'diffusers', diffusers.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/core/test_kernels.py 2>&1 | tee "$OUT/kernel-tests.log" | tail -5
fi
# the GPU tables with the shipped launch shapes (SWEEP=1: sweep first and use the fastest)
timeout "${BENCH_TIMEOUT:-530}" python3 - <<'PY' 2>&1 | tee "$OUT/accel-gpu.log" | grep -v Warning
import json, os, sys
from pathlib import Path
from ditlab.core.accel import bench
from ditlab.core.kernels import triton_kernels
from ditlab.core.kernels.bench import best_shapes, sweep

out = Path(os.environ["OUT"])
if os.environ.get("SWEEP") == "1":
    rows = sweep(warps=(1, 2, 4))
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    triton_kernels.TUNING.update(best_shapes(rows))
    print("tuned", triton_kernels.TUNING, flush=True)
sys.argv = ["ditlab", "core", "benchmark", "--accel", "--gpu", "--json", "benchmarks/accel-gpu.json"]
bench.gpu_run(bench.GPU, out / "accel-gpu.json")
PY
