"""Fused kernels for DiT inference, each with a pure-torch reference and one dispatcher.

Every public function takes `backend`: "auto" runs Triton on CUDA tensors when no gradient is
needed (the kernels are forward-only) and the torch reference otherwise, and inside `torch.compile`
(where Inductor fuses the reference ops itself); "triton" insists, raising
a RuntimeError that says why Triton cannot run unless `allow_fallback=True`, which warns and runs
the reference; "torch" always runs the reference. With TRITON_INTERPRET=1 in the environment before
this import, "triton" runs the kernels on CPU tensors through Triton's interpreter (how CI tests them).

The Triton launchers are `torch.library` custom ops (namespace "ditlab") with fake implementations,
so `torch.compile(fullgraph=True)` traces through them; the reference path is plain torch ops.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import torch

from ditlab.core.errors import InputError
from ditlab.core.kernels import reference

__all__ = ["apply_rope", "backend", "gated_residual_layernorm_modulate", "layernorm_modulate", "rms_norm"]

BACKENDS = ("auto", "triton", "torch")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _triton_import_error() -> str | None:
    """Why Triton cannot be imported, or None; triton is imported only where it could run."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if not (torch.cuda.is_available() or INTERPRET):
        return None
    try:
        importlib.import_module("ditlab.core.kernels.triton_kernels")
    except Exception as e:  # a broken install fails in more ways than ImportError
        return f"triton does not import ({type(e).__name__}: {e})"
    return None


_TRITON_ERROR = _triton_import_error()


def backend() -> dict:
    """What "auto" does on this machine, and why Triton cannot run where it cannot."""
    cuda = torch.cuda.is_available()
    reason = _TRITON_ERROR or (None if cuda or INTERPRET else "no CUDA device and TRITON_INTERPRET is not 1")
    return {
        "auto": "triton" if cuda and _TRITON_ERROR is None else "torch",
        "triton_usable": reason is None,
        "reason": reason,
        "cuda": cuda,
        "interpret": INTERPRET,
    }


def _use_triton(name: str, backend: str, allow_fallback: bool, *tensors: torch.Tensor) -> bool:
    """The dispatch decision, made from devices and flags only so that dynamo traces it."""
    if backend == "torch":
        return False
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    x = tensors[0]
    if backend == "auto" and (not x.is_cuda or torch.compiler.is_compiling()):
        # under torch.compile, "auto" hands Inductor the reference ops to fuse with their neighbours: the
        # opaque Triton ops inside compiled blocks made a DiT-XL forward on an H200 1.7x slower (BENCHMARKS.md)
        return False
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if _TRITON_ERROR is not None:
        why = _TRITON_ERROR
    elif not (x.is_cuda or INTERPRET):
        why = f"the tensors are on {x.device}: Triton needs CUDA, or TRITON_INTERPRET=1 set before import for the CPU"
    elif needs_grad:
        why = "the Triton kernels are forward-only and an input requires grad"
    else:
        return True
    if backend == "auto":
        return False
    if not allow_fallback:
        raise RuntimeError(f"{name}: backend='triton' cannot run: {why}. "
                           "Use backend='torch' or 'auto', or pass allow_fallback=True to run the torch reference.")
    warnings.warn(f"{name}: Triton cannot run ({why}); running the torch reference", RuntimeWarning, stacklevel=3)
    return False


def _check_modulated(x: torch.Tensor, **vectors: torch.Tensor) -> None:
    if x.ndim != 3:
        raise InputError(f"expected x of shape (B, T, D), got {tuple(x.shape)}")
    for name, v in vectors.items():
        if v.shape != (x.shape[0], x.shape[2]):
            raise InputError(f"expected {name} of shape (B, D) = {(x.shape[0], x.shape[2])}, got {tuple(v.shape)}")


# ----------------------------------------------------------------------------------------------
# Custom ops around the Triton launchers (the launcher module is imported when an op first runs)
# ----------------------------------------------------------------------------------------------

def _kernels():
    return importlib.import_module("ditlab.core.kernels.triton_kernels")


@torch.library.custom_op("ditlab::layernorm_modulate", mutates_args=())
def _layernorm_modulate_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return _kernels().layernorm_modulate(x, shift, scale, eps)


@_layernorm_modulate_op.register_fake
def _(x, shift, scale, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("ditlab::gated_residual_layernorm_modulate", mutates_args=())
def _gated_residual_layernorm_modulate_op(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().gated_residual_layernorm_modulate(x, gate, y, shift, scale, eps)


@_gated_residual_layernorm_modulate_op.register_fake
def _(x, gate, y, shift, scale, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@torch.library.custom_op("ditlab::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _kernels().rms_norm(x, weight, eps)


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("ditlab::apply_rope", mutates_args=())
def _apply_rope_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _kernels().apply_rope(x, cos, sin)


@_apply_rope_op.register_fake
def _(x, cos, sin):
    return x.new_empty(x.shape)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------

def layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
    backend: str = "auto", allow_fallback: bool = False,
) -> torch.Tensor:
    """DiT's `modulate(LayerNorm(x), shift, scale)`: x (B, T, D), shift and scale (B, D), no affine weights."""
    _check_modulated(x, shift=shift, scale=scale)
    if _use_triton("layernorm_modulate", backend, allow_fallback, x, shift, scale):
        return _layernorm_modulate_op(x, shift, scale, eps)
    return reference.layernorm_modulate(x, shift, scale, eps)


def gated_residual_layernorm_modulate(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
    eps: float = 1e-6, backend: str = "auto", allow_fallback: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_new, h): x_new = x + gate * y, h = layernorm_modulate(x_new, shift, scale), in one pass.

    x and y (B, T, D); gate, shift, scale (B, D).
    """
    _check_modulated(x, gate=gate, shift=shift, scale=scale)
    if y.shape != x.shape:
        raise InputError(f"expected y of the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
    if _use_triton("gated_residual_layernorm_modulate", backend, allow_fallback, x, gate, y, shift, scale):
        return _gated_residual_layernorm_modulate_op(x, gate, y, shift, scale, eps)
    return reference.gated_residual_layernorm_modulate(x, gate, y, shift, scale, eps)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, backend: str = "auto", allow_fallback: bool = False
) -> torch.Tensor:
    """`F.rms_norm` over the last axis of x (..., D) with a weight (D,)."""
    if weight.shape != x.shape[-1:]:
        raise InputError(f"expected weight of shape ({x.shape[-1]},) for x {tuple(x.shape)}, got {tuple(weight.shape)}")
    if _use_triton("rms_norm", backend, allow_fallback, x, weight):
        return _rms_norm_op(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "auto", allow_fallback: bool = False
) -> torch.Tensor:
    """Rotate interleaved channel pairs (2i, 2i+1) of x (B, H, L, Dh) by angles given as cos, sin (L, Dh/2)."""
    if x.ndim != 4 or x.shape[-1] % 2:
        raise InputError(f"expected x of shape (B, H, L, Dh) with Dh even, got {tuple(x.shape)}")
    want = (x.shape[2], x.shape[3] // 2)
    if cos.shape != want or sin.shape != want:
        raise InputError(f"expected cos and sin of shape (L, Dh/2) = {want}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if _use_triton("apply_rope", backend, allow_fallback, x, cos, sin):
        return _apply_rope_op(x, cos, sin)
    return reference.apply_rope(x, cos, sin)
