"""Classifier-free guidance: one batched forward for the conditional and unconditional inputs."""

from __future__ import annotations

import torch

from ditlab.core.diffusion.paths import Path
from ditlab.core.errors import InputError


def _cat(a, b):
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b], dim=0)
    raise InputError(f"conditional and unconditional inputs must both be tensors or both None, "
                     f"got {type(a).__name__} and {type(b).__name__}")


def null_kwargs(model: torch.nn.Module, model_kwargs: dict) -> dict:
    """The unconditional inputs of a class-conditional model: every label replaced by the null class."""
    cfg = getattr(model, "cfg", None)
    labels = model_kwargs.get("class_labels")
    extra = set(model_kwargs) - {"class_labels", "mask"}
    if labels is None or cfg is None or not cfg.num_classes or extra:
        raise InputError("classifier-free guidance needs `uncond_kwargs` unless the model is class-conditional "
                         f"and only class_labels are given (got {sorted(model_kwargs)})")
    return {**model_kwargs, "class_labels": torch.full_like(torch.as_tensor(labels), cfg.num_classes)}


class Denoiser:
    """Wraps a network for a sampler: path time scaling, CFG, and learned-sigma channels dropped."""

    def __init__(self, model: torch.nn.Module, path: Path, guidance_scale: float = 1.0,
                 model_kwargs: dict | None = None, uncond_kwargs: dict | None = None):
        self.model, self.path, self.scale = model, path, float(guidance_scale)
        self.kwargs = dict(model_kwargs or {})
        self.nfe = 0
        self.guided = self.scale != 1.0
        if self.guided:
            uncond = uncond_kwargs if uncond_kwargs is not None else null_kwargs(model, self.kwargs)
            keys = set(self.kwargs) | set(uncond)
            self.batched = {k: _cat(self.kwargs.get(k), uncond.get(k)) for k in keys}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t_model = self.path.model_time(t).to(x.device)
        t_model = t_model.expand(b) if t_model.ndim == 0 else t_model
        self.nfe += 1
        if not self.guided:
            return self._trim(self.model(x, t_model, **self.kwargs), x)
        xx = torch.cat([x, x])
        out = self._trim(self.model(xx, torch.cat([t_model, t_model]), **self.batched), xx)
        cond, uncond = out.chunk(2)
        return uncond + self.scale * (cond - uncond)

    @staticmethod
    def _trim(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Keep the prediction channels of a learn-sigma output (channels doubled)."""
        if out.shape == x.shape:
            return out
        dim = next(d for d in range(out.ndim) if out.shape[d] != x.shape[d])
        return out.narrow(dim, 0, x.shape[dim])
