"""Pure-torch references of the fused kernels: the definition of what each kernel computes.

These are the CPU path of the model, so they call exactly the torch ops the model always used;
`torch.compile` sees through them and fuses them itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, D) * (1 + scale) + shift, with per-sample shift and scale (B, D)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine weights over the last axis of x (B, T, D), then `modulate`."""
    return modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale)


def gated_residual_layernorm_modulate(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_new = x + gate * y (the gated residual of a branch), and h = layernorm_modulate(x_new)."""
    x = torch.addcmul(x, gate.unsqueeze(1), y)
    return x, layernorm_modulate(x, shift, scale, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last axis with a weight (D,)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2i, 2i+1) of x (B, H, L, Dh) by angles with cos, sin (L, Dh/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)
