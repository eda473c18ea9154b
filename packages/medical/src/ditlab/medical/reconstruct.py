"""Reconstruction: the DiT-prior solvers (DDS, DPS, RED-diff), the classical methods, and volumes in and out.

Everything works on stacks of axial slices (Z, H, W) in window units [0, 1] with per-slice measurements
y (Z, ...) of an operator (`operators`); the prior sees slices on the flow path of [-1, 1] data
(`models.SlicePrior`). Data terms are normalised by ||A||^2, as in `baselines`, so weights keep their
scale across view counts and sizes.

- `dds`: decomposed diffusion sampling. Each step takes Tweedie's x0_hat from the prior, then a few
  warm-started CG steps of data consistency, then re-noises to the next time with a DDIM-like mix of the
  predicted and fresh noise (`eta`). With `tv_weight > 0` the data step is DiffusionMBIR's ADMM with TV
  along z (and, with `tv_inplane > 0`, in-plane too), its split variables kept across steps. `t_start < 1`
  starts from a noised classical reconstruction instead of pure noise (fewer steps, the prior refines).
- `dps`: diffusion posterior sampling: the gradient of ||y - A x0_hat(x_t)|| through the network.
- `reddiff`: RED-diff: Adam on the image mu with the data term plus the prior's score-matching term
  w_t <sg(eps_hat - eps), mu>.

Volumes of any depth run in slabs of `slab` slices (z-coupling inside a slab), so memory stays bounded.

`Settings.blend` < 1 mixes the DiT solution with the TV solution (a smaller prior weight; MRI's default, where
the prior is weaker than TV-CS).

The safeguard (`Settings.safeguard`, on by default): a DiT result is checked slice by slice against the
measurements by the discrepancy principle. A slice is accepted when its relative residual ||A x - y|| / ||y||
is at most `tau` x max(noise level, the classical TV solution's residual): as consistent as the known noise
allows, or as the classical solution is. A slice that fails is backed off: rerun with a later start (half the
start time, the prior's weight smaller), and where it still fails, replaced by the TV solution. The verdict
(`Result.safeguard`, `Verdict`) says how many slices were backed off and why.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ditlab.core.diffusion.samplers import flow_times
from ditlab.core.errors import InputError
from ditlab.medical.acquisition import TASKS, Acquisition, Measurement, simulate
from ditlab.medical.baselines import cg, fbp, op_norm, sirt, tv_admm_3d, tv_pdhg_2d
from ditlab.medical.data import phantom_affine
from ditlab.medical.io import Volume, spacing_of, validate_volume
from ditlab.medical.metrics import evaluate, slice_residuals
from ditlab.medical.models import PATH
from ditlab.medical.operators import MRI, Operator, gradient, gradient_adjoint, slices_to_volume

__all__ = ["METHODS", "DIT_METHODS", "Acquisition", "Measurement", "Result", "Settings", "Verdict", "defaults",
           "evaluate", "reconstruct", "reconstruct_volume", "simulate_volume"]

METHODS = ("dds", "dps", "reddiff", "fbp", "sirt", "tv", "tv3d")
DIT_METHODS = ("dds", "dps", "reddiff")
CT_ONLY_METHODS = ("fbp", "sirt")
Progress = Callable[[int, int], None] | None
Tick = Callable[[], None]


# ----------------------------------------------------------------------------------------------
# Settings: the defaults were chosen on validation phantoms (seed 100); see BENCHMARKS.md
# ----------------------------------------------------------------------------------------------

@dataclass
class Settings:
    """Knobs of every method; `defaults(task)` gives the tuned ones."""

    steps: int = 50  # network calls per run of a DiT method
    samples: int = 1  # DiT runs averaged (an estimate of the posterior mean; NFE = steps x samples)
    t_start: float = 1.0  # DDS/DPS start time (1 = pure noise; < 1 = noised classical reconstruction)
    init: str = "tv"  # what t_start < 1 (and RED-diff) starts from: "tv" | "fbp" | "zero"
    eta: float = 0.85  # DDIM-like stochasticity of the re-noising
    cg_iters: int = 5  # data-consistency CG steps per DDS step
    gamma: float = 0.0  # DDS: weight of ||x - x0_hat||^2 in the data step (0: DDS's early-stopped CG)
    tv_weight: float = 0.0  # DDS: lam of the TV term of the data step (0: plain CG)
    tv_inplane: float = 0.0  # DDS: in-plane TV weight relative to z (0: z only, DiffusionMBIR)
    rho: float = 0.0  # ADMM penalty of the TV data step (0: 10 * tv_weight)
    zeta: float = 1.0  # DPS step size
    reddiff_lambda: float = 0.25  # RED-diff prior weight
    reddiff_lr: float = 0.01  # RED-diff Adam learning rate (window units per step, roughly)
    tv_lambda: float = 3e-4  # the TV baseline's lam (and the DDS init's)
    tv_iters: int = 300
    init_iters: int = 100  # TV iterations of the DiT methods' starting point (the prior refines it)
    tv3d_iters: int = 60
    sirt_iters: int = 200
    fbp_filter: str = "hann"
    slab: int = 32  # slices reconstructed together (z-coupling inside a slab)
    batch: int = 16  # slices per network call
    z_weight: float = 1.0  # z differences' weight in TV (slice spacing is folded in by the caller if wanted)
    blend: float = 1.0  # DiT methods: the weight of the DiT solution against the TV solution (1: the DiT's alone)
    safeguard: bool = True  # DiT methods: check each slice by the discrepancy principle and back off (see above)
    tau: float = 2.0  # the safeguard's tolerance on the residual, x max(noise level, classical residual)

    def replace(self, **kw) -> Settings:
        unknown = set(kw) - set(asdict(self))
        if unknown:
            raise InputError(f"unknown settings {sorted(unknown)}; expected some of {sorted(asdict(self))}")
        return Settings(**{**asdict(self), **kw})

    def check(self) -> None:
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.t_start <= 1:
            raise InputError(f"t_start must lie in (0, 1], got {self.t_start}")
        if self.init not in ("tv", "fbp", "zero"):
            raise InputError(f"init must be 'tv', 'fbp' or 'zero', got {self.init!r}")
        if not 0 <= self.eta <= 1:
            raise InputError(f"eta must lie in [0, 1], got {self.eta}")
        if self.samples < 1:
            raise InputError(f"samples must be >= 1, got {self.samples}")
        if self.slab < 1 or self.batch < 1:
            raise InputError(f"slab and batch must be >= 1, got {self.slab}, {self.batch}")
        if not 0 < self.blend <= 1:
            raise InputError(f"blend must lie in (0, 1] (the DiT solution's weight against TV), got {self.blend}")
        if self.tau < 1:
            raise InputError(f"tau must be >= 1 (a residual bound of at least the noise level), got {self.tau}")


_WARM = {"steps": 10, "samples": 3, "t_start": 0.25, "eta": 0.5, "tv_inplane": 1.0, "z_weight": 5.0}
TUNED: dict[str, dict] = {  # DDS warm-started from TV at a low noise level, ADMM-TV data step (see BENCHMARKS.md)
    # one run of 30 steps from t = 0.12: on validation volumes as good as 3 x 10 from 0.25 in distribution
    # (37.80 vs 37.88 dB, phantom seed 100) and 1.3 dB better out of it (OOD seed 1, 8 slices: 30.44 vs 29.14)
    "sparse-view": {**_WARM, "steps": 30, "samples": 1, "t_start": 0.12, "tv_weight": 3e-4},
    "limited-angle": {**_WARM, "tv_weight": 3e-4},  # t = 0.12 was worse here (31.51 vs 31.72 dB, seed 100)
    # x4, seed 100: 41.51 vs 40.70 dB; the start from TV-CS run to convergence (300 iterations, as the TV method) was
    # better on all four validation volumes of issue 11 (torso seed 100, families seed 100): torso -2.10 vs -2.18 dB
    # against TV-CS, ellipses +0.43 vs -0.25, texture -0.73 vs -0.99, head +0.67 vs -0.38. The DDS solution's weight
    # against TV-CS (`blend`), on the same volumes with the retrained prior (step 7300): 0.25: torso -0.55, ellipses
    # +0.28, texture -0.03, head +0.44; 0.35: -0.80, +0.37, -0.09, +0.59; 0.5: -1.13, +0.47, -0.22, +0.80 (the
    # headline PSNR; on the whole-volume PSNR more DDS was better on all four: pure DDS with the earlier prior beat
    # TV-CS by +0.21 to +1.40 dB there, the headline's mostly-air edge slices favour TV's flat background)
    "mri": {**_WARM, "tv_lambda": 3e-3, "t_start": 0.12, "tv_weight": 1e-3, "init_iters": 300, "blend": 0.25},
}


def defaults(task: str) -> Settings:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {TASKS}")
    return Settings().replace(**TUNED[task])


# ----------------------------------------------------------------------------------------------
# Pieces shared by the solvers
# ----------------------------------------------------------------------------------------------

def _times(steps: int, t_start: float) -> list[float]:
    """The flow sampler's time grid (core's `flow_times`) scaled to start at `t_start`."""
    return (t_start * flow_times(steps)).tolist()


def _init(y: torch.Tensor, op: Operator, s: Settings) -> torch.Tensor:
    if s.init == "zero":
        return op.adjoint(y).clamp(0, 1) if isinstance(op, MRI) else torch.zeros(y.shape[0], *op.image_shape)
    if s.init == "fbp":
        return (op.adjoint(y) if isinstance(op, MRI) else fbp(y, op, s.fbp_filter)).clamp(0, 1)
    return tv_pdhg_2d(y, op, s.tv_lambda, s.init_iters).clamp(0, 1)


class _DataStep:
    """argmin_x (1 / 2||A||^2) ||A x - y||^2 + (gamma / 2) ||x - x0||^2 [+ lam ||D x||_{2,1}] from x0.

    Without TV: `cg_iters` CG steps on the normal equations, warm-started at x0 (DDS). With TV: one ADMM
    round (CG x-step, shrinkage, dual update) whose split variables persist across calls (DiffusionMBIR).
    """

    def __init__(self, y: torch.Tensor, op: Operator, s: Settings) -> None:
        self.y, self.op, self.s = y, op, s
        self.scale2 = op_norm(op) ** 2
        self.rhs_data = op.adjoint(y) / self.scale2
        n = y.shape[0]
        self.dims: tuple[int, ...] = ()
        self.w: tuple[float, ...] = ()
        if s.tv_weight > 0:
            if n > 1:
                self.dims, self.w = (0,), (s.z_weight,)
            if s.tv_inplane > 0:
                self.dims, self.w = (*self.dims, 1, 2), (*self.w, s.tv_inplane, s.tv_inplane)
        self.rho = (s.rho or 10 * s.tv_weight) if self.dims else 0.0
        self.z = self.u = None

    def normal(self, v: torch.Tensor) -> torch.Tensor:
        out = self.op.adjoint(self.op.forward(v)) / self.scale2
        if self.s.gamma:
            out = out + self.s.gamma * v
        if self.rho:
            out = out + self.rho * gradient_adjoint(gradient(v, self.dims, self.w), self.dims, self.w)
        return out

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        b = self.rhs_data + self.s.gamma * x0 if self.s.gamma else self.rhs_data
        if self.rho:
            if self.z is None:
                self.z = gradient(x0, self.dims, self.w)
                self.u = torch.zeros_like(self.z)
            b = b + self.rho * gradient_adjoint(self.z - self.u, self.dims, self.w)
        x = cg(self.normal, b, x0, self.s.cg_iters)
        if self.rho:
            g = gradient(x, self.dims, self.w) + self.u
            self.z = g * (1 - (self.s.tv_weight / self.rho) / g.norm(dim=0, keepdim=True).clamp(min=1e-12)).clamp(min=0)
            self.u = g - self.z
        return x


def _renoise(x_unit: torch.Tensor, eps_hat: torch.Tensor, t_next: float, eta: float,
             g: torch.Generator) -> torch.Tensor:
    """The path point at t_next of clean slices x (in [0, 1]) with a DDIM-like mix of predicted and fresh noise."""
    noise = math.sqrt(1 - eta ** 2) * eps_hat + eta * torch.randn(x_unit.shape, generator=g)
    return PATH.interpolate(2 * x_unit - 1, noise, t_next)


# ----------------------------------------------------------------------------------------------
# The DiT-prior solvers (one slab of slices each)
# ----------------------------------------------------------------------------------------------

def dds(y: torch.Tensor, op: Operator, prior, s: Settings, g: torch.Generator, tick: Tick,
        start: torch.Tensor | None) -> torch.Tensor:
    """Decomposed diffusion sampling with an optional DiffusionMBIR TV data step; returns slices in [0, 1]."""
    n = y.shape[0]
    times = _times(s.steps, s.t_start)
    noise = torch.randn(n, *op.image_shape, generator=g)
    x_t = noise if start is None else prior.to_path(start, times[0], noise)
    step = _DataStep(y, op, s)
    x = None
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x0 = prior.x0(x_t, t).clamp(0, 1)
        x = step(x0).clamp(min=0)
        tick()
        if t_next > 0:
            x_t = _renoise(x.clamp(max=1), PATH.noise_from_x0(x_t, t, 2 * x0 - 1), t_next, s.eta, g)
    return x


def dps(y: torch.Tensor, op: Operator, prior, s: Settings, g: torch.Generator, tick: Tick,
        start: torch.Tensor | None) -> torch.Tensor:
    """Diffusion posterior sampling: x_t moves against grad_x_t ||y - A x0_hat(x_t)|| (through the network)."""
    n = y.shape[0]
    times = _times(s.steps, s.t_start)
    scale = op_norm(op)
    noise = torch.randn(n, *op.image_shape, generator=g)
    x_t = noise if start is None else prior.to_path(start, times[0], noise)
    x0 = None
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x_t = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            x0p = PATH.x0_from_output(x_t, t, prior.velocity(x_t, t, grad=True))  # [-1, 1] units
            res = (op.forward((x0p + 1) / 2) - y) / scale
            norms = res.abs().flatten(1).norm(dim=1)
            grad, = torch.autograd.grad(norms.sum(), x_t)
        tick()
        x0 = ((x0p.detach() + 1) / 2).clamp(0, 1)
        if t_next > 0:
            eps_hat = PATH.noise_from_x0(x_t.detach(), t, x0p.detach())
            x_t = _renoise(x0, eps_hat, t_next, s.eta, g) - s.zeta * grad
    return x0.clamp(min=0)


def reddiff(y: torch.Tensor, op: Operator, prior, s: Settings, g: torch.Generator, tick: Tick,
            start: torch.Tensor | None) -> torch.Tensor:
    """RED-diff: Adam on mu of 0.5 ||A mu - y||^2 / ||A||^2 + lambda w_t <sg(eps_hat - eps), mu>, t from t_start
    to 0, mu starting from `init`."""
    scale2 = op_norm(op) ** 2
    mu = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=s.reddiff_lr)
    times = [s.t_start * (1 - (i + 0.5) / s.steps) for i in range(s.steps)]  # t_start < 1: a warm start
    weights = [t / max(1 - t, 1e-3) for t in times]  # sigma_t / alpha_t, ~ 1 / sqrt(SNR)
    mean_w = sum(weights) / len(weights)
    for t, w in zip(times, weights, strict=True):
        eps = torch.randn(mu.shape, generator=g)
        with torch.no_grad():
            x_t = prior.to_path(mu.detach().clamp(0, 1), t, eps)
            eps_hat = PATH.noise_from_x0(x_t, t, PATH.x0_from_output(x_t, t, prior.velocity(x_t, t)))
        tick()
        with torch.enable_grad():
            data = 0.5 * ((op.forward(mu) - y).abs() ** 2).sum() / scale2
            reg = (w / mean_w) * ((eps_hat - eps) * mu).sum()
            loss = data + s.reddiff_lambda * reg
            opt.zero_grad()
            loss.backward()
        opt.step()
        with torch.no_grad():
            mu.clamp_(0, 1)
    return mu.detach()


SOLVERS = {"dds": dds, "dps": dps, "reddiff": reddiff}


def network_calls(method: str, s: Settings) -> int:
    """Network evaluations per slice in one run of a DiT solver: each of the three calls the prior once per step
    (what a feature cache is attached for)."""
    if method not in SOLVERS:
        raise InputError(f"{method!r} calls no network; expected one of {DIT_METHODS}")
    return s.steps


# ----------------------------------------------------------------------------------------------
# The entry points
# ----------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What the safeguard found: per-slice residuals against their bounds, and what it did about the failures."""

    status: str  # "passed" | "backed off" | "off" (not checked: a classical method, or the safeguard disabled)
    slices: int = 0
    later_start: int = 0  # slices rerun with a later start (and passed then)
    classical: int = 0  # slices replaced by the TV solution
    residual: float = float("nan")  # max over slices of the DiT result's relative residual (before backing off)
    bound: float = float("nan")  # the bound of that slice
    noise: float = 0.0  # the relative noise level the bound used (0: unknown)
    classical_residual: float = float("nan")  # median over slices of the TV solution's residual
    tau: float = 2.0

    @property
    def backed_off(self) -> int:
        return self.later_start + self.classical

    @property
    def message(self) -> str:
        if self.status == "off":
            return "safeguard: not applied"
        if self.status == "passed":
            return (f"safeguard: passed on all {self.slices} slices (residual <= {self.tau:g} x max(noise "
                    f"{self.noise:.3g}, TV's residual ~{self.classical_residual:.3g}))")
        parts = [f"{n} {what}" for n, what in ((self.later_start, "rerun with a later start"),
                                               (self.classical, "replaced by the TV solution")) if n]
        return (f"safeguard: BACKED OFF on {self.backed_off} of {self.slices} slices, less consistent with the "
                f"measurements than the noise allows (worst residual {self.residual:.3g} > {self.bound:.3g}): "
                + ", ".join(parts))

@dataclass
class Result:
    """A reconstruction: slices (Z, H, W) in window units, and how it was made."""

    slices: torch.Tensor
    method: str
    seconds: float
    nfe: int  # network calls per slice
    settings: dict = field(default_factory=dict)
    nfe_equivalent: float = 0.0  # network evaluations actually spent per slice (fewer than nfe with a cache)
    safeguard: Verdict = field(default_factory=lambda: Verdict("off"))


class _Guard:
    """The safeguard's bookkeeping over the slabs of one reconstruction."""

    def __init__(self, s: Settings, noise: float | None) -> None:
        self.s, self.noise = s, float(noise or 0.0)
        self.res: list[torch.Tensor] = []
        self.bounds: list[torch.Tensor] = []
        self.cls_res: list[torch.Tensor] = []
        self.later = self.classical = self.calls = 0

    def check(self, yi: torch.Tensor, op: Operator, x: torch.Tensor, reference: torch.Tensor,
              start: torch.Tensor | None, method: str, prior, g: torch.Generator) -> torch.Tensor:
        """`x` with the slices that fail the discrepancy bound backed off (`reference`: the TV solution; `start`:
        the DiT run's starting point, if any)."""
        r, r_cls = slice_residuals(x, op, yi), slice_residuals(reference, op, yi)
        bound = self.s.tau * torch.clamp(r_cls, min=self.noise)
        self.res.append(r), self.bounds.append(bound), self.cls_res.append(r_cls)
        bad = (r > bound).nonzero().flatten()
        if len(bad) == 0:
            return x
        x = x.clone()
        if self.s.t_start > 0.02:  # a later start: closer to the classical solution, less of the prior
            later = self.s.replace(t_start=self.s.t_start / 2)
            calls0 = prior.calls
            retry = SOLVERS[method](yi[bad], op, prior, later, g, lambda: None,
                                    (reference if start is None else start)[bad])
            self.calls += prior.calls - calls0
            ok = slice_residuals(retry, op, yi[bad]) <= bound[bad]
            x[bad[ok]] = retry[ok]
            self.later += int(ok.sum())
            bad = bad[~ok]
        if len(bad):  # the classical solution, as the TV method computes it
            x[bad] = tv_pdhg_2d(yi[bad], op, self.s.tv_lambda, self.s.tv_iters).clamp(0, 1)
            self.classical += len(bad)
        return x

    def verdict(self) -> Verdict:
        r, bound, r_cls = torch.cat(self.res), torch.cat(self.bounds), torch.cat(self.cls_res)
        worst = int(torch.argmax(r / bound))
        status = "backed off" if self.later + self.classical else "passed"
        return Verdict(status, len(r), self.later, self.classical, float(r[worst]), float(bound[worst]), self.noise,
                       float(r_cls.median()), self.s.tau)


def reconstruct(y: torch.Tensor, op: Operator, method: str = "dds", settings: Settings | None = None,
                prior=None, seed: int = 0, progress: Progress = None, cache=None, noise: float | None = None) -> Result:
    """Reconstruct slices (Z, H, W) in window units from measurements y (Z, ...) of `op`.

    `method` is one of `METHODS`. The DiT methods use `prior` (a `SlicePrior`, or None for the packaged
    ct-prior), run slab by slab, and report NFE per slice; `cache` (a `ditlab.core.accel` policy) reuses
    transformer features across the steps of each slab. `progress(done, total)` is called after each step.
    With `settings.safeguard` each DiT slice is checked against `noise` (the measurements' relative noise level;
    None: unknown, the classical solution's residual stands in) and backed off where it fails (`Result.safeguard`).
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; expected one of {METHODS}")
    s = settings or Settings()
    s.check()
    if y.ndim != 3:
        raise InputError(f"expected measurements (slices, ...) with 3 dimensions, got shape {tuple(y.shape)}")
    t0 = time.perf_counter()
    n = y.shape[0]
    if method not in DIT_METHODS:
        if method in CT_ONLY_METHODS and isinstance(op, MRI):
            raise InputError(f"{method} is a CT method; for MRI use 'tv' (TV-CS), 'dds', 'dps' or 'reddiff'")
        out = []
        slabs = range(0, n, s.slab)
        for k, i in enumerate(slabs):
            yi = y[i:i + s.slab]
            if method == "fbp":
                out.append(fbp(yi, op, s.fbp_filter))
            elif method == "sirt":
                out.append(sirt(yi, op, s.sirt_iters))
            elif method == "tv3d" and len(yi) > 1:
                out.append(tv_admm_3d(yi, op, s.tv_lambda, s.tv3d_iters, z_weight=s.z_weight))
            else:
                out.append(tv_pdhg_2d(yi, op, s.tv_lambda, s.tv_iters))
            if progress:
                progress(k + 1, len(slabs))
        return Result(torch.cat(out), method, time.perf_counter() - t0, 0, asdict(s))
    if prior is None:
        from ditlab.medical.models import SlicePrior, load_prior

        prior = SlicePrior(load_prior(), batch=s.batch, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    total = s.steps * s.samples * math.ceil(n / s.slab)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    calls0, spent, slabs = prior.calls, 0.0, math.ceil(n / s.slab)
    guard = _Guard(s, noise) if s.safeguard else None
    out = []
    for i in range(0, n, s.slab):
        yi, runs = y[i:i + s.slab], []
        # the classical start is deterministic: computed once per slab, shared by the averaged runs
        start = _init(yi, op, s) if method == "reddiff" or s.t_start < 1 else None
        reference = None  # the classical solution (safeguard, blend): TV, the DiT's own start when that is TV
        if guard is not None or s.blend < 1:
            reference = start if start is not None and s.init == "tv" else _init(yi, op, s.replace(init="tv"))
        for _ in range(s.samples):
            with prior.cached(cache, network_calls(method, s)) if cache is not None else contextlib.nullcontext():
                runs.append(SOLVERS[method](yi, op, prior, s, g, tick, start))
                if cache is not None:  # the mean over this slab's chunks (one context each) of what they spent
                    spent += cache.nfe_equivalent() / max(1, len(cache.states))
        x = torch.stack(runs).mean(0)
        if s.blend < 1:  # a smaller prior weight: both solutions fit the data, their mix does too
            x = s.blend * x + (1 - s.blend) * reference
        out.append(x if guard is None else guard.check(yi, op, x, reference, start, method, prior, g))
    nfe = (prior.calls - calls0 - (guard.calls if guard is not None else 0)) // max(1, slabs)
    return Result(torch.cat(out), method, time.perf_counter() - t0, nfe, asdict(s),
                  spent / slabs if cache is not None else float(nfe),
                  guard.verdict() if guard is not None else Verdict("off"))


# ----------------------------------------------------------------------------------------------
# Volumes: simulate an acquisition of a volume, reconstruct it, score it
# ----------------------------------------------------------------------------------------------

def simulate_volume(volume: Volume | np.ndarray, acquisition: Acquisition, noise: float = 0.01, seed: int = 0,
                    upsample: int = 2) -> Measurement:
    """Measure a volume (a `Volume` or an (X, Y, Z) array in HU) with `acquisition`: simulated at `upsample`x
    with Gaussian noise of `noise` x the RMS measurement (`operators.simulate`), so no inverse crime."""
    if not isinstance(volume, Volume):
        data = validate_volume(volume)
        volume = Volume(data, phantom_affine(data.shape), (1.0, 1.0, 1.0), source="array")
    y, _ = simulate(volume.data, acquisition, noise=noise, seed=seed, upsample=upsample)
    return Measurement(y, acquisition, tuple(volume.data.shape), volume.affine, volume.original_affine, noise,
                       seed, volume.source)


def reconstruct_volume(meas: Measurement, method: str = "dds", settings: Settings | None = None, prior=None,
                       seed: int = 0, progress: Progress = None, cache=None) -> tuple[Volume, Result]:
    """Reconstruct a measured volume: a `Volume` in HU with the measured volume's affine and orientation."""
    s = settings or defaults(meas.acquisition.task)
    res = reconstruct(meas.y, meas.operator, method, s, prior=prior, seed=seed, progress=progress, cache=cache,
                      noise=meas.noise)
    hu = slices_to_volume(res.slices)
    return Volume(hu, meas.affine, spacing_of(meas.affine), source=f"{method} of {meas.source}",
                  original_affine=meas.original_affine), res
