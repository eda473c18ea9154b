"""Samplers: turn a trained network into samples. Plain functions with the whole loop visible.

`sample(...)` is the one entry point. Flows integrate the velocity ODE from t = 1 (noise) to 0 with
Euler or Heun; VP models step through a diffusers scheduler (DDIM, DPM-Solver++, UniPC, DEIS).
Two hooks let callers steer every step (data consistency, inpainting, guidance):
- `x0_hook(i, t, x, x0) -> x0'` rewrites the clean-sample estimate before the step is taken;
- `callback(i, t, x, x0) -> x' | None` sees the state after the step and may replace it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ditlab.core.diffusion.guidance import Denoiser
from ditlab.core.diffusion.paths import FlowMatching, Path
from ditlab.core.errors import InputError

if TYPE_CHECKING:
    from ditlab.core.accel.cache import CachePolicy

FLOW_SAMPLERS = ("euler", "heun")
VP_SAMPLERS = ("ddim", "ddpm", "dpmsolver++", "unipc", "deis")

Hook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]


def _progress(progress, n: int):
    if callable(progress):
        return progress
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="sampling", leave=False)
        return lambda i, total: bar.update(1) if i < total - 1 else bar.close()
    return lambda i, total: None


def flow_times(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 to 0; `shift` > 1 spends more steps at high noise (SD3's time shift)."""
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def sample_flow(den: Denoiser, x: torch.Tensor, steps: int, method: str = "euler", shift: float = 1.0,
                x0_hook: Hook | None = None, callback: Hook | None = None, progress=None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 to t = 0 (Heun: 2nd order, Euler on the last step)."""
    path = den.path
    times = flow_times(steps, shift).to(x.device)
    report = _progress(progress, steps)

    def velocity(i: int, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = den(x, t)
        x0 = path.x0_from_output(x, t, v)
        if x0_hook is not None:
            x0 = x0_hook(i, t, x, x0)
            v = path.output_from_x0(x, t, x0)
        return v, x0

    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        v, x0 = velocity(i, x, t)
        x_next = x + (t_next - t) * v
        if method == "heun" and t_next > 0:
            v2, _ = velocity(i, x_next, t_next)
            x_next = x + (t_next - t) * 0.5 * (v + v2)
        x = x_next
        if callback is not None:
            new = callback(i, t_next, x, x0)
            x = x if new is None else new
        report(i, steps)
    return x


def make_scheduler(path: Path, sampler: str, **overrides):
    """A diffusers scheduler for a VP path, configured from the path's own noise schedule."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    cfg = {**path.scheduler_config(), "timestep_spacing": "trailing", **overrides}
    if sampler == "ddim":
        return DDIMScheduler(**cfg, set_alpha_to_one=True)
    if sampler == "ddpm":
        return DDPMScheduler(**cfg)
    cfg.pop("clip_sample")
    if sampler == "dpmsolver++":
        return DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2)
    if sampler == "unipc":
        return UniPCMultistepScheduler(**cfg)
    return DEISMultistepScheduler(**cfg)


def sample_vp(den: Denoiser, x: torch.Tensor, steps: int, method: str = "ddim", eta: float = 0.0,
              generator: torch.Generator | None = None, x0_hook: Hook | None = None,
              callback: Hook | None = None, progress=None) -> torch.Tensor:
    """Step a VP model through a diffusers scheduler; the clean estimate is exposed to the hooks."""
    path = den.path
    sched = make_scheduler(path, method)
    sched.set_timesteps(steps, device=x.device)
    x = x * sched.init_noise_sigma
    report = _progress(progress, steps)
    accepts = inspect.signature(sched.step).parameters
    step_kw = {"eta": eta} if method == "ddim" else {}
    if "generator" in accepts:
        step_kw["generator"] = generator
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)
        out = den(x_in, t)
        x0 = path.x0_from_output(x_in, t, out)
        if x0_hook is not None:
            x0 = x0_hook(i, t, x, x0)
            out = path.output_from_x0(x_in, t, x0)
        x = sched.step(out, t, x, **step_kw).prev_sample
        if callback is not None:
            new = callback(i, t, x, x0)
            x = x if new is None else new
        report(i, steps)
    return x


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    path: Path,
    shape: tuple[int, ...],
    *,
    sampler: str | None = None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    model_kwargs: dict | None = None,
    uncond_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    x0_hook: Hook | None = None,
    callback: Hook | None = None,
    eta: float = 0.0,
    shift: float = 1.0,
    progress: bool | Callable[[int, int], None] = False,
    cache: CachePolicy | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Draw samples of `shape` from `model` trained on `path`. Seeded by `generator` (noise is drawn on
    the CPU, so a seed gives the same samples on any device). `guidance_scale` != 1 turns on
    classifier-free guidance; for class-conditional models the null class is the default unconditional
    input, otherwise pass `uncond_kwargs`. `cache` (a `ditlab.core.accel` policy) reuses transformer
    features across the model calls of this run: attached for this run's number of model calls (one batched
    call per evaluation, guided or not), in the caller's current hook context (`ditlab.core.hooks.context`).
    `precision` (`ditlab.core.accel.auto`; None: "auto", or $DITLAB_PRECISION) is how the network computes:
    "auto" runs the mode calibrated fastest for this model, machine and call shape within its error bound
    (measured once, then read from the cache), or name one: "fp32", "bf16+compile", "int8+compile", ..."""
    from ditlab.core.accel import auto  # here, so that accel may build on the samplers
    from ditlab.core.accel.cache import CachePolicy
    from ditlab.core.accel.ras import RegionAdaptive

    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if cache is not None and not isinstance(cache, CachePolicy):
        raise TypeError(f"cache must be a CachePolicy (NoCache, FORA, DeltaDiT, TaylorSeer, FirstBlockCache, "
                        f"RegionAdaptive; by name: ditlab.core.accel.policy) or None, got {type(cache).__name__}")
    is_flow = isinstance(path, FlowMatching)
    sampler = sampler or ("euler" if is_flow else "ddim")
    valid = FLOW_SAMPLERS if is_flow else VP_SAMPLERS
    if sampler not in valid:
        raise InputError(f"sampler {sampler!r} does not fit a {path.kind} path; choose one of {valid}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if x_T is None:
        x_T = torch.randn(shape, generator=generator)
    elif tuple(x_T.shape) != tuple(shape):
        raise InputError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    x = x_T.to(device=device, dtype=torch.float32)
    den = Denoiser(model, path, guidance_scale, model_kwargs, uncond_kwargs)

    def probe() -> auto.Probe:  # the calibration's call: this run's batch (CFG-doubled), inputs and time range
        batch = torch.cat([x, x]) if den.guided else x
        scale = float(path.model_time(torch.tensor(1.0))) if is_flow else float(path.num_train_timesteps)
        return auto.Probe(batch, den.batched if den.guided else den.kwargs, time_scale=scale)

    # region-adaptive sampling changes the token count per call: compiled blocks would recompile every call
    prepared = auto.prepare(model, precision, probe, compile_ok=not isinstance(cache, RegionAdaptive))
    den.model = prepared.net
    total_calls = 2 * steps - 1 if sampler == "heun" else steps  # Heun's last step is an Euler step
    with (cache.attach(prepared.net, total_calls) if cache is not None else contextlib.nullcontext(),
          prepared.context()):
        if is_flow:
            return sample_flow(den, x, steps, sampler, shift, x0_hook, callback, progress)
        return sample_vp(den, x, steps, sampler, eta, generator, x0_hook, callback, progress)
