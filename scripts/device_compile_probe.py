"""Why compile_blocks was slower than eager bf16 on the GPU: time one DiT-XL/2-size forward (batch 32, 256 tokens)
under bf16 autocast, with the Triton kernels or the reference ops, eager, block-compiled or whole-compiled."""
import copy
import time

import torch

from ditlab.core import kernels
from ditlab.core.accel import precision
from ditlab.core.accel.bench.subjects import xl_model


def mean_ms(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


dev = torch.device("cuda")
base = xl_model().to(dev)
x, t = torch.randn(32, 4, 32, 32, device=dev), torch.rand(32, device=dev) * 1000
y = torch.arange(32, device=dev)


def run(name, model, triton=True, whole=False):
    orig = kernels._use_triton
    if not triton:  # the reference ops everywhere (what "auto" now does inside torch.compile)
        kernels._use_triton = lambda *a, **k: False
    try:
        if whole:
            model = torch.compile(model)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
            print(name, round(mean_ms(lambda: model(x, t, class_labels=y)), 2), "ms", flush=True)
    finally:
        kernels._use_triton = orig


run("eager bf16 triton", base)
run("eager bf16 torch-ref", base, triton=False)
run("compile_blocks triton", precision.compile_blocks(copy.deepcopy(base)))
run("compile_blocks torch-ref", precision.compile_blocks(copy.deepcopy(base)), triton=False)
run("whole compile torch-ref", copy.deepcopy(base), triton=False, whole=True)
