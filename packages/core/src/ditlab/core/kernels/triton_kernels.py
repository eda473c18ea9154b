"""Triton kernels: each program normalises a tile of ROWS rows x D channels, in fp32.

Each launcher takes the tensors the dispatcher validated and returns new tensors in the input's
dtype. This module imports triton at the top; `ditlab.core.kernels` imports it only where Triton
can run (CUDA, or the CPU with TRITON_INTERPRET=1, which must be set before this import).

Launch shape: `config` gives the rows per program, warps and chunking of each kernel: `DEFAULTS`, measured
on an H200 by `ditlab.core.kernels.bench.sweep`; `TUNING` overrides them per kernel (what the sweep sets
while it searches). The LayerNorm kernels run on a (token tiles, samples) grid, so a tile never crosses
samples and the sample's modulation vectors are loaded once per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 16384  # widest row kept in one block
# kernel name -> (rows per program, warps, chunk), overriding `config`
TUNING: dict[str, tuple[int, int, int]] = {}
# The defaults: the fastest launch shapes of a sweep on an H200 at DiT-XL width (D 1152), bf16, 64 x 1024 tokens
# (`ditlab.core.kernels.bench.sweep`; BENCHMARKS.md). Wider rows get more warps (whole-row kernels).
DEFAULTS: dict[str, tuple[int, int, int]] = {
    "layernorm_modulate": (2, 1, 256),
    "gated_residual_layernorm_modulate": (2, 2, 0),
    "rms_norm": (1, 2, 0),
}
ROPE_TILE = 256  # rope: rows per program x half head dim, one warp


def config(name: str, n: int, n_rows: int) -> tuple[int, int, int, int]:
    """(block, rows per program, warps, chunk) for `n_rows` rows of `n` elements; block is the power of 2 >= n.
    Chunk (LayerNorm + modulate only): walk the row `chunk` columns at a time, twice (sum and sum of squares,
    then the output), instead of holding it whole (0)."""
    block = triton.next_power_of_2(n)
    if block > MAX_BLOCK:
        raise ValueError(f"the Triton kernels hold a row in one block of at most {MAX_BLOCK} channels, got {n}")
    if name in TUNING:
        rows, warps, chunk = TUNING[name]
    elif name == "apply_rope":
        rows, warps, chunk = max(1, ROPE_TILE // block), 1, 0
    else:
        rows, warps, chunk = DEFAULTS[name]
        if chunk:
            chunk = min(chunk, block)
        else:
            warps = min(16, max(warps, block // 1024))
    return block, min(rows, triton.next_power_of_2(max(n_rows, 1))), warps, chunk


@triton.jit
def _normalize(x, mask, D, eps):
    """(x - mean) / sqrt(var + eps) along axis 1 of an fp32 tile (rows, BLOCK_D); 0 where masked."""
    mean = tl.sum(x, axis=1) / D
    diff = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / D
    return diff * tl.rsqrt(var + eps)[:, None]


@triton.jit
def _tile(n_rows, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's row indices (ROWS,), column indices (BLOCK_D,) and the tile's validity mask."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < D)
    return rows, cols, mask


@triton.jit
def _sample_rows(T, D, ROWS: tl.constexpr):
    """For a (T-tiles, B) grid: this program's sample, its rows' offsets (ROWS, 1) and validity (ROWS, 1). A
    tile never crosses samples, so the sample's (D,) modulation vectors are loaded once per program."""
    b = tl.program_id(1).to(tl.int64)
    tokens = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    return b, ((b * T + tokens) * D)[:, None], (tokens < T)[:, None]


@triton.jit
def _vector(ptr, b, D, cols):
    """Sample b's entries `cols` of a (B, D) modulation vector, in fp32, as a (1, len(cols)) row."""
    return tl.load(ptr + b * D + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _layernorm_modulate_kernel(x_ptr, shift_ptr, scale_ptr, out_ptr, T, D, eps, ROWS: tl.constexpr,
                               BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr):
    b, base, row_ok = _sample_rows(T, D, ROWS)
    if CHUNK == 0:  # the whole row in registers
        cols = tl.arange(0, BLOCK_D)
        mask = row_ok & (cols < D)[None, :]
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = _normalize(x, mask, D, eps) * (1.0 + _vector(scale_ptr, b, D, cols)) + _vector(shift_ptr, b, D, cols)
        tl.store(out_ptr + base + cols[None, :], h.to(out_ptr.dtype.element_ty), mask=mask)
    else:  # N_CHUNKS x CHUNK columns (unrolled): no masked lanes when CHUNK divides D; the second pass hits cache
        total = tl.zeros((ROWS,), dtype=tl.float32)
        squares = tl.zeros((ROWS,), dtype=tl.float32)
        for k in tl.static_range(N_CHUNKS):
            cols = k * CHUNK + tl.arange(0, CHUNK)
            x = tl.load(x_ptr + base + cols[None, :], mask=row_ok & (cols < D)[None, :], other=0.0).to(tl.float32)
            total += tl.sum(x, axis=1)
            squares += tl.sum(x * x, axis=1)
        mean = total / D
        rstd = tl.rsqrt(tl.maximum(squares / D - mean * mean, 0.0) + eps)
        for k in tl.static_range(N_CHUNKS):
            cols = k * CHUNK + tl.arange(0, CHUNK)
            mask = row_ok & (cols < D)[None, :]
            x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            h = ((x - mean[:, None]) * rstd[:, None] * (1.0 + _vector(scale_ptr, b, D, cols))
                 + _vector(shift_ptr, b, D, cols))
            tl.store(out_ptr + base + cols[None, :], h.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_layernorm_modulate_kernel(
    x_ptr, gate_ptr, y_ptr, shift_ptr, scale_ptr, x_out_ptr, h_out_ptr, T, D, eps,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, base, row_ok = _sample_rows(T, D, ROWS)
    cols = tl.arange(0, BLOCK_D)
    at, mask = base + cols[None, :], row_ok & (cols < D)[None, :]
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32)
    x_new = (x + _vector(gate_ptr, b, D, cols) * y).to(x_out_ptr.dtype.element_ty)
    tl.store(x_out_ptr + at, x_new, mask=mask)
    # normalise the stored (rounded) residual, as the unfused ops would
    h = (_normalize(x_new.to(tl.float32), mask, D, eps) * (1.0 + _vector(scale_ptr, b, D, cols))
         + _vector(shift_ptr, b, D, cols))
    tl.store(h_out_ptr + at, h.to(h_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_rows, D, eps, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, cols, mask = _tile(n_rows, D, ROWS, BLOCK_D)
    at = rows[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    out = x * tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None] * w[None, :]
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, n_rows, H, L, stride_b, stride_h, stride_l, HALF,
    ROWS: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # rows run over (b, h, l) in order; x may be a strided view (unit channel stride), out is contiguous
    rows, i, mask = _tile(n_rows, HALF, ROWS, BLOCK_HALF)
    pos = rows % L
    head = (rows // L) % H
    batch = rows // (L * H)
    src = x_ptr + (batch * stride_b + head * stride_h + pos * stride_l)[:, None] + 2 * i[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + 1, mask=mask, other=0.0).to(tl.float32)
    angle = pos[:, None] * HALF + i[None, :]
    c = tl.load(cos_ptr + angle, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + angle, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + rows[:, None] * 2 * HALF + 2 * i[None, :]
    tl.store(dst, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + 1, (x1 * s + x2 * c).to(out_ptr.dtype.element_ty), mask=mask)


def _grid(n_rows: int, rows: int) -> tuple[int]:
    return (triton.cdiv(n_rows, rows),)


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x (B, T, D), shift and scale (B, D) -> LayerNorm(x) * (1 + scale) + shift."""
    x = x.contiguous()
    b, t, d = x.shape
    out = torch.empty_like(x)
    block, rows, warps, chunk = config("layernorm_modulate", d, t)
    if x.numel():
        _layernorm_modulate_kernel[(triton.cdiv(t, rows), b)](x, shift.contiguous(), scale.contiguous(), out, t, d,
                                                              eps, ROWS=rows, BLOCK_D=block, CHUNK=chunk,
                                                              N_CHUNKS=triton.cdiv(d, max(chunk, 1)), num_warps=warps)
    return out


def gated_residual_layernorm_modulate(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, T, D), gate, shift, scale (B, D) -> (x + gate * y, its LayerNorm * (1 + scale) + shift)."""
    x, y = x.contiguous(), y.contiguous()
    b, t, d = x.shape
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    block, rows, warps, _ = config("gated_residual_layernorm_modulate", d, t)
    if x.numel():
        _gated_residual_layernorm_modulate_kernel[(triton.cdiv(t, rows), b)](
            x, gate.contiguous(), y, shift.contiguous(), scale.contiguous(), x_out, h_out, t, d, eps,
            ROWS=rows, BLOCK_D=block, num_warps=warps)
    return x_out, h_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), weight (D,) -> x / sqrt(mean(x^2) + eps) * weight."""
    x = x.contiguous()
    d = x.shape[-1]
    n_rows = x.numel() // d if d else 0
    out = torch.empty_like(x)
    block, rows, warps, _ = config("rms_norm", d, n_rows)
    if x.numel():
        _rms_norm_kernel[_grid(n_rows, rows)](x, weight.contiguous(), out, n_rows, d, eps, ROWS=rows, BLOCK_D=block,
                                              num_warps=warps)
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, Dh), cos and sin (L, Dh/2) -> x with channel pairs (2i, 2i+1) rotated."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    b, h, l, dh = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block, rows, warps, _ = config("apply_rope", dh // 2, b * h * l)
    if x.numel():
        _rope_kernel[_grid(b * h * l, rows)](x, cos.contiguous(), sin.contiguous(), out, b * h * l, h, l, x.stride(0),
                                             x.stride(1), x.stride(2), dh // 2, ROWS=rows, BLOCK_HALF=block,
                                             num_warps=warps)
    return out
