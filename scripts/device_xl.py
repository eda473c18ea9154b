"""The DiT-XL/2-size end-to-end rows again after a change (fp8 row left out: see device_accel.sh for it)."""
import json
import os
from pathlib import Path

import torch

from ditlab.core.accel import bench, precision


def no_fp8(*a, **k):
    raise RuntimeError("left out of this re-run")


precision.quantize = no_fp8
dev = torch.device("cuda")
report = bench.Report()
xl = bench.xl_model().to(dev)
xl_in = bench.make_inputs(xl, bench.XL_BATCH)
bench.precision_task(report, xl, xl_in, bench.reference(xl, xl_in, bench.GPU), bench.GPU, bench.GPU_CACHE, dev,
                     "DiT-XL/2 size (675M parameters, 256 tokens), random weights: PSNR is numeric agreement only")
out = {"machine": bench.describe_machine(dev), "rows": report.rows, "notes": report.notes}
Path(os.environ["OUT"], "xl.json").write_text(json.dumps(out, indent=1))
print(bench.format_report(out | {"goals": []}, report.notes, bench.GPU))
