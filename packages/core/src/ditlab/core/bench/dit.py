"""`ditlab core benchmark`: our DiT against diffusers' `DiTTransformer2DModel` at the same size and weights.

Both models run side by side in one process, on the same threads, in fp32 and eager mode. diffusers'
model is built first; its per-block timestep/label embedders are tied to block 0's (as in every public
checkpoint) and ours is converted from it with `DiT.from_diffusers`, so both hold the same weights.
Timed repeats alternate between the two models (A B A B ...) so that drift on a shared machine hits
both alike; the median repeat is reported. Peak memory comes from untimed calls after all timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from torch import nn

from ditlab.core.bench.harness import PeakMemory, Report, exact_rss_accounting, machine, time_interleaved
from ditlab.core.models import DiT

OURS, THEIRS = "ditlab DiT", "diffusers DiTTransformer2DModel"
NUM_CLASSES = 1000


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


def run(size: BenchSize, json_path: Path | None = None, device: torch.device | None = None,
        echo: Callable[[str], object] = print) -> dict:
    """Measure both models at `size`, print the tables and goals, write JSON when asked; return the JSON.
    On the CPU this leaves the process in `exact_rss_accounting` mode."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = Report(f"DiT benchmark: {OURS} vs {THEIRS}", machine=machine(device))
    report.notes.append(f"{size.describe()}; fp32, eager, {device.type}; median of {size.repeats} interleaved "
                        f"repeats after {size.warmup} warm-up; memory from an untimed call per model after the timing")
    ours, ref = build_pair(size)
    ours, ref = ours.to(device), ref.to(device)
    models = {OURS: ours, THEIRS: ref}
    forwards = _forwards(ours, ref)

    model_task = f"model ({size.describe()})"
    for name, model in models.items():
        report.row(model_task, name, "parameters (M)", sum(p.numel() for p in model.parameters()) / 1e6)

    torch.manual_seed(1)
    x, t, y, _ = _inputs(size, size.infer_batch, device)
    with _mode(models.values(), train=False):
        diff = (forwards[OURS](x, t, y) - forwards[THEIRS](x, t, y)).abs().max().item()
    report.row("output agreement (eval, same input and weights)", f"{OURS} vs diffusers", "max abs diff", diff)

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
        ratios.append(secs[THEIRS] / secs[OURS])
        for name in fns:
            report.row(task, name, unit, n / secs[name])
            if name == OURS:
                report.row(task, name, "x diffusers (>1: ours faster)", ratios[-1])
            report.row(task, name, _memory_metric(device), peak[name] / 2**20)
    infer_ratio, train_ratio = ratios
    for kind, ratio in (("training", train_ratio), ("inference", infer_ratio)):
        report.goal(f"{kind} throughput >= 1.0x diffusers", 1.0, ratio)

    return report.publish(json_path, echo)
