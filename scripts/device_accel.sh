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
if [ "${SKIP_SWEEP:-0}" != 1 ]; then
  python3 - <<'PY' 2>&1 | tail -30
import json, os
from ditlab.core.kernels.bench import sweep
rows = sweep(rows=(1, 2, 4, 8), warps=(2, 4, 8, 16))
json.dump(rows, open(os.path.join(os.environ["OUT"], "sweep.json"), "w"), indent=1)
best = {}
for r in rows:
    if "ms" in r and (r["kernel"] not in best or r["ms"] < best[r["kernel"]]["ms"]):
        best[r["kernel"]] = r
for r in best.values():
    print("best", r)
PY
fi
timeout "${BENCH_TIMEOUT:-480}" python3 -m ditlab.core.cli core benchmark --accel --gpu --json "$OUT/accel-gpu.json" \
  2>&1 | tee "$OUT/accel-gpu.log" | grep -v Warning
