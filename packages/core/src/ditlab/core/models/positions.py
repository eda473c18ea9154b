"""Position encodings for token grids: fixed sin-cos tables and axial rotary embeddings (RoPE).

A grid is the token layout in tensor order: (L,) for sequences, (h, w) for images, (d, h, w) for
volumes. Both encodings assign channel groups to axes from the fastest axis (w) to the slowest,
which for 2D reproduces the sin-cos table of the original DiT and of diffusers' `PatchEmbed`.
"""

from __future__ import annotations

import functools

import torch

from ditlab.core.errors import InputError
from ditlab.core.kernels import apply_rope as apply_rope  # applies `rope_tables`; fused on CUDA


def _axis_split(dim: int, n_axes: int) -> list[int]:
    """Split `dim` channels into `n_axes` even groups; the first (fastest) axis takes the rest."""
    if dim % 2:
        raise InputError(f"position encodings need an even channel count, got {dim}")
    base = (dim // n_axes) // 2 * 2
    return [dim - base * (n_axes - 1)] + [base] * (n_axes - 1)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) table [sin(pos * w_i), cos(pos * w_i)], w_i = 10000^(-2i/dim)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.double()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def _grid_coords(grid: tuple[int, ...]) -> list[torch.Tensor]:
    """Flattened coordinates of every token, one tensor per axis, fastest axis first."""
    mesh = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    return [m.reshape(-1) for m in reversed(mesh)]


@functools.lru_cache(maxsize=64)
def sincos_table(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Fixed sin-cos position table for a token grid: (prod(grid), dim), float32."""
    coords = _grid_coords(grid)
    parts = _axis_split(dim, len(grid))
    return torch.cat([_sincos_1d(d, c) for d, c in zip(parts, coords, strict=True)], dim=1).float()


@functools.lru_cache(maxsize=64)
def rope_tables(head_dim: int, grid: tuple[int, ...], theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial RoPE angles for a token grid: (cos, sin), each (prod(grid), head_dim // 2), float32."""
    coords = _grid_coords(grid)
    angles = []
    for d, c in zip(_axis_split(head_dim, len(grid)), coords, strict=True):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles.append(c[:, None] * freqs[None, :])
    ang = torch.cat(angles, dim=1)
    return ang.cos().float(), ang.sin().float()
