"""`ditlab core benchmark`: our DiT against diffusers' `DiTTransformer2DModel` at the same size and weights.

Both models run side by side in one process, on the same threads, in fp32 and eager mode. diffusers'
model is built first; its per-block timestep/label embedders are tied to block 0's (as in every public
checkpoint) and ours is converted from it with `DiT.from_diffusers`, so both hold the same weights.
Timed repeats alternate between the two models (A B A B ...) so that drift on a shared machine hits
both alike; the median repeat is reported. Peak memory comes from untimed calls after all timing.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import diffusers
import psutil
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from torch import nn

from ditlab.core.models import DiT

OURS, THEIRS = "ditlab DiT", "diffusers DiTTransformer2DModel"
NUM_CLASSES = 1000
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@dataclass(frozen=True)
class BenchSize:
    """The model size both networks are built at, the batches, and how many calls to time."""

    depth: int
    num_heads: int
    head_dim: int
    latent: int  # latent side; tokens = (latent / patch)^2
    train_batch: int
    infer_batch: int
    warmup: int
    repeats: int
    patch: int = 2
    in_channels: int = 4

    @property
    def tokens(self) -> int:
        return (self.latent // self.patch) ** 2

    def describe(self) -> str:
        return (f"depth {self.depth}, hidden {self.num_heads * self.head_dim}, {self.num_heads} heads, "
                f"patch {self.patch}, {self.latent}x{self.latent}x{self.in_channels} latents "
                f"= {self.tokens} tokens")


FULL = BenchSize(depth=12, num_heads=6, head_dim=64, latent=32, train_batch=16, infer_batch=16,
                 warmup=1, repeats=5)  # DiT-S/2 on 32x32 latents
QUICK = BenchSize(depth=4, num_heads=4, head_dim=64, latent=16, train_batch=8, infer_batch=16,
                  warmup=1, repeats=5)


def build_pair(size: BenchSize, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(ours, diffusers') at `size` with identical weights; diffusers' block embedders tied to block 0's."""
    torch.manual_seed(seed)
    ref = DiTTransformer2DModel(
        num_attention_heads=size.num_heads, attention_head_dim=size.head_dim, in_channels=size.in_channels,
        num_layers=size.depth, sample_size=size.latent, patch_size=size.patch,
        num_embeds_ada_norm=NUM_CLASSES,
    )
    shared = ref.transformer_blocks[0].norm1.emb.state_dict()
    for block in ref.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    return DiT.from_diffusers(ref), ref


def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def exact_rss_accounting() -> None:
    """Make the process RSS follow live CPU tensors (glibc): serve allocations of 64 KiB or more by mmap,
    so that freeing one returns its pages. glibc's default adaptive threshold keeps freed tensors in the
    heap, which makes a region's RSS depend on what ran before it. Call it after all timing: one mmap
    per allocation is slower than the default."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def _release_free_heap() -> None:
    """Hand free heap pages back to the OS, so that a region's RSS starts from live memory."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of a region above its start, in bytes: the CUDA allocator's peak on a GPU; on the
    CPU the process RSS, sampled every `interval` seconds from a background thread (see
    `exact_rss_accounting`)."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.start = self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_heap()
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def used(self) -> int:
        return self.peak - self.start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                     device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, timing them in turn (A B A B ...) after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _inputs(size: BenchSize, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Latents, integer timesteps, class labels and a noise target for one batch."""
    x = torch.randn(batch, size.in_channels, size.latent, size.latent, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return x, t, y, torch.randn_like(x)


def _forwards(ours: nn.Module, ref: nn.Module) -> dict[str, Callable[..., torch.Tensor]]:
    """One call signature, (x, t, y) -> prediction, for both models."""
    return {OURS: lambda x, t, y: ours(x, t, y),
            THEIRS: lambda x, t, y: ref(x, timestep=t, class_labels=y).sample}


def _train_step(model: nn.Module, forward: Callable[..., torch.Tensor],
                batch: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """A closure running one AdamW step of the MSE loss on `batch`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, y, target = batch

    def step() -> None:
        F.mse_loss(forward(x, t, y), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # here, so that a step's memory region starts without gradients

    return step


@contextmanager
def _mode(models: Iterable[nn.Module], train: bool) -> Iterator[None]:
    """Training: train mode with autograd on; inference: eval mode under `torch.inference_mode`."""
    for model in models:
        model.train(train)
    with torch.enable_grad() if train else torch.inference_mode():
        yield


def _peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    with PeakMemory(device) as mem:
        fn()
    return mem.used


def _memory_metric(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak memory MiB (cuda max_memory_allocated - start)"
    return "peak memory MiB (process RSS sampled every 2 ms, peak - start)"


def describe_machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    # other jobs on the cores skew every number; say how busy the machine was
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores{gpu}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"diffusers {diffusers.__version__}{load}")


def run(size: BenchSize, json_path: Path | None = None, device: torch.device | None = None,
        echo: Callable[[str], object] = print) -> dict:
    """Measure both models at `size`, print the table and goals, write JSON when asked; return the report.
    On the CPU this leaves the process in `exact_rss_accounting` mode."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = describe_machine(device)
    ours, ref = build_pair(size)
    ours, ref = ours.to(device), ref.to(device)
    models = {OURS: ours, THEIRS: ref}
    forwards = _forwards(ours, ref)
    rows: list[dict] = []

    def row(task: str, method: str, metric: str, value: float) -> None:
        rows.append({"task": task, "method": method, "metric": metric, "value": value})

    model_task = f"model ({size.describe()})"
    for name, model in models.items():
        row(model_task, name, "parameters (M)", round(sum(p.numel() for p in model.parameters()) / 1e6, 3))

    torch.manual_seed(1)
    x, t, y, _ = _inputs(size, size.infer_batch, device)
    with _mode(models.values(), train=False):
        diff = (forwards[OURS](x, t, y) - forwards[THEIRS](x, t, y)).abs().max().item()
    row("output agreement (eval, same input and weights)", f"{OURS} vs diffusers", "max abs diff", diff)

    torch.manual_seed(2)
    batch = _inputs(size, size.train_batch, device)
    tasks = [  # (task, unit, batch size, training?, one call per model)
        (f"sampling: one network evaluation, batch {size.infer_batch}", "images/s", size.infer_batch, False,
         {name: (lambda f=f: f(x, t, y)) for name, f in forwards.items()}),
        (f"training step (forward + MSE + backward + AdamW), batch {size.train_batch}", "samples/s",
         size.train_batch, True, {name: _train_step(models[name], f, batch) for name, f in forwards.items()}),
    ]
    seconds = []
    for *_, train, fns in tasks:
        with _mode(models.values(), train):
            seconds.append(time_interleaved(fns, size.warmup, size.repeats, device))
    if device.type == "cpu":
        exact_rss_accounting()  # after all timing: it slows allocation down
    peaks = []
    for *_, train, fns in tasks:
        with _mode(models.values(), train):
            for fn in fns.values():  # one call each to settle the heap after the switch
                fn()
            peaks.append({name: _peak_memory(fn, device) for name, fn in fns.items()})

    ratios = []
    for (task, unit, n, _, fns), secs, peak in zip(tasks, seconds, peaks, strict=True):
        for name in fns:
            row(task, name, unit, round(n / secs[name], 3))
        ratios.append(secs[THEIRS] / secs[OURS])
        row(task, "ratio ditlab / diffusers", f"{unit} ratio (>1: ours faster)", round(ratios[-1], 3))
        for name in fns:
            row(task, name, _memory_metric(device), round(peak[name] / 2**20, 1))
    infer_ratio, train_ratio = ratios

    goals = [{"name": f"{kind} throughput >= 1.0x diffusers", "target": 1.0, "value": round(ratio, 3),
              "met": bool(ratio >= 1.0)}
             for kind, ratio in (("training", train_ratio), ("inference", infer_ratio))]
    report = {
        "machine": machine,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "rows": rows,
        "goals": goals,
    }
    echo(format_report(report, size, device))
    if json_path is not None:
        write_json(report, Path(json_path))
        echo(f"wrote {json_path}")
    return report


def _fmt(value: float) -> str:
    return f"{value:.2e}" if abs(value) < 1e-2 and value != 0 else f"{value:,.3f}".rstrip("0").rstrip(".")


def format_report(report: dict, size: BenchSize, device: torch.device) -> str:
    """The markdown table of rows, then the goals."""
    lines = [f"DiT benchmark on {report['machine']}",
             f"{size.describe()}; fp32, eager, {device.type}; median of {size.repeats} interleaved repeats "
             f"after {size.warmup} warm-up; memory from an untimed call per model after the timing", "",
             "| task | method | metric | value |", "|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']} | {r['metric']} | {_fmt(r['value'])} |" for r in report["rows"]]
    lines += ["", "| goal | target | value | met |", "|---|---|---|---|"]
    lines += [f"| {g['name']} | {g['target']} | {g['value']} | {str(g['met']).lower()} |"
              for g in report["goals"]]
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    """Write `report` to `path` atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would follow the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(quick: bool, json_path: Path | None) -> None:
    """Entry point of `ditlab core benchmark`: the full DiT-S/2 comparison, or a smaller one with --quick."""
    run(QUICK if quick else FULL, json_path)
