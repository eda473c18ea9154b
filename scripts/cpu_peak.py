"""Attainable GEMM throughput of this CPU in fp32, bf16 and int8 (the roofline the DiT paths are judged by), and
the DiT-S forward's achieved throughput in each precision mode, on the torch threads given.

    python scripts/cpu_peak.py [--threads 2]

GEMM: a (4096 x 384) x (384 x 1536) product, the shape of DiT-S's first MLP layer at batch 16 x 256 tokens; the
median of 10 calls after 3 warm-up calls. The DiT-S forward (hidden 384, depth 12, 6 heads, 256 tokens, batch 16,
random weights) counts 2 x 6.05 GMAC per image (the linears and attention of the blocks), timed like the GEMMs
for each mode of `ditlab.core.accel.auto` this machine runs (compiled modes after their compile).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, warmup: int = 3, repeats: int = 10) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - start)
    return statistics.median(ts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-model", action="store_true", help="GEMMs only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ditlab.core.accel import auto
    from ditlab.core.bench.harness import machine, machine_line

    print(machine_line(machine()))
    m, k, n = 4096, 384, 1536
    flops = 2 * m * k * n
    a, w = torch.randn(m, k), torch.randn(n, k)
    ab, wb = a.bfloat16(), w.bfloat16()
    ai = torch.randint(-127, 127, (m, k), dtype=torch.int8)
    wi = torch.randint(-127, 127, (n, k), dtype=torch.int8).t()  # (K, N), the layout int8 weights are kept in
    print(f"| GEMM {m}x{k}x{n} | ms | G(FL)OP/s |\n|---|---|---|")
    for name, fn in (("fp32", lambda: a @ w.t()), ("bf16", lambda: ab @ wb.t()),
                     ("int8 (torch._int_mm)", lambda: torch._int_mm(ai, wi))):
        s = timed(fn)
        print(f"| {name} | {1e3 * s:.1f} | {flops / s / 1e9:.0f} |")
    if args.no_model:
        return
    from ditlab.core.accel.bench_model import shapes_model

    torch.manual_seed(0)
    model = shapes_model(32, "S").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    probe = auto.default_probe(model, 16)
    per_call = 16 * 2 * 6.05e9
    print("\n| DiT-S forward, batch 16 | ms | G(FL)OP/s |\n|---|---|---|")
    for name, missing in auto.available("cpu").items():
        if missing:
            continue
        net, ctx = auto.apply(model, name)
        with torch.no_grad(), ctx():
            s = timed(lambda net=net: probe(net, 0.5), warmup=2, repeats=5)
        print(f"| {name} | {1e3 * s:.0f} | {per_call / s / 1e9:.0f} |")


if __name__ == "__main__":
    main()
