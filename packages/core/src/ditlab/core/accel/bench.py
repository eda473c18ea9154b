"""`ditlab core benchmark --accel`: feature caches, region-adaptive sampling and precision/compile, against the
uncached sample and against diffusers' own cache hooks, side by side in one process.

Every run draws 50 Euler steps of flow matching with CFG 2 (conditional and unconditional rows batched in
one network call) from one fixed noise draw and label set per task:
- cache policies on the demo model (16 tokens) and on shapes32 (256 tokens);
- diffusers' `TaylorSeerCacheConfig` and `FirstBlockCacheConfig` hooks on shapes32 converted to a diffusers
  `DiTTransformer2DModel` (`dit_to_diffusers`, same weights), sampled by the same sampler;
- bf16 autocast, `compile_blocks` and shapes32's best cache against diffusers fp32 eager, on shapes32-S (DiT-S
  size, the size of issue 4's probe; trained in the benchmark cache on first use, not shipped) in the full run
  and on shapes32 in the quick one;
- RAS on a 1024-token model (shapes64, trained in the benchmark cache on first use, not shipped);
- with `--gpu` instead (`gpu_run`), on CUDA: the fused kernels' bandwidth against copy bandwidth, and bf16 /
  `compile_blocks` / fp8 / cache speed-ups end to end on shapes32-S and a DiT-XL/2-size network.

Quality is PSNR in dB over data range 2 (samples clamped to [-1, 1]), averaged over samples. "PSNR vs
baseline" compares a method's final sample with its task's baseline sample. The goals' "PSNR loss" needs a
yardstick both are judged by: the uncached ditlab sample of a Heun (2nd-order) solve with twice the steps
(same noise, labels and guidance), a near-converged solution of the same ODE. loss = PSNR(baseline,
reference) - PSNR(method, reference): how much accuracy towards the converged sample the method gives up;
<= 0 means none. (Euler with twice the steps is a worse yardstick: it still carries about half of the
baseline's first-order error, which overstates the baseline's accuracy, by 2-6 dB on these models.) Wall time is the
median of interleaved repeats (A B C A B C ...) after an untimed 2-step warm-up run of each method (which
also compiles; its time is reported for compiled methods).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from ditlab.core.accel import bench_model, precision
from ditlab.core.accel.cache import FORA, CachePolicy, DeltaDiT, FirstBlockCache, TaylorSeer
from ditlab.core.accel.ras import RegionAdaptive
from ditlab.core.bench import describe_machine, write_json
from ditlab.core.demo import PATH, load_demo
from ditlab.core.diffusion import sample
from ditlab.core.models import DiT
from ditlab.core.models.interop import dit_to_diffusers

PSNR_CAP = 100.0  # dB reported for identical samples
CACHE_LOSS_DB, PRECISION_LOSS_DB = 0.5, 0.3
UNCACHED = "uncached"
DIFFUSERS_TAYLOR_MODULES = [r"transformer_blocks\.\d+\.(attn1|ff)"]  # what our TaylorSeer forecasts, per module
M_WALL, M_SPEED, M_NFE = "wall s", "speed-up (x)", "NFE-equivalent"
M_PSNR, M_PSNR_REF, M_LOSS = "PSNR vs baseline (dB)", "PSNR vs reference (dB)", "PSNR loss (dB)"
METRICS = (M_WALL, M_SPEED, M_NFE, M_PSNR, M_PSNR_REF, M_LOSS)  # column order of the tables; others follow


PAPER_RAS = {"ratio": 0.5, "forecast": 0, "starvation": 0.5, "cooldown": 0}  # reuse of skipped outputs, as in RAS


@dataclass(frozen=True)
class AccelSize:
    """Batches, repeats and the policy grid of one benchmark run."""

    steps: int
    guidance: float
    repeats: int
    demo_batch: int
    cache_batch: int  # shapes32 cache and diffusers-hook rows
    precision_batch: int
    ras_batch: int
    ras_train_steps: int
    ras_train_batch: int
    compile: bool
    fora: tuple[int, ...]
    delta_dit: tuple[int, ...]
    taylor: tuple[tuple[int, int], ...]  # (interval, order)
    fbc: tuple[float, ...]
    ras: tuple[dict, ...]  # RegionAdaptive keyword arguments
    precision_width: str = "base"  # "S": the precision rows use shapes32-S (DiT-S size, trained in the cache)
    precision_train_steps: int = 0
    precision_train_batch: int = 16
    reference_factor: int = 2


FULL = AccelSize(steps=50, guidance=2.0, repeats=3, demo_batch=16, cache_batch=8, precision_batch=8, ras_batch=8,
                 ras_train_steps=400, ras_train_batch=8, compile=True, fora=(2, 3, 4), delta_dit=(2,),
                 taylor=tuple((i, o) for i in (2, 3, 4) for o in (1, 2)), fbc=(0.05, 0.1, 0.2),
                 ras=(PAPER_RAS, {"ratio": 0.35, "cooldown": 0}, {"ratio": 0.3}, {"ratio": 0.35}, {"ratio": 0.4},
                      {"ratio": 0.5}), precision_width="S",
                 precision_train_steps=300)
QUICK = AccelSize(steps=50, guidance=2.0, repeats=1, demo_batch=4, cache_batch=2, precision_batch=4, ras_batch=1,
                  ras_train_steps=30, ras_train_batch=8, compile=False, fora=(3,), delta_dit=(2,), taylor=((3, 2),),
                  fbc=(0.1,), ras=({"ratio": 0.5},))


@dataclass
class Subjects:
    """The models benchmarked: the demo model, the 256-token cache subject, the >= 1024-token RAS subject and
    the precision subject (shapes32 itself, or the DiT-S-size shapes32-S)."""

    demo: DiT
    shapes32: DiT
    ras: DiT
    ras_note: str = ""
    precision: DiT | None = None  # None: shapes32
    precision_note: str = "shapes32"


@dataclass
class Result:
    """One method's median wall seconds, its final sample, NFE-equivalent and untimed warm-up seconds."""

    seconds: float
    sample: torch.Tensor
    nfe: float
    warmup_seconds: float = 0.0


@dataclass
class Inputs:
    """One task's starting noise and labels; `take(n)` is the first n samples of the same draw."""

    x_T: torch.Tensor
    labels: torch.Tensor
    null: int

    def take(self, n: int) -> Inputs:
        return Inputs(self.x_T[:n], self.labels[:n], self.null)


Method = Callable[[int], tuple[torch.Tensor, float]]  # steps -> (final sample on the CPU, NFE-equivalent)


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean over samples of 10 log10(range^2 / MSE) after clamping both to [-1, 1]; PSNR_CAP for identical ones."""
    mse = (x.float().clamp(-1, 1) - ref.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    floor = data_range**2 / 10 ** (PSNR_CAP / 10)
    return (10 * torch.log10(data_range**2 / mse.clamp_min(floor))).mean().item()


def make_inputs(model: DiT, batch: int, seed: int = 0) -> Inputs:
    """Seeded noise (batch, C, H, W) at the model's nominal size and labels cycling through the classes."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((batch, cfg.in_channels, *cfg.input_size), generator=g)
    return Inputs(x_T, torch.arange(batch) % cfg.num_classes, cfg.num_classes)


def _draw(model: nn.Module, inputs: Inputs, size: AccelSize, steps: int, cache: CachePolicy | None = None,
          precision_ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
          sampler: str = "euler") -> torch.Tensor:
    """One sampling run from the task's noise, CFG with the null class as the unconditional label."""
    labels = inputs.labels.to(next(model.parameters()).device)
    null = torch.full_like(labels, inputs.null)
    with torch.inference_mode(), precision_ctx():
        x = sample(model, PATH, tuple(inputs.x_T.shape), sampler=sampler, steps=steps, guidance_scale=size.guidance,
                   x_T=inputs.x_T,
                   model_kwargs={"class_labels": labels}, uncond_kwargs={"class_labels": null}, cache=cache)
    return x.float().cpu()


def reference(model: DiT, inputs: Inputs, size: AccelSize) -> torch.Tensor:
    """The yardstick of PSNR loss: uncached fp32 Heun (2nd order) with `reference_factor` x the steps."""
    return _draw(model, inputs, size, size.steps * size.reference_factor, sampler="heun")


def ours(model: DiT, inputs: Inputs, size: AccelSize, policy: Callable[[], CachePolicy] | None = None,
         precision_ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Method:
    """A ditlab sampling run; NFE-equivalent from the policy's block (or token) count, else the step count."""

    def run(steps: int) -> tuple[torch.Tensor, float]:
        cache = policy() if policy is not None else None
        x = _draw(model, inputs, size, steps, cache, precision_ctx)
        return x, cache.nfe_equivalent() if cache is not None else float(steps)

    return run


class DiffusersDiT(nn.Module):
    """Our call `(x, timestep, class_labels)` on a diffusers `DiTTransformer2DModel`, made inside one cache
    context: diffusers' stateful cache hooks keep their state per context, which `CacheMixin.cache_context` sets
    and `DiTTransformer2DModel`, having no CacheMixin, never does. The conditional and unconditional rows go
    through in one call, so one context ("cfg-batch") serves every call. Counts the attention and MLP modules
    that actually run, for a module-level NFE-equivalent."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from diffusers.hooks import HookRegistry

        self.model = model
        self.registry = HookRegistry.check_if_exists_or_initialize(model)
        self.module_calls = 0
        for block in model.transformer_blocks:
            for module in (block.attn1.to_out[0], block.ff.net[2]):
                module.register_forward_hook(self._count)

    def _count(self, *_) -> None:
        self.module_calls += 1

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        from diffusers.models.cache_utils import CacheMixin

        with CacheMixin.cache_context(self.model, "cfg-batch"):
            return self.model(x, timestep=timestep, class_labels=class_labels).sample

    def reset(self) -> None:
        """Forget hook state and counts: every sampling run starts cold, like a fresh pipeline call."""
        self.registry.reset_stateful_hooks()
        self.module_calls = 0

    def nfe_equivalent(self) -> float:
        return self.module_calls / (2 * len(self.model.transformer_blocks))


def theirs(wrapper: DiffusersDiT, inputs: Inputs, size: AccelSize) -> Method:
    """A sampling run of a diffusers DiT through our sampler; NFE-equivalent from its module calls."""

    def run(steps: int) -> tuple[torch.Tensor, float]:
        wrapper.reset()
        x = _draw(wrapper, inputs, size, steps)
        return x, wrapper.nfe_equivalent()

    return run


def diffusers_model(model: DiT, hook: Callable[[nn.Module], object] | None = None) -> DiffusersDiT:
    """`model` as a diffusers DiT (fresh copy, on the model's device) with an optional cache hook applied."""
    ref = dit_to_diffusers(model).to(next(model.parameters()).device)
    if hook is not None:
        hook(ref)
    return DiffusersDiT(ref)


def measure(methods: dict[str, Method], size: AccelSize) -> dict[str, Result]:
    """Median wall seconds of interleaved repeats, after an untimed 2-step warm-up of each method; the sample
    and NFE-equivalent of the first timed run (runs are deterministic)."""
    warm = {}
    for name, run in methods.items():
        start = time.perf_counter()
        run(min(2, size.steps))
        warm[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in methods}
    first: dict[str, tuple[torch.Tensor, float]] = {}
    for _ in range(size.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            out = run(size.steps)
            times[name].append(time.perf_counter() - start)
            first.setdefault(name, out)
    return {name: Result(statistics.median(times[name]), *first[name], warm[name]) for name in methods}


@dataclass
class Report:
    """The rows, goals and notes of one benchmark run."""

    rows: list[dict] = field(default_factory=list)
    goals: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, task: str, method: str, metric: str, value: float) -> None:
        self.rows.append({"task": task, "method": method, "metric": metric, "value": round(float(value), 4) + 0.0})

    def goal(self, name: str, target: str, value: float | str | None, met: bool | None) -> None:
        value = round(value, 3) if isinstance(value, float) else value
        self.goals.append({"name": name, "target": target, "value": value, "met": met})

    def task(self, task: str, results: dict[str, Result], baseline: str, reference: torch.Tensor,
             compiled: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
        """Rows of one task; returns method -> {speed-up, psnr, loss} for the goals."""
        base = results[baseline]
        base_ref = psnr(base.sample, reference)
        summary = {}
        for name, r in results.items():
            speed, ref_db = base.seconds / r.seconds, psnr(r.sample, reference)
            vs_base = psnr(r.sample, base.sample)
            summary[name] = {"speed": speed, "psnr": vs_base, "loss": base_ref - ref_db}
            for metric, value in ((M_WALL, r.seconds), (M_SPEED, speed), (M_NFE, r.nfe), (M_PSNR, vs_base),
                                  (M_PSNR_REF, ref_db), (M_LOSS, base_ref - ref_db)):
                if not (metric == M_PSNR and name == baseline):
                    self.row(task, name, metric, value)
            if name in compiled:
                self.row(task, name, "compile + 2-step warm-up s", r.warmup_seconds)
        return summary


def policies(size: AccelSize) -> dict[str, Callable[[], CachePolicy]]:
    """name -> factory of every cache policy in the grid."""
    made = [functools.partial(FORA, interval=i) for i in size.fora]
    made += [functools.partial(DeltaDiT, interval=i) for i in size.delta_dit]
    made += [functools.partial(TaylorSeer, interval=i, order=o) for i, o in size.taylor]
    made += [functools.partial(FirstBlockCache, threshold=t) for t in size.fbc]
    return {repr(factory()): factory for factory in made}


def _best(summary: dict[str, dict[str, float]], max_loss: float, exclude: tuple[str, ...] = ()) -> str | None:
    """The fastest method within `max_loss` dB of PSNR loss, or None."""
    ok = {k: v for k, v in summary.items() if v["loss"] <= max_loss and k not in exclude}
    return max(ok, key=lambda k: ok[k]["speed"]) if ok else None


def cache_task(report: Report, name: str, model: DiT, inputs: Inputs, reference: torch.Tensor,
               size: AccelSize) -> tuple[dict, dict[str, Result]]:
    """Every cache policy in the grid against uncached sampling of `model`; returns the summary and results."""
    methods = {UNCACHED: ours(model, inputs, size)}
    methods.update({k: ours(model, inputs, size, factory) for k, factory in policies(size).items()})
    tokens = model.x_embedder.check(inputs.x_T[:1])
    task = (f"caches: {name} ({tokens[0] * tokens[1]} tokens), {size.steps} Euler steps, CFG {size.guidance:g}, "
            f"batch {len(inputs.x_T)}; baseline {UNCACHED}")
    results = measure(methods, size)
    return report.task(task, results, UNCACHED, reference), results


def diffusers_task(report: Report, model: DiT, inputs: Inputs, reference: torch.Tensor, ours_uncached: Result,
                   size: AccelSize) -> dict:
    """diffusers' TaylorSeer and FirstBlockCache hooks on `model` converted to diffusers, against diffusers
    uncached; returns the summary of the TaylorSeer rows."""
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_taylorseer_cache,
    )

    def taylor(interval: int, order: int, modules: list[str] | None):
        config = TaylorSeerCacheConfig(cache_interval=interval, max_order=order, disable_cache_before_step=2,
                                       taylor_factors_dtype=torch.float32, cache_identifiers=modules)
        return functools.partial(apply_taylorseer_cache, config=config)

    base = "diffusers uncached"
    wrappers = {base: diffusers_model(model)}
    default = diffusers_model(model, taylor(*size.taylor[0], None)).model
    hooked = sum(1 for m in default.modules() if getattr(m, "_diffusers_hook", None) is not None
                 and m._diffusers_hook.get_hook("taylorseer_cache") is not None)
    for i, o in size.taylor:
        wrappers[f"diffusers TaylorSeer(interval={i}, order={o}) on attn1+ff"] = diffusers_model(
            model, taylor(i, o, DIFFUSERS_TAYLOR_MODULES))
    for t in size.fbc:
        config = FirstBlockCacheConfig(threshold=t)
        wrappers[f"diffusers FirstBlockCache(threshold={t:g})"] = diffusers_model(
            model, functools.partial(apply_first_block_cache, config=config))
    task = (f"diffusers hooks: shapes32 as DiTTransformer2DModel, same sampler, batch {len(inputs.x_T)}; "
            f"baseline {base}")
    results = measure({k: theirs(w, inputs, size) for k, w in wrappers.items()}, size)
    summary = report.task(task, results, base, reference)
    report.row(task, base, "PSNR vs ditlab uncached (dB)", psnr(results[base].sample, ours_uncached.sample))
    report.notes.append(
        f"diffusers TaylorSeer rows: cache_interval and max_order as ours, disable_cache_before_step=2 (diffusers "
        f"then computes fully on as many calls as ours with warmup=1), fp32 factors, cache_identifiers "
        f"{DIFFUSERS_TAYLOR_MODULES}. Its default identifiers ('^transformer_blocks.*attn', re.fullmatch) hook "
        f"{hooked} modules of DiTTransformer2DModel, whose attention is 'attn1' (0: the default hook is a no-op). "
        f"diffusers' FirstBlockCache runs inside a cache context set by `DiffusersDiT` and decides on the mean change "
        f"over the whole CFG batch (ours: per row, skipping only when every row agrees). diffusers NFE-equivalent = "
        f"attention + MLP modules run / (2 x depth).")
    return {k: v for k, v in summary.items() if "on attn1+ff" in k}


def precision_task(report: Report, model: DiT, inputs: Inputs, reference: torch.Tensor, size: AccelSize,
                   best_cache: str, device: torch.device, name: str = "shapes32") -> tuple[dict, str]:
    """Precision and compile rows against diffusers fp32 eager; returns the summary and the cached method's name."""
    model = copy.deepcopy(model).to(device)
    bf16 = functools.partial(precision.autocast, device, "bf16", allow_fallback=True)
    base = "diffusers fp32 eager"
    methods = {base: theirs(diffusers_model(model), inputs, size), "ditlab fp32 eager": ours(model, inputs, size),
               "ditlab bf16 autocast": ours(model, inputs, size, precision_ctx=bf16)}
    compiled: tuple[str, ...] = ()
    fast, fast_name = model, "ditlab bf16"
    if size.compile:
        fast, fast_name = precision.compile_blocks(copy.deepcopy(model)), "ditlab bf16 + compile_blocks"
        methods[fast_name] = ours(fast, inputs, size, precision_ctx=bf16)
        compiled = (fast_name,)
        scheme, ctx = ("fp8", bf16) if device.type == "cuda" else ("int8_dynamic", contextlib.nullcontext)
        name_q = f"ditlab {scheme.replace('_', ' ')} (torchao) + compile_blocks"
        try:
            quantized = precision.compile_blocks(precision.quantize(copy.deepcopy(model), scheme))
        except (ImportError, RuntimeError, ValueError) as err:  # torchao missing or too old for this torch
            report.notes.append(f"{name_q}: not measured ({type(err).__name__}: {err})")
        else:
            methods[name_q] = ours(quantized, inputs, size, precision_ctx=ctx)
            compiled += (name_q,)
    cached = f"{fast_name} + {best_cache}"
    methods[cached] = ours(fast, inputs, size, policies(size)[best_cache], bf16)
    task = (f"precision and compile ({device.type}): {name}, {size.steps} Euler steps, batch {len(inputs.x_T)}; "
            f"baseline {base}")
    return report.task(task, measure(methods, size), base, reference, compiled), cached


def ras_task(report: Report, model: DiT, inputs: Inputs, reference: torch.Tensor, size: AccelSize,
             note: str) -> dict:
    """RegionAdaptive at each ratio against uncached sampling of `model`."""
    methods = {UNCACHED: ours(model, inputs, size)}
    for kw in size.ras:
        methods[ras_name(kw)] = ours(model, inputs, size, functools.partial(RegionAdaptive, **kw))
    tokens = model.x_embedder.check(inputs.x_T[:1])
    task = (f"RAS: {note} ({tokens[0] * tokens[1]} tokens), {size.steps} Euler steps, batch {len(inputs.x_T)}; "
            f"baseline {UNCACHED}")
    return report.task(task, measure(methods, size), UNCACHED, reference)


def ras_name(kw: dict) -> str:
    """`RegionAdaptive(ratio=0.5, ...)` naming the ratio and every argument that differs from the default."""
    defaults = {k: v.default for k, v in inspect.signature(RegionAdaptive).parameters.items()}
    shown = {"ratio": kw.get("ratio", defaults["ratio"])}
    shown.update({k: v for k, v in kw.items() if k != "ratio" and v != defaults[k]})
    return f"RegionAdaptive({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def kernel_rows(report: Report) -> list[dict]:
    """Fused-kernel bandwidth rows on the GPU (returned too)."""
    from ditlab.core.kernels.bench import kernel_benchmark

    rows = kernel_benchmark()
    for r in rows:
        task = "fused kernels (cuda, bf16, DiT-XL width)"
        report.row(task, f"{r['kernel']}: {r['method']}", "GB/s", r["gb_per_s"])
        report.row(task, f"{r['kernel']}: {r['method']}", "fraction of copy bandwidth", r["of_copy_bandwidth"])
    return rows


GPU = dataclasses.replace(FULL, precision_batch=64)  # a GPU needs a bigger batch than 8 to be busy
GPU_CACHE = repr(TaylorSeer(interval=4, order=1))  # the cache row of the GPU tasks: G1's best on shapes32 (CPU run)
XL_BATCH = 16


def xl_model(seed: int = 0) -> DiT:
    """A DiT-XL/2-size network (hidden 1152, depth 28, 16 heads; 4 x 32 x 32 latents -> 256 tokens, 1000
    classes) with random weights, every one drawn N(0, 0.02) (the zero-initialised adaLN and output layers
    too, so the blocks do work): a speed subject. PSNR on it measures numeric agreement, not sample quality."""
    torch.manual_seed(seed)
    model = DiT(token_kind="2d", in_channels=4, input_size=[32, 32], patch_size=2, hidden_size=1152, depth=28,
                num_heads=16, num_classes=1000, class_dropout_prob=0.1, pos_embed="sincos", time_freq_shift=1.0,
                norm_eps=1e-6, mlp_norm_eps=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.02)
    return model.eval()


def gpu_run(size: AccelSize = GPU, json_path: Path | None = None, echo: Callable[[str], object] = print) -> dict:
    """`--accel --gpu`: fused-kernel bandwidth and end-to-end precision / compile / fp8 / cache speed-ups on CUDA,
    on shapes32-S (trained in the benchmark cache on first use) and on a DiT-XL/2-size network."""
    if not torch.cuda.is_available():  # ValueError: the CLI reports it as bad input (exit 2)
        raise ValueError("--gpu needs a CUDA GPU, and this machine or torch build has none; "
                         "`ditlab core benchmark --accel` gives the CPU tables")
    dev = torch.device("cuda")
    from ditlab.core.kernels import triton_kernels

    report = Report()
    report.notes.append(f"Triton launch shapes (rows per program, warps, chunk): "
                        f"{triton_kernels.TUNING or triton_kernels.DEFAULTS}")
    out = _output(report, dev) | {"notes": report.notes}
    save = functools.partial(_write, out, json_path)  # after each task: a run cut short keeps what it measured
    kernels = kernel_rows(report)
    save()
    s_model, s_summary = bench_model.shapes32_s(size.precision_train_steps, size.precision_train_batch)
    note = (f"shapes32-S (DiT-S trunk, 256 tokens; trained {s_summary['step']} steps, batch "
            f"{size.precision_train_batch}, in {bench_model.cache_dir()}; not shipped)")
    s_model = s_model.to(dev)
    s_in = make_inputs(s_model, size.precision_batch)
    prec = precision_task(report, s_model, s_in, reference(s_model, s_in, size), size, GPU_CACHE, dev, note)
    save()
    xl = xl_model().to(dev)
    xl_in = make_inputs(xl, XL_BATCH)
    precision_task(report, xl, xl_in, reference(xl, xl_in, size), size, GPU_CACHE, dev,
                   "DiT-XL/2 size (675M parameters, 256 tokens), random weights: PSNR is numeric agreement only")
    del xl
    _gpu_goals(report, kernels, prec[0])
    echo(format_report(out, report.notes, size))
    save()
    if json_path is not None:
        echo(f"wrote {json_path}")
    return out


def _gpu_goals(report: Report, kernels: list[dict], s_summary: dict) -> None:
    by = {(r["kernel"], r["method"]): r for r in kernels}
    fused = by[("layernorm_modulate", "triton")]
    eager = by[("layernorm_modulate", "torch eager")]
    report.goal("G4 fused LayerNorm + modulate, fraction of measured copy bandwidth", ">= 0.8",
                fused["of_copy_bandwidth"], fused["of_copy_bandwidth"] >= 0.8)
    speed = eager["ms"] / fused["ms"]
    report.goal("G4 fused LayerNorm + modulate vs eager PyTorch", ">= 1.5x", speed, speed >= 1.5)
    _speed_goal(report, f"GPU end to end (reported; G3's 3x is a CPU goal), shapes32-S: precision + compile vs "
                f"diffusers fp32 eager at <= "
                f"{PRECISION_LOSS_DB} dB loss", s_summary, PRECISION_LOSS_DB, 3.0, ("diffusers fp32 eager",))


def ras_subject(size: AccelSize) -> tuple[DiT, str]:
    """shapes64 from the benchmark cache (trained there if missing) and the note that names it."""
    ras, summary = bench_model.shapes64(size.ras_train_steps, size.ras_train_batch)
    return ras, (f"shapes64 (shapes32 fine-tuned {summary['step']} steps at 64x64, batch {size.ras_train_batch}, in "
                 f"{bench_model.cache_dir()}; not shipped)")


def load_subjects(size: AccelSize) -> Subjects:
    """The shipped demo and shapes32 models, and shapes64 from the benchmark cache (trained there if missing)."""
    subjects = Subjects(load_demo(), bench_model.load_shapes32(), *ras_subject(size))
    if size.precision_width == "S":
        subjects.precision, s_summary = bench_model.shapes32_s(size.precision_train_steps, size.precision_train_batch)
        subjects.precision_note = (f"shapes32-S (DiT-S trunk: hidden 384, depth 12, 6 heads, 256 tokens; trained "
                                   f"{s_summary['step']} steps, batch {size.precision_train_batch}, in "
                                   f"{bench_model.cache_dir()}; not shipped)")
    return subjects


def run(size: AccelSize, json_path: Path | None = None, subjects: Subjects | None = None,
        echo: Callable[[str], object] = print) -> dict:
    """Measure every task, print the tables, definitions and goals, write JSON when asked; return the report."""
    subjects = subjects or load_subjects(size)
    report = Report()
    demo_in = make_inputs(subjects.demo, size.demo_batch)
    demo_ref = reference(subjects.demo, demo_in, size)
    demo, _ = cache_task(report, "demo", subjects.demo, demo_in, demo_ref, size)

    s32_in = make_inputs(subjects.shapes32, max(size.cache_batch, size.precision_batch))
    s32_ref = reference(subjects.shapes32, s32_in, size)
    cache_in, cache_ref = s32_in.take(size.cache_batch), s32_ref[: size.cache_batch]
    s32, s32_results = cache_task(report, "shapes32", subjects.shapes32, cache_in, cache_ref, size)
    hooks = diffusers_task(report, subjects.shapes32, cache_in, cache_ref, s32_results[UNCACHED], size)

    policy_rows = {k: v for k, v in s32.items() if k != UNCACHED}
    best = _best(policy_rows, CACHE_LOSS_DB) or min(policy_rows, key=lambda k: policy_rows[k]["loss"])
    prec_model = subjects.precision if subjects.precision is not None else subjects.shapes32
    if subjects.precision is None:
        prec_in, prec_ref = s32_in.take(size.precision_batch), s32_ref[: size.precision_batch]
    else:
        prec_in = make_inputs(prec_model, size.precision_batch)
        prec_ref = reference(prec_model, prec_in, size)
    prec = precision_task(report, prec_model, prec_in, prec_ref, size, best, torch.device("cpu"),
                          subjects.precision_note)

    ras_in = make_inputs(subjects.ras, size.ras_batch)
    ras_ref = reference(subjects.ras, ras_in, size)
    ras = ras_task(report, subjects.ras, ras_in, ras_ref, size, subjects.ras_note)

    _goals(report, size.steps, demo, s32, hooks, prec, ras)
    out = _output(report, torch.device("cpu"))
    _write(out, json_path)
    echo(format_report(out, report.notes, size))
    if json_path is not None:
        echo(f"wrote {json_path}")
    return out


def _output(report: Report, device: torch.device) -> dict:
    """The JSON of a run: machine, date, command, and the report's (live) rows and goals."""
    return {"machine": describe_machine(device), "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "rows": report.rows, "goals": report.goals}


def _write(out: dict, json_path: Path | None) -> None:
    if json_path is not None:
        write_json(out, Path(json_path))


def _speed_goal(report: Report, name: str, summary: dict, max_loss: float, target: float,
                exclude: tuple[str, ...]) -> None:
    best = _best(summary, max_loss, exclude)
    value = summary[best]["speed"] if best else None
    report.goal(f"{name}: best {best}" if best else f"{name}: no method within {max_loss} dB", f">= {target}x",
                value, value is not None and value >= target)


def _goals(report: Report, steps: int, demo: dict, s32: dict, hooks: dict, prec: tuple[dict, str], ras: dict) -> None:
    for label, summary in (("demo", demo), ("shapes32", s32)):
        _speed_goal(report, f"G1 cache speed-up at <= {CACHE_LOSS_DB} dB loss, {steps} steps, {label}", summary,
                    CACHE_LOSS_DB, 2.5, (UNCACHED,))
    margins = []
    for theirs_ in hooks.values():
        faster = [v["psnr"] for k, v in s32.items() if k != UNCACHED and v["speed"] >= theirs_["speed"]]
        margins.append(max(faster) - theirs_["psnr"] if faster else None)
    value = None if not margins or None in margins else min(margins)
    report.goal("G1 beats diffusers' TaylorSeer in PSNR vs own uncached at >= its speed-up (min margin dB over "
                "its settings)", "> 0 dB", value, value is not None and value > 0)
    _speed_goal(report, f"G2 RAS speed-up at <= {CACHE_LOSS_DB} dB loss, >= 1024 tokens", ras, CACHE_LOSS_DB, 1.8,
                (UNCACHED,))
    summary, cached = prec
    _speed_goal(report, f"G3 precision + compile vs diffusers fp32 eager at <= {PRECISION_LOSS_DB} dB loss",
                summary, PRECISION_LOSS_DB, 3.0, ("diffusers fp32 eager", cached))
    _speed_goal(report, f"G3 precision + compile + cache vs diffusers fp32 eager at <= {CACHE_LOSS_DB} dB loss",
                {cached: summary[cached]}, CACHE_LOSS_DB, 7.0, ())
    report.goal("G4 GPU: fused-kernel bandwidth vs copy bandwidth", "measured on a GPU",
                "not measured here: `ditlab core benchmark --accel --gpu`", None)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:,.3f}".rstrip("0").rstrip(".")


def format_report(report: dict, notes: list[str], size: AccelSize) -> str:
    """One markdown table per task (methods x metrics), then the definitions, notes and goals."""
    lines = [f"Acceleration benchmark on {report['machine']}; torch threads {torch.get_num_threads()}, "
             f"median of {size.repeats} interleaved repeats", ""]
    tasks: dict[str, dict[str, dict[str, float]]] = {}
    for r in report["rows"]:
        tasks.setdefault(r["task"], {}).setdefault(r["method"], {})[r["metric"]] = r["value"]
    for task, methods in tasks.items():
        found = {m for values in methods.values() for m in values}
        metrics = [m for m in METRICS if m in found] + sorted(found - set(METRICS))
        lines += [f"**{task}**", "", "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        lines += [f"| {method} | " + " | ".join(_fmt(v[m]) if m in v else "" for m in metrics) + " |"
                  for method, v in methods.items()]
        lines.append("")
    lines += [f"PSNR: dB over data range 2 ([-1, 1] samples, clamped), mean over samples, {PSNR_CAP:g} = identical. "
              f"PSNR vs baseline: the final sample against the task's baseline sample (same noise and labels). "
              f"PSNR vs reference: against the uncached fp32 ditlab sample of a Heun (2nd-order) solve with "
              f"{size.reference_factor}x the steps ({2 * size.reference_factor * size.steps - 1} network calls), a "
              f"near-converged solution of the same ODE from the same noise. PSNR loss = PSNR(baseline, reference) - "
              f"PSNR(method, reference): the accuracy the method gives up; <= 0: none. NFE-equivalent: "
              f"full-network evaluations spent (blocks or tokens computed / total; one CFG-batched call per step).",
              *notes, "",
              "| goal | target | value | met |", "|---|---|---|---|"]
    lines += [f"| {g['name']} | {g['target']} | {g['value']} | {g['met']} |" for g in report["goals"]]
    return "\n".join(lines)


def main(quick: bool, json_path: Path | None, gpu: bool = False) -> None:
    """Entry point of `ditlab core benchmark --accel [--gpu]`."""
    if gpu:
        gpu_run(GPU, json_path)
        return
    run(QUICK if quick else FULL, json_path)
