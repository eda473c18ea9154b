#!/usr/bin/env bash
# The fused-kernel table on a lent GPU. SWEEP=1: first sweep the launch shapes (rows per program, warps,
# chunk) and time the kernels with the fastest; default: time them with
# `triton_kernels.DEFAULTS` (what ships). The end-to-end tables: device_accel.sh.
set -o pipefail
export PYTHONPATH=packages/core/src PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider --tb=short tests/core/test_kernels.py 2>&1 | tail -40
timeout "${BENCH_TIMEOUT:-400}" python3 - <<'PY' 2>&1 | tee "$OUT/kernels.log" | grep -v Warning
import json, os
from pathlib import Path
from ditlab.core.bench import Report, machine
from ditlab.core.kernels import triton_kernels
from ditlab.core.kernels.bench import add_rows, best_shapes, kernel_benchmark, sweep

out = Path(os.environ["OUT"])
if os.environ.get("SWEEP") == "1":
    rows = sweep(rows=(1, 2, 4), warps=(1, 2, 4), chunks=(0, 64, 128, 256), only=("layernorm_modulate",))
    rows += sweep(rows=(1, 2), warps=(1, 2, 4), only=("gated_residual_layernorm_modulate", "rms_norm", "apply_rope"))
    (out / "sweep-kernels.json").write_text(json.dumps(rows, indent=1))
    triton_kernels.TUNING.update(best_shapes(rows))
print("launch shapes:", triton_kernels.TUNING or triton_kernels.DEFAULTS, flush=True)
table = kernel_benchmark()
report = Report("Fused kernels", machine=machine("cuda"), command="bash scripts/device_kernels.sh")
add_rows(report, table)
report.extra.update(tuning={k: list(v) for k, v in triton_kernels.TUNING.items()}, kernels=table)
report.write(out / "kernels.json")
print(report.markdown())
PY
