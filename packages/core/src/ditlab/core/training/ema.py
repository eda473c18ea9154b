"""Exponential moving average of a model's weights, the copy DiT-style models are sampled from."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ditlab.core.errors import InputError


class EMA:
    """A frozen copy of `model` that follows it: after each `update`, ema = decay * ema + (1 - decay) * p.

    Floating-point parameters are averaged; buffers (and integer parameters) are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise InputError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards `model` (same architecture as the copy)."""
        ema_params, params = list(self.model.parameters()), list(model.parameters())
        ema_buffers, buffers = list(self.model.buffers()), list(model.buffers())
        if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
            raise InputError(
                f"EMA copy has {len(ema_params)} parameters and {len(ema_buffers)} buffers, "
                f"the model {len(params)} and {len(buffers)}: expected the same architecture"
            )
        floating = [(e, p.detach()) for e, p in zip(ema_params, params, strict=True) if e.is_floating_point()]
        if floating:
            # lerp(ema, p, w) = ema + w * (p - ema) = (1 - w) * ema + w * p, with w = 1 - decay.
            ema_f, src_f = zip(*floating, strict=True)
            torch._foreach_lerp_(list(ema_f), list(src_f), 1.0 - self.decay)
        for e, p in zip(ema_params, params, strict=True):
            if not e.is_floating_point():
                e.copy_(p)
        for e, b in zip(ema_buffers, buffers, strict=True):
            e.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's own state dict."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load averaged weights (cast to the copy's dtypes and device)."""
        self.model.load_state_dict(state_dict)
