"""Training loss: noise the data along a path, ask the network for the path's target, take the MSE."""

from __future__ import annotations

import torch

from ditlab.core.diffusion.paths import Path
from ditlab.core.errors import InputError


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `err` over the entries `mask` keeps. `mask` is (B,), (B, N) for sets/sequences (expanded
    over the trailing dims), or the full shape of `err`."""
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    if m.shape != err.shape:
        if m.shape != err.shape[: m.ndim]:
            raise InputError(f"loss mask of shape {tuple(m.shape)} does not fit the target {tuple(err.shape)}")
        m = m.reshape(*m.shape, *([1] * (err.ndim - m.ndim))).expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def diffusion_loss(
    model: torch.nn.Module,
    path: Path,
    x0: torch.Tensor,
    model_kwargs: dict | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MSE between the network output and the path's target at a random t per sample. For set inputs
    a loss mask (B, N) is also passed to the model as its padding `mask`."""
    b = x0.shape[0]
    t = path.sample_t(b, generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    x_t = path.interpolate(x0, eps, t)
    out = model(x_t, path.model_time(t).to(x0.device), **(model_kwargs or {}))
    out = out[:, : x0.shape[1]] if out.shape[1] != x0.shape[1] and out.ndim == x0.ndim else out
    err = (out.float() - path.target(x0, eps, t).float()) ** 2
    return masked_mean(err, mask)
