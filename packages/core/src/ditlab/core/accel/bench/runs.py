"""The runs of `ditlab core benchmark --accel`: every CPU task in turn (`run`) or the CUDA tables (`gpu_run`),
the goals they are judged by, and the definitions printed with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ditlab.core.accel import policy
from ditlab.core.accel.bench.subjects import (
    GPU,
    XL_BATCH,
    AccelSize,
    Subjects,
    load_subjects,
    make_inputs,
    precision_subject,
    xl_model,
)
from ditlab.core.accel.bench.tasks import (
    DIFFUSERS_COMPILED,
    DIFFUSERS_EAGER,
    UNCACHED,
    PrecisionRows,
    cache_task,
    diffusers_task,
    policies,
    precision_task,
    ras_task,
    reference,
)
from ditlab.core.accel.cache import TaylorSeer
from ditlab.core.bench.harness import Report, machine
from ditlab.core.errors import UsageError
from ditlab.core.metrics import PSNR_CAP

CACHE_LOSS_DB, PRECISION_LOSS_DB = 0.5, 0.3
TASKS = ("caches", "diffusers", "precision", "ras")  # --only NAME runs one of them
GPU_CACHE = repr(TaylorSeer(interval=4, order=1))  # the cache row of the GPU tasks: G1's best on shapes32 (CPU run)
TITLE = "Acceleration benchmark: caches, RAS, precision and compile"


def definitions(size: AccelSize) -> str:
    """What the metrics of the tables mean."""
    return (f"Median of {size.repeats} interleaved repeats after an untimed 2-step warm-up of each method. "
            f"PSNR: dB over data range 2 ([-1, 1] samples, clamped), mean over samples, {PSNR_CAP:g} = identical. "
            f"PSNR vs baseline: the final sample against the task's baseline sample (same noise and labels). "
            f"PSNR vs reference: against the uncached fp32 ditlab sample of a Heun (2nd-order) solve with "
            f"{size.reference_factor}x the steps ({2 * size.reference_factor * size.steps - 1} network calls), a "
            f"near-converged solution of the same ODE from the same noise. PSNR loss = PSNR(baseline, reference) - "
            f"PSNR(method, reference): the accuracy the method gives up; <= 0: none. NFE-equivalent: "
            f"full-network evaluations spent (blocks or tokens computed / total; one CFG-batched call per step).")


def best_method(summary: dict[str, dict[str, float]], max_loss: float, exclude: tuple[str, ...] = ()) -> str | None:
    """The fastest method within `max_loss` dB of PSNR loss, or None."""
    ok = {k: v for k, v in summary.items() if v["loss"] <= max_loss and k not in exclude}
    return max(ok, key=lambda k: ok[k]["speed"]) if ok else None


def speed_goal(report: Report, name: str, summary: dict, max_loss: float, target: float,
               exclude: tuple[str, ...]) -> None:
    """The goal "speed-up of the fastest method within `max_loss` dB >= `target`", naming that method."""
    best = best_method(summary, max_loss, exclude)
    report.goal(f"{name}: best {best}" if best else f"{name}: no method within {max_loss} dB", target,
                summary[best]["speed"] if best else None)


def ras_goal(report: Report, summary: dict) -> None:
    speed_goal(report, f"G2 RAS speed-up (x) at <= {CACHE_LOSS_DB} dB loss, >= 1024 tokens", summary, CACHE_LOSS_DB,
               1.8, (UNCACHED,))


def default_goals(report: Report, prec: PrecisionRows, label: str = "") -> None:
    """Issue 12's goals on the precision task: the default (auto) path against diffusers at its best setting here
    (the faster of fp32 eager and compiled), alone at <= 0.3 dB and with a TaylorSeer cache at <= 0.5 dB."""
    s = prec.summary
    best = max((k for k in (DIFFUSERS_EAGER, DIFFUSERS_COMPILED) if k in s), key=lambda k: s[k]["speed"])
    theirs = s[best]["speed"]
    alone = s[prec.auto]
    report.goal(f"G5 default path ({prec.auto.split('= ')[-1]}) vs {best} (diffusers' best here){label} (x) at <= "
                f"{PRECISION_LOSS_DB} dB loss (loss {alone['loss']:.3f} dB)", 2.5,
                alone["speed"] / theirs if alone["loss"] <= PRECISION_LOSS_DB else None)
    within = {k: s[k] for k in prec.auto_cached if s[k]["loss"] <= CACHE_LOSS_DB}
    fastest = max(within, key=lambda k: within[k]["speed"]) if within else None
    report.goal(f"G5 default path + cache vs {best}{label} (x) at <= {CACHE_LOSS_DB} dB loss: "
                + (f"best {fastest.split(' + ', 1)[1]}" if fastest else "no cached row within the bound"), 6.0,
                within[fastest]["speed"] / theirs if fastest else None)


def _goals(report: Report, steps: int, demo: dict | None, s32: dict | None, hooks: dict | None,
           prec: PrecisionRows | None, ras: dict | None) -> None:
    for label, summary in (("demo", demo), ("shapes32", s32)):
        if summary is not None:
            speed_goal(report, f"G1 cache speed-up (x) at <= {CACHE_LOSS_DB} dB loss, {steps} steps, {label}",
                       summary, CACHE_LOSS_DB, 2.5, (UNCACHED,))
    if hooks is not None and s32 is not None:
        margins = []
        for theirs_ in hooks.values():
            faster = [v["psnr"] for k, v in s32.items() if k != UNCACHED and v["speed"] >= theirs_["speed"]]
            margins.append(max(faster) - theirs_["psnr"] if faster else None)
        report.goal("G1 beats diffusers' TaylorSeer in PSNR vs own uncached at >= its speed-up (min margin dB over "
                    "its settings)", 0.0, None if not margins or None in margins else min(margins))
    if ras is not None:
        ras_goal(report, ras)
    if prec is not None:
        summary, cached = prec.summary, prec.cached
        exclude = (DIFFUSERS_EAGER, DIFFUSERS_COMPILED, cached, prec.auto, *prec.auto_cached)
        speed_goal(report, f"G3 precision + compile vs diffusers fp32 eager (x) at <= {PRECISION_LOSS_DB} dB loss",
                   summary, PRECISION_LOSS_DB, 3.0, exclude)
        speed_goal(report, f"G3 precision + compile + cache vs diffusers fp32 eager (x) at <= {CACHE_LOSS_DB} dB "
                   f"loss", {cached: summary[cached]}, CACHE_LOSS_DB, 7.0, ())
        default_goals(report, prec)
    report.goal("G4 fused LayerNorm + modulate, fraction of copy bandwidth (GPU: `ditlab core benchmark --accel "
                "--gpu`)", 0.8, None)


def run(size: AccelSize, json_path: Path | None = None, subjects: Subjects | None = None,
        echo: Callable[[str], object] = print, only: str | None = None) -> dict:
    """Measure every CPU task in turn (or `only` one of `TASKS`), print the tables, definitions and goals, write
    JSON when asked; return the JSON."""
    if only is not None and only not in TASKS:
        raise UsageError(f"--only must be one of {list(TASKS)}, got {only!r}")
    wanted = set(TASKS) if only is None else {only}
    subjects = subjects or load_subjects(size, ras="ras" in wanted, precision="precision" in wanted)
    report = Report(TITLE)
    report.notes.append(definitions(size))
    demo = s32 = hooks = prec = ras = None
    if "caches" in wanted:
        demo_in = make_inputs(subjects.demo, size.demo_batch)
        demo, _ = cache_task(report, "demo", subjects.demo, demo_in, reference(subjects.demo, demo_in, size), size)

    grid = policies(size)
    best = repr(policy("taylorseer"))  # the tuned policy (or the grid's TaylorSeer), unless the cache task runs
    best = best if best in grid else next(k for k in grid if k.startswith("TaylorSeer"))
    if wanted & {"caches", "diffusers"} or subjects.precision is None and "precision" in wanted:
        s32_in = make_inputs(subjects.shapes32, max(size.cache_batch, size.precision_batch))
        s32_ref = reference(subjects.shapes32, s32_in, size)
        cache_in, cache_ref = s32_in.take(size.cache_batch), s32_ref[: size.cache_batch]
    if wanted & {"caches", "diffusers"}:
        s32, s32_results = cache_task(report, "shapes32", subjects.shapes32, cache_in, cache_ref, size)
        if "diffusers" in wanted:
            hooks = diffusers_task(report, subjects.shapes32, cache_in, cache_ref, s32_results[UNCACHED], size)
        policy_rows = {k: v for k, v in s32.items() if k != UNCACHED}
        best = best_method(policy_rows, CACHE_LOSS_DB) or min(policy_rows, key=lambda k: policy_rows[k]["loss"])
        s32 = s32 if "caches" in wanted else None

    if "precision" in wanted:
        if subjects.precision is None:
            prec_model = subjects.shapes32
            prec_in, prec_ref = s32_in.take(size.precision_batch), s32_ref[: size.precision_batch]
        else:
            prec_model = subjects.precision
            prec_in = make_inputs(prec_model, size.precision_batch)
            prec_ref = reference(prec_model, prec_in, size)
        prec = precision_task(report, prec_model, prec_in, prec_ref, size, best, torch.device("cpu"),
                              subjects.precision_note)

    if "ras" in wanted:
        ras_in = make_inputs(subjects.ras, size.ras_batch)
        ras = ras_task(report, subjects.ras, ras_in, reference(subjects.ras, ras_in, size), size, subjects.ras_note)

    _goals(report, size.steps, demo, s32, hooks, prec, ras)
    return report.publish(json_path, echo)


def gpu_run(size: AccelSize = GPU, json_path: Path | None = None, echo: Callable[[str], object] = print) -> dict:
    """`--accel --gpu`: fused-kernel bandwidth and end-to-end precision / compile / fp8 / cache speed-ups on CUDA,
    on shapes32-S (trained in the benchmark cache on first use) and on a DiT-XL/2-size network. The JSON is
    rewritten after each task, so that a run cut short keeps what it measured."""
    if not torch.cuda.is_available():
        raise UsageError("--gpu needs a CUDA GPU, and this machine or torch build has none; "
                         "`ditlab core benchmark --accel` gives the CPU tables")
    dev = torch.device("cuda")
    from ditlab.core.kernels import bench as kernel_bench
    from ditlab.core.kernels import triton_kernels

    report = Report(f"{TITLE} (CUDA)", machine=machine(dev))
    report.notes += [definitions(size), f"Triton launch shapes (rows per program, warps, chunk): "
                                        f"{triton_kernels.TUNING or triton_kernels.DEFAULTS}"]

    def save() -> None:
        if json_path is not None:
            report.write(json_path)

    kernels = kernel_bench.kernel_benchmark()
    kernel_bench.add_rows(report, kernels)
    save()
    s_model, note = precision_subject(size)
    s_model = s_model.to(dev)
    s_in = make_inputs(s_model, size.precision_batch)
    s_rows = precision_task(report, s_model, s_in, reference(s_model, s_in, size), size, GPU_CACHE, dev, note)
    save()
    xl = xl_model().to(dev)
    xl_in = make_inputs(xl, XL_BATCH)
    xl_rows = precision_task(report, xl, xl_in, reference(xl, xl_in, size), size, GPU_CACHE, dev,
                             "DiT-XL/2 size (675M parameters, 256 tokens), random weights: PSNR is numeric agreement "
                             "only")
    del xl
    _gpu_goals(report, kernels, s_rows.summary)
    default_goals(report, s_rows, ", GPU, shapes32-S")
    default_goals(report, xl_rows, ", GPU, DiT-XL/2 size")
    return report.publish(json_path, echo)


def _gpu_goals(report: Report, kernels: list[dict], s_summary: dict) -> None:
    by = {(r["kernel"], r["method"]): r for r in kernels}
    fused = by[("layernorm_modulate", "triton")]
    eager = by[("layernorm_modulate", "torch eager")]
    report.goal("G4 fused LayerNorm + modulate, fraction of measured copy bandwidth", 0.8, fused["of_copy_bandwidth"])
    report.goal("G4 fused LayerNorm + modulate vs eager PyTorch (x)", 1.5, eager["ms"] / fused["ms"])
    speed_goal(report, f"GPU end to end (reported; G3's 3x is a CPU goal), shapes32-S: precision + compile vs "
               f"diffusers fp32 eager (x) at <= {PRECISION_LOSS_DB} dB loss", s_summary, PRECISION_LOSS_DB, 3.0,
               (DIFFUSERS_EAGER,))
