"""Diffusion paths: what x_t is between data and noise, what the network is trained to predict, and
how to turn its prediction back into a clean-sample estimate.

Two families:
- `FlowMatching`: x_t = (1 - t) x0 + t eps, t in [0, 1] with t = 1 pure noise (the convention of
  diffusers' FlowMatchEulerDiscreteScheduler); the network predicts the velocity v = eps - x0.
- `VPDiffusion`: DDPM's x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps over integer t in [0, T); the
  network predicts eps, v = sqrt(abar) eps - sqrt(1 - abar) x0, or x0 itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditlab.core.errors import InputError


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or scalar -> broadcastable against `like` (B, ...)."""
    v = torch.as_tensor(v, device=like.device, dtype=torch.float32)
    if v.ndim == 0:
        v = v.expand(like.shape[0])
    return v.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class FlowMatching:
    """Linear-path flow matching (rectified flow / SiT / SD3) with a velocity target."""

    t_sampling: str = "uniform"  # "uniform" | "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_scale: float = 1000.0  # the network sees t * time_scale, the range its timestep embedding expects

    kind = "flow"
    prediction_type = "velocity"

    def __post_init__(self) -> None:
        if self.t_sampling not in ("uniform", "logit_normal"):
            raise InputError(f"t_sampling must be 'uniform' or 'logit_normal', got {self.t_sampling!r}")

    def sample_t(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        if self.t_sampling == "uniform":
            t = torch.rand(n, generator=generator)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator))
        return t.to(device)

    def interpolate(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _expand(t, x0)
        return (1 - t) * x0 + t * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps - x0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float32) * self.time_scale

    def x0_from_output(self, x_t: torch.Tensor, t, out: torch.Tensor) -> torch.Tensor:
        return x_t - _expand(t, x_t) * out

    def output_from_x0(self, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """The velocity that makes `x0` the clean estimate at (x_t, t); t must be > 0."""
        return (x_t - x0) / _expand(t, x_t).clamp_min(1e-8)

    def noise_from_x0(self, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """The noise eps with x_t = interpolate(x0, eps, t) (DDIM's predicted noise); t must be > 0."""
        t = _expand(t, x_t)
        return (x_t - (1 - t) * x0) / t.clamp_min(1e-8)


@dataclass
class VPDiffusion:
    """DDPM variance-preserving diffusion; betas come from diffusers' DDPMScheduler so that every
    diffusers sampler built from `scheduler_config()` sees exactly the training noise levels."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"

    kind = "vp"

    def __post_init__(self) -> None:
        from diffusers import DDPMScheduler

        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise InputError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', "
                             f"got {self.prediction_type!r}")
        sched = DDPMScheduler(**self.scheduler_config())
        self.alphas_cumprod = sched.alphas_cumprod.float()

    def scheduler_config(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end,
                "prediction_type": self.prediction_type, "clip_sample": False}

    def _abar(self, t, like: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(t, device="cpu").long().clamp(0, self.num_train_timesteps - 1)
        return _expand(self.alphas_cumprod[idx], like)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator).to(device)

    def interpolate(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        a = self._abar(t, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float32)

    def x0_from_output(self, x_t: torch.Tensor, t, out: torch.Tensor) -> torch.Tensor:
        a = self._abar(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt()
        if self.prediction_type == "sample":
            return out
        return a.sqrt() * x_t - (1 - a).sqrt() * out

    def output_from_x0(self, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """The network output (in this path's prediction type) whose clean estimate is `x0`."""
        a = self._abar(t, x_t)
        if self.prediction_type == "sample":
            return x0
        eps = self.noise_from_x0(x_t, t, x0)
        if self.prediction_type == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def noise_from_x0(self, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """The noise eps with x_t = interpolate(x0, eps, t) (DDIM's predicted noise)."""
        a = self._abar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


Path = FlowMatching | VPDiffusion
