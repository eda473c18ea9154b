"""Why compile_blocks is slower than eager bf16 on the GPU: time one XL forward (batch 32, 256 tokens)."""
import time, torch
from ditlab.core import kernels
from ditlab.core.accel import bench, precision

def t(fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1e3

dev = torch.device("cuda")
base = bench.xl_model().to(dev)
x = torch.randn(32, 4, 32, 32, device=dev); tt = torch.rand(32, device=dev) * 1000; y = torch.arange(32, device=dev)
import copy
res = {}
def run(name, model, triton=True, mode=None, whole=False):
    orig = kernels._use_triton
    if not triton:
        kernels._use_triton = lambda *a, **k: False
    try:
        if whole:
            model = torch.compile(model, mode=mode)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
            res[name] = t(lambda: model(x, tt, class_labels=y))
    finally:
        kernels._use_triton = orig
    print(name, round(res[name], 2), "ms", flush=True)

run("eager bf16 triton", base)
run("eager bf16 torch-ref", base, triton=False)
run("compile_blocks triton", precision.compile_blocks(copy.deepcopy(base)))
run("compile_blocks torch-ref", precision.compile_blocks(copy.deepcopy(base)), triton=False)
run("whole compile torch-ref", copy.deepcopy(base), triton=False, whole=True)
print(torch._dynamo.utils.counters.get("stats"), dict(torch._dynamo.utils.counters.get("recompiles", {})))
