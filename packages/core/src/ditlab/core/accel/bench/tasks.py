"""The tasks of `ditlab core benchmark --accel`: how a method draws samples, how methods are timed against each
other, and the rows each task adds to a `Report` (caches, diffusers' cache hooks, precision and compile, RAS)."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ditlab.core.accel import auto, precision
from ditlab.core.accel.bench.subjects import AccelSize, DiffusersDiT, Inputs, diffusers_model
from ditlab.core.accel.cache import FORA, CachePolicy, DeltaDiT, FirstBlockCache, TaylorSeer
from ditlab.core.accel.ras import RegionAdaptive
from ditlab.core.bench.harness import Report, time_interleaved
from ditlab.core.demo import PATH
from ditlab.core.diffusion import sample
from ditlab.core.metrics import psnr
from ditlab.core.models import DiT

DATA_RANGE = 2.0  # samples live in [-1, 1]
UNCACHED = "uncached"
DIFFUSERS_BASE, DIFFUSERS_EAGER = "diffusers uncached", "diffusers fp32 eager"
DIFFUSERS_COMPILED = "diffusers fp32 + torch.compile"
AUTO = "ditlab default (precision auto)"
DIFFUSERS_TAYLOR_MODULES = [r"transformer_blocks\.\d+\.(attn1|ff)"]  # what our TaylorSeer forecasts, per module
M_WALL, M_SPEED, M_NFE = "wall s", "speed-up (x)", "NFE-equivalent"
M_PSNR, M_PSNR_REF, M_LOSS = "PSNR vs baseline (dB)", "PSNR vs reference (dB)", "PSNR loss (dB)"

Method = Callable[[int], tuple[torch.Tensor, float]]  # steps -> (final sample on the CPU, NFE-equivalent)


@dataclass
class Result:
    """One method's median wall seconds, its final sample, NFE-equivalent and untimed warm-up seconds."""

    seconds: float
    sample: torch.Tensor
    nfe: float
    warmup_seconds: float = 0.0


def sample_psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over samples of the PSNR (dB, data range 2) of `x` against `ref`, both clamped to [-1, 1]."""
    x, ref = x.float().clamp(-1, 1), ref.float().clamp(-1, 1)
    return statistics.fmean(psnr(a, b, DATA_RANGE) for a, b in zip(x, ref, strict=True))


def _draw(model: nn.Module, inputs: Inputs, size: AccelSize, steps: int, cache: CachePolicy | None = None,
          precision_ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
          sampler: str = "euler") -> torch.Tensor:
    """One sampling run from the task's noise, CFG with the null class as the unconditional label."""
    labels = inputs.labels.to(next(model.parameters()).device)
    null = torch.full_like(labels, inputs.null)
    with torch.inference_mode(), precision_ctx():
        x = sample(model, PATH, tuple(inputs.x_T.shape), sampler=sampler, steps=steps, guidance_scale=size.guidance,
                   x_T=inputs.x_T,
                   model_kwargs={"class_labels": labels}, uncond_kwargs={"class_labels": null}, cache=cache,
                   precision="fp32")  # the network as the method built it (fp32 = no conversion by `sample`)
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


def theirs(wrapper: DiffusersDiT, inputs: Inputs, size: AccelSize) -> Method:
    """A sampling run of a diffusers DiT through our sampler; NFE-equivalent from its module calls."""

    def run(steps: int) -> tuple[torch.Tensor, float]:
        wrapper.reset()
        x = _draw(wrapper, inputs, size, steps)
        nfe = wrapper.nfe_equivalent()
        return x, float(steps) if nfe is None else nfe

    return run


def measure(methods: dict[str, Method], size: AccelSize) -> dict[str, Result]:
    """Median wall seconds of interleaved repeats, after an untimed 2-step warm-up of each method (timed once:
    it compiles); the sample and NFE-equivalent of the first timed run (runs are deterministic)."""
    warm = time_interleaved({name: functools.partial(run, min(2, size.steps)) for name, run in methods.items()},
                            warmup=0, repeats=1)
    first: dict[str, tuple[torch.Tensor, float]] = {}
    timed = {name: (lambda name=name, run=run: first.setdefault(name, run(size.steps)))
             for name, run in methods.items()}
    seconds = time_interleaved(timed, warmup=0, repeats=size.repeats)
    return {name: Result(seconds[name], *first[name], warm[name]) for name in methods}


def task_rows(report: Report, task: str, results: dict[str, Result], baseline: str, reference: torch.Tensor,
              compiled: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Rows of one task; returns method -> {speed, psnr (vs baseline), loss} for the goals."""
    base = results[baseline]
    base_ref = sample_psnr(base.sample, reference)
    summary = {}
    for name, r in results.items():
        speed, ref_db = base.seconds / r.seconds, sample_psnr(r.sample, reference)
        vs_base = sample_psnr(r.sample, base.sample)
        summary[name] = {"speed": speed, "psnr": vs_base, "loss": base_ref - ref_db}
        for metric, value in ((M_WALL, r.seconds), (M_SPEED, speed), (M_NFE, r.nfe), (M_PSNR, vs_base),
                              (M_PSNR_REF, ref_db), (M_LOSS, base_ref - ref_db)):
            if not (metric == M_PSNR and name == baseline):
                report.row(task, name, metric, value)
        if name in compiled:
            report.row(task, name, "compile + 2-step warm-up s", r.warmup_seconds)
    return summary


def policies(size: AccelSize) -> dict[str, Callable[[], CachePolicy]]:
    """name -> factory of every cache policy in the grid."""
    made = [functools.partial(FORA, interval=i) for i in size.fora]
    made += [functools.partial(DeltaDiT, interval=i) for i in size.delta_dit]
    made += [functools.partial(TaylorSeer, interval=i, order=o) for i, o in size.taylor]
    made += [functools.partial(FirstBlockCache, threshold=t) for t in size.fbc]
    return {repr(factory()): factory for factory in made}


def _tokens(model: DiT, inputs: Inputs) -> int:
    grid = model.x_embedder.check(inputs.x_T[:1])
    return grid[0] * grid[1]


def cache_task(report: Report, name: str, model: DiT, inputs: Inputs, reference: torch.Tensor,
               size: AccelSize) -> tuple[dict, dict[str, Result]]:
    """Every cache policy in the grid against uncached sampling of `model`; returns the summary and results."""
    methods = {UNCACHED: ours(model, inputs, size)}
    methods.update({k: ours(model, inputs, size, factory) for k, factory in policies(size).items()})
    task = (f"caches: {name} ({_tokens(model, inputs)} tokens), {size.steps} Euler steps, CFG {size.guidance:g}, "
            f"batch {len(inputs.x_T)}; baseline {UNCACHED}")
    results = measure(methods, size)
    return task_rows(report, task, results, UNCACHED, reference), results


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

    wrappers = {DIFFUSERS_BASE: diffusers_model(model)}
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
            f"baseline {DIFFUSERS_BASE}")
    results = measure({k: theirs(w, inputs, size) for k, w in wrappers.items()}, size)
    summary = task_rows(report, task, results, DIFFUSERS_BASE, reference)
    report.row(task, DIFFUSERS_BASE, "PSNR vs ditlab uncached (dB)",
               sample_psnr(results[DIFFUSERS_BASE].sample, ours_uncached.sample))
    report.notes.append(
        f"diffusers TaylorSeer rows: cache_interval and max_order as ours, disable_cache_before_step=2 (diffusers "
        f"then computes fully on as many calls as ours with warmup=1), fp32 factors, cache_identifiers "
        f"{DIFFUSERS_TAYLOR_MODULES}. Its default identifiers ('^transformer_blocks.*attn', re.fullmatch) hook "
        f"{hooked} modules of DiTTransformer2DModel, whose attention is 'attn1' (0: the default hook is a no-op). "
        f"diffusers' FirstBlockCache runs inside a cache context set by `DiffusersDiT` and decides on the mean change "
        f"over the whole CFG batch (ours: per row, skipping only when every row agrees). diffusers NFE-equivalent = "
        f"attention + MLP modules run / (2 x depth).")
    return {k: v for k, v in summary.items() if "on attn1+ff" in k}


def cfg_probe(inputs: Inputs, device: torch.device) -> auto.Probe:
    """The calibration call of the auto path: the task's CFG batch (conditional and null-class rows)."""
    labels = inputs.labels.to(device)
    x = inputs.x_T.to(device)
    return auto.Probe(torch.cat([x, x]), {"class_labels": torch.cat([labels, torch.full_like(labels, inputs.null)])},
                      time_scale=float(PATH.model_time(torch.tensor(1.0))))


@dataclass
class PrecisionRows:
    """What the precision task hands the goals: the summary, the names of the cached and auto rows, and the
    auto path's choice."""

    summary: dict[str, dict[str, float]]
    cached: str
    auto: str
    auto_cached: tuple[str, ...]
    choice: auto.Choice


def precision_task(report: Report, model: DiT, inputs: Inputs, reference: torch.Tensor, size: AccelSize,
                   best_cache: str, device: torch.device, name: str = "shapes32") -> PrecisionRows:
    """Precision and compile rows against diffusers fp32 eager (and compiled), with the default auto path alone and
    under TaylorSeer caches; the auto path is calibrated first (its table goes into the notes)."""
    model = copy.deepcopy(model).to(device)
    bf16 = functools.partial(precision.autocast, device, "bf16", allow_fallback=True)
    methods = {DIFFUSERS_EAGER: theirs(diffusers_model(model), inputs, size)}
    if size.compile:
        methods[DIFFUSERS_COMPILED] = theirs(diffusers_model(model, compile=True), inputs, size)
    methods.update({"ditlab fp32 eager": ours(model, inputs, size),
                    "ditlab bf16 autocast": ours(model, inputs, size, precision_ctx=bf16)})
    compiled: tuple[str, ...] = (DIFFUSERS_COMPILED,) if size.compile else ()
    fast, fast_name = model, "ditlab bf16"
    if size.compile:
        fast, fast_name = precision.compile_blocks(copy.deepcopy(model)), "ditlab bf16 + compile_blocks"
        methods[fast_name] = ours(fast, inputs, size, precision_ctx=bf16)
        compiled += (fast_name,)
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
    start = time.perf_counter()
    run = auto.prepare(model, "auto", cfg_probe(inputs, device), min_snr_db=size.auto_snr_db)
    calibration_s = time.perf_counter() - start
    auto_name = f"{AUTO} = {run.mode}"
    methods[auto_name] = ours(run.net, inputs, size, precision_ctx=run.context)
    auto_cached = []
    for interval in size.auto_taylor:
        row = f"{auto_name} + TaylorSeer(interval={interval}, order=1)"
        methods[row] = ours(run.net, inputs, size, functools.partial(TaylorSeer, interval=interval, order=1),
                            run.context)
        auto_cached.append(row)
    if auto.MODES[run.mode].compile:
        compiled += (auto_name,)
    task = (f"precision and compile ({device.type}): {name}, {size.steps} Euler steps, batch {len(inputs.x_T)}; "
            f"baseline {DIFFUSERS_EAGER}")
    report.notes.append(
        f"{task.split(',')[0]}, {name.split(' (')[0]}: the auto path's calibration ({run.choice.source}, "
        f"{calibration_s:.0f} s; call {cfg_probe(inputs, device).signature}; bound SNR >= {size.auto_snr_db:g} dB "
        f"against fp32 eager) chose {run.mode}: {run.choice.reason}\n\n{run.choice.table()}")
    summary = task_rows(report, task, measure(methods, size), DIFFUSERS_EAGER, reference, compiled)
    return PrecisionRows(summary, cached, auto_name, tuple(auto_cached), run.choice)


def ras_name(kw: dict) -> str:
    """`RegionAdaptive(ratio=0.5, ...)` naming the ratio and every argument that differs from the default."""
    defaults = {k: v.default for k, v in inspect.signature(RegionAdaptive).parameters.items()}
    shown = {"ratio": kw.get("ratio", defaults["ratio"])}
    shown.update({k: v for k, v in kw.items() if k != "ratio" and v != defaults[k]})
    return f"RegionAdaptive({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def ras_task(report: Report, model: DiT, inputs: Inputs, reference: torch.Tensor, size: AccelSize,
             note: str) -> dict:
    """RegionAdaptive at each ratio against uncached sampling of `model`."""
    methods = {UNCACHED: ours(model, inputs, size)}
    for kw in size.ras:
        methods[ras_name(kw)] = ours(model, inputs, size, functools.partial(RegionAdaptive, **kw))
    task = (f"RAS: {note} ({_tokens(model, inputs)} tokens), {size.steps} Euler steps, batch {len(inputs.x_T)}; "
            f"baseline {UNCACHED}")
    return task_rows(report, task, measure(methods, size), UNCACHED, reference)
