"""The DiT-XL/2-size end-to-end rows again after a change (fp8 row left out: see device_accel.sh for it)."""
import os
import shlex
import sys
from pathlib import Path

import torch

from ditlab.core.accel import precision
from ditlab.core.accel.bench.runs import GPU_CACHE, TITLE
from ditlab.core.accel.bench.subjects import GPU, XL_BATCH, make_inputs, xl_model
from ditlab.core.accel.bench.tasks import precision_task, reference
from ditlab.core.bench import Report, machine


def no_fp8(*a, **k):
    raise RuntimeError("left out of this re-run")


precision.quantize = no_fp8
dev = torch.device("cuda")
report = Report(f"{TITLE}: DiT-XL/2 re-run", machine=machine(dev), command=shlex.join(["python", *sys.argv]))
xl = xl_model().to(dev)
xl_in = make_inputs(xl, XL_BATCH)
precision_task(report, xl, xl_in, reference(xl, xl_in, GPU), GPU, GPU_CACHE, dev,
               "DiT-XL/2 size (675M parameters, 256 tokens), random weights: PSNR is numeric agreement only")
report.write(Path(os.environ["OUT"], "xl.json"))
print(report.markdown())
