"""CFG-parallel sampling: two ranks share classifier-free guidance instead of one batch of 2B.

Rank 0 runs the conditional branch and rank 1 the unconditional one; at every model call both
exchange their outputs and form `uncond + s * (cond - uncond)` identically, so both ranks step the
same state and return the samples one-process `sample` gives for the same seed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ditlab.core.diffusion import sample
from ditlab.core.diffusion.guidance import null_kwargs
from ditlab.core.diffusion.paths import Path
from ditlab.core.errors import InputError
from ditlab.core.parallel.ulysses import gather_cat


class _GuidedBranch(nn.Module):
    """This rank's half of a guided model: runs its own branch, gathers both, returns the guided output."""

    def __init__(self, model: nn.Module, branch_kwargs: dict, scale: float, group: dist.ProcessGroup | None):
        super().__init__()
        self.model, self.branch_kwargs, self.scale, self.group = model, branch_kwargs, scale, group

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = gather_cat(self.model(x, t, **self.branch_kwargs), 0, self.group).chunk(2)
        return uncond + self.scale * (cond - uncond)


def sample_cfg_parallel(
    model: nn.Module,
    path: Path,
    shape: tuple[int, ...],
    *,
    guidance_scale: float,
    model_kwargs: dict | None,
    uncond_kwargs: dict | None = None,
    group: dist.ProcessGroup | None = None,
    **sample_kwargs,
) -> torch.Tensor:
    """`sample(...)` with the two guidance branches on the two ranks of `group` (rank 0 conditional).
    Both ranks must pass the same arguments and seed; both return the same samples. `sample_kwargs`
    are `sample`'s (sampler, steps, generator, x_T, hooks, ...)."""
    if not dist.is_initialized():
        raise RuntimeError("sample_cfg_parallel needs an initialised torch.distributed process group "
                           "(see ditlab.core.parallel.init_from_env)")
    world = dist.get_world_size(group)
    if world != 2:
        raise InputError(f"CFG-parallel sampling needs a group of 2 ranks (conditional, unconditional), got {world}")
    model_kwargs = dict(model_kwargs or {})
    if guidance_scale == 1.0:  # no unconditional branch: both ranks sample alone
        return sample(model, path, shape, model_kwargs=model_kwargs, **sample_kwargs)
    uncond = uncond_kwargs if uncond_kwargs is not None else null_kwargs(model, model_kwargs)
    branch = (model_kwargs, uncond)[dist.get_rank(group)]
    return sample(_GuidedBranch(model, branch, float(guidance_scale), group), path, shape, **sample_kwargs)
