"""Time each fused kernel against eager torch, `torch.compile` and the device's copy bandwidth; `add_rows` puts
the results in a benchmark `Report`."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable

import torch

from ditlab.core import kernels
from ditlab.core.bench.harness import Report
from ditlab.core.kernels import reference

KERNEL_TASK = "fused kernels (cuda, bf16, DiT-XL width)"


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Milliseconds per call: the best of 3 runs of `repeats` calls, after a warm-up call (which also compiles)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) * 1e3 / repeats)
    return best


def _cases(batch: int, tokens: int, dim: int, heads: int, device: torch.device, dtype: torch.dtype) -> list:
    """(name, reference function, args, bytes a fused kernel must move) for each kernel."""
    x, y = (torch.randn(batch, tokens, dim, device=device, dtype=dtype) for _ in range(2))
    gate, shift, scale = (torch.randn(batch, dim, device=device, dtype=dtype) for _ in range(3))
    weight = torch.randn(dim, device=device, dtype=dtype)
    q = torch.randn(batch, heads, tokens, dim // heads, device=device, dtype=dtype)
    cos, sin = (torch.randn(tokens, dim // heads // 2, device=device) for _ in range(2))
    full = x.numel() * x.element_size()  # bytes of one (B, T, D) tensor
    return [
        ("layernorm_modulate", reference.layernorm_modulate, (x, shift, scale), 2 * full),
        ("gated_residual_layernorm_modulate", reference.gated_residual_layernorm_modulate,
         (x, gate, y, shift, scale), 4 * full),
        ("rms_norm", reference.rms_norm, (x, weight), 2 * full),
        ("apply_rope", reference.apply_rope, (q, cos, sin), 2 * full + 2 * cos.numel() * cos.element_size()),
    ]


def kernel_benchmark(
    device: str = "cuda", batch: int = 64, tokens: int = 1024, dim: int = 1152, heads: int = 16, repeats: int = 50
) -> list[dict]:
    """Rows {kernel, method, ms, gb_per_s, of_copy_bandwidth, note} at DiT-XL width (bf16 on CUDA).

    The default (64 x 1024 tokens x 1152 channels, 151 MB per bf16 tensor) is several times an H100/H200's
    L2 cache (50-60 MB), so the copy and the kernels stream from memory rather than from L2.

    On CUDA each kernel runs as eager torch, `torch.compile` of the reference and Triton; bandwidth
    is the bytes a fused kernel must move divided by time, compared with `dst.copy_(x)`. On the CPU
    only the reference is timed (fp32, few repeats).
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype, repeats = (torch.bfloat16, repeats) if cuda else (torch.float32, min(repeats, 3))
    note = "" if cuda else "CPU: torch reference only; Triton and torch.compile are compared on a CUDA device"
    x = torch.randn(batch, tokens, dim, device=dev, dtype=dtype)
    dst = torch.empty_like(x)
    copy_bytes = 2 * x.numel() * x.element_size()
    copy_ms = _time_ms(lambda: dst.copy_(x), dev, repeats)
    copy_gbps = copy_bytes / copy_ms / 1e6
    rows = [{"kernel": "copy", "method": "torch copy_", "ms": copy_ms, "gb_per_s": copy_gbps,
             "of_copy_bandwidth": 1.0, "note": note}]
    for name, ref, args, nbytes in _cases(batch, tokens, dim, heads, dev, dtype):
        methods = {"torch eager": ref}
        if cuda:
            methods["torch.compile"] = torch.compile(ref)
            methods["triton"] = functools.partial(getattr(kernels, name), backend="triton")
        for method, fn in methods.items():
            with torch.no_grad():
                ms = _time_ms(functools.partial(fn, *args), dev, repeats)
            gbps = nbytes / ms / 1e6
            rows.append({"kernel": name, "method": method, "ms": ms, "gb_per_s": gbps,
                         "of_copy_bandwidth": gbps / copy_gbps, "note": note})
    return rows


def add_rows(report: Report, rows: list[dict], task: str = KERNEL_TASK) -> None:
    """`kernel_benchmark` rows as report rows: ms, GB/s and fraction of copy bandwidth per kernel and method."""
    for r in rows:
        for metric, key in (("ms", "ms"), ("GB/s", "gb_per_s"), ("fraction of copy bandwidth", "of_copy_bandwidth")):
            report.row(task, f"{r['kernel']}: {r['method']}", metric, r[key])


def sweep(batch: int = 64, tokens: int = 1024, dim: int = 1152, heads: int = 16, repeats: int = 30,
          rows: tuple[int, ...] = (1, 2, 4, 8), warps: tuple[int, ...] = (1, 2, 4, 8),
          chunks: tuple[int, ...] = (0,), only: tuple[str, ...] = ()) -> list[dict]:
    """Time every Triton kernel (or those in `only`) at each launch shape on CUDA in bf16: rows per program,
    warps and chunk (LayerNorm + modulate); rows {kernel, rows, warps, chunk, ms, gb_per_s}."""
    from ditlab.core.kernels import triton_kernels

    dev = torch.device("cuda")
    out = []
    for name, _, args, nbytes in _cases(batch, tokens, dim, heads, dev, torch.bfloat16):
        if only and name not in only:
            continue
        fn = functools.partial(getattr(kernels, name), *args, backend="triton")
        for shape in itertools.product(rows, warps, chunks if name == "layernorm_modulate" else (0,)):
            triton_kernels.TUNING[name] = shape
            row = {"kernel": name, **dict(zip(("rows", "warps", "chunk"), shape, strict=True))}
            try:
                with torch.no_grad():
                    ms = _time_ms(fn, dev, repeats)
            except Exception as err:  # a shape Triton cannot compile (too many registers, say)
                out.append(row | {"error": f"{type(err).__name__}: {err}"[:200]})
                continue
            finally:
                triton_kernels.TUNING.pop(name, None)
            out.append(row | {"ms": ms, "gb_per_s": nbytes / ms / 1e6})
    return out


def best_shapes(rows: list[dict]) -> dict[str, tuple[int, int, int]]:
    """The fastest launch shape per kernel in `sweep` rows, as `triton_kernels.TUNING` takes it."""
    best: dict[str, dict] = {}
    for r in rows:
        if "ms" in r and (r["kernel"] not in best or r["ms"] < best[r["kernel"]]["ms"]):
            best[r["kernel"]] = r
    return {k: (r["rows"], r["warps"], r.get("chunk", 0)) for k, r in best.items()}
