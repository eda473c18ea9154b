"""Triton kernels: one program per row of D channels, the whole row in one block, fp32 arithmetic.

Each launcher takes the tensors the dispatcher validated and returns new tensors in the input's
dtype. This module imports triton at the top; `ditlab.core.kernels` imports it only where Triton
can run (CUDA, or the CPU with TRITON_INTERPRET=1, which must be set before this import).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 16384  # widest row kept in one block


def _block(n: int) -> tuple[int, int]:
    """Block size (a power of 2 >= n) and warp count for rows of n elements."""
    block = triton.next_power_of_2(n)
    if block > MAX_BLOCK:
        raise ValueError(f"the Triton kernels hold a row in one block of at most {MAX_BLOCK} channels, got {n}")
    return block, min(16, max(1, block // 256))


@triton.jit
def _normalize(x, mask, D, eps):
    """(x - mean) / sqrt(var + eps) over the valid entries of one fp32 row; 0 where masked."""
    mean = tl.sum(x, axis=0) / D
    diff = tl.where(mask, x - mean, 0.0)
    var = tl.sum(diff * diff, axis=0) / D
    return diff * tl.rsqrt(var + eps)


@triton.jit
def _layernorm_modulate_kernel(x_ptr, shift_ptr, scale_ptr, out_ptr, T, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    mod = (row // T) * D + cols
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    h = _normalize(x, mask, D, eps) * (1.0 + scale) + shift
    tl.store(out_ptr + row * D + cols, h.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_layernorm_modulate_kernel(
    x_ptr, gate_ptr, y_ptr, shift_ptr, scale_ptr, x_out_ptr, h_out_ptr, T, D, eps, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    mod = (row // T) * D + cols
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    x_new = (x + gate * y).to(x_out_ptr.dtype.element_ty)
    tl.store(x_out_ptr + row * D + cols, x_new, mask=mask)
    shift = tl.load(shift_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    # normalise the stored (rounded) residual, as the unfused ops would
    h = _normalize(x_new.to(tl.float32), mask, D, eps) * (1.0 + scale) + shift
    tl.store(h_out_ptr + row * D + cols, h.to(h_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out = x * tl.rsqrt(tl.sum(x * x, axis=0) / D + eps) * w
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, H, L, stride_b, stride_h, stride_l, HALF, BLOCK_HALF: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)  # over (b, h, l) in order; x may be a strided view, out is contiguous
    pos = row % L
    head = (row // L) % H
    batch = row // (L * H)
    i = tl.arange(0, BLOCK_HALF)
    mask = i < HALF
    src = x_ptr + batch * stride_b + head * stride_h + pos * stride_l + 2 * i
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + 1, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + pos * HALF + i, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + pos * HALF + i, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + row * 2 * HALF + 2 * i
    tl.store(dst, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + 1, (x1 * s + x2 * c).to(out_ptr.dtype.element_ty), mask=mask)


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x (B, T, D), shift and scale (B, D) -> LayerNorm(x) * (1 + scale) + shift."""
    x = x.contiguous()
    b, t, d = x.shape
    out = torch.empty_like(x)
    block, warps = _block(d)
    if x.numel():
        _layernorm_modulate_kernel[(b * t,)](x, shift.contiguous(), scale.contiguous(), out, t, d, eps,
                                             BLOCK_D=block, num_warps=warps)
    return out


def gated_residual_layernorm_modulate(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, T, D), gate, shift, scale (B, D) -> (x + gate * y, its LayerNorm * (1 + scale) + shift)."""
    x, y = x.contiguous(), y.contiguous()
    b, t, d = x.shape
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    block, warps = _block(d)
    if x.numel():
        _gated_residual_layernorm_modulate_kernel[(b * t,)](
            x, gate.contiguous(), y, shift.contiguous(), scale.contiguous(), x_out, h_out, t, d, eps,
            BLOCK_D=block, num_warps=warps)
    return x_out, h_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), weight (D,) -> x / sqrt(mean(x^2) + eps) * weight."""
    x = x.contiguous()
    d = x.shape[-1]
    out = torch.empty_like(x)
    block, warps = _block(d)
    if x.numel():
        _rms_norm_kernel[(x.numel() // d,)](x, weight.contiguous(), out, d, eps, BLOCK_D=block, num_warps=warps)
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, Dh), cos and sin (L, Dh/2) -> x with channel pairs (2i, 2i+1) rotated."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    b, h, l, dh = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block, warps = _block(dh // 2)
    if x.numel():
        _rope_kernel[(b * h * l,)](x, cos.contiguous(), sin.contiguous(), out, h, l, x.stride(0), x.stride(1),
                                   x.stride(2), dh // 2, BLOCK_HALF=block, num_warps=warps)
    return out
