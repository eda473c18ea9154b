"""What `ditlab core benchmark --accel` measures: the run sizes, the models (the demo model, shapes32, shapes64
for RAS, the DiT-S-size shapes32-S, a DiT-XL/2-size network), their seeded inputs, and diffusers' DiT behind
our call signature."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ditlab.core.accel import auto, bench_model
from ditlab.core.demo import load_demo
from ditlab.core.models import DiT
from ditlab.core.models.interop import dit_to_diffusers

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
    auto_taylor: tuple[int, ...] = (3,)  # TaylorSeer(interval, order=1) rows on top of the auto path
    auto_snr_db: float = auto.MIN_SNR_DB  # the auto path's error bound


FULL = AccelSize(steps=50, guidance=2.0, repeats=3, demo_batch=16, cache_batch=8, precision_batch=8, ras_batch=8,
                 ras_train_steps=400, ras_train_batch=8, compile=True, fora=(2, 3, 4), delta_dit=(2,),
                 taylor=tuple((i, o) for i in (2, 3, 4) for o in (1, 2)), fbc=(0.05, 0.1, 0.2),
                 ras=(PAPER_RAS, {"ratio": 0.35, "cooldown": 0}, {"ratio": 0.3}, {"ratio": 0.35}, {"ratio": 0.4},
                      {"ratio": 0.5}), precision_width="S",
                 precision_train_steps=300, auto_taylor=(2, 3, 4))
QUICK = AccelSize(steps=50, guidance=2.0, repeats=1, demo_batch=4, cache_batch=2, precision_batch=4, ras_batch=1,
                  ras_train_steps=30, ras_train_batch=8, compile=False, fora=(3,), delta_dit=(2,), taylor=((3, 2),),
                  fbc=(0.1,), ras=({"ratio": 0.5},))
GPU = dataclasses.replace(FULL, precision_batch=64)  # a GPU needs a bigger batch than 8 to be busy
XL_BATCH = 16


@dataclass
class Subjects:
    """The models benchmarked: the demo model, the 256-token cache subject, the >= 1024-token RAS subject and
    the precision subject (shapes32 itself, or the DiT-S-size shapes32-S)."""

    demo: DiT
    shapes32: DiT
    ras: DiT | None
    ras_note: str = ""
    precision: DiT | None = None  # None: shapes32
    precision_note: str = "shapes32"


@dataclass
class Inputs:
    """One task's starting noise and labels; `take(n)` is the first n samples of the same draw."""

    x_T: torch.Tensor
    labels: torch.Tensor
    null: int

    def take(self, n: int) -> Inputs:
        return Inputs(self.x_T[:n], self.labels[:n], self.null)


def make_inputs(model: DiT, batch: int, seed: int = 0) -> Inputs:
    """Seeded noise (batch, C, H, W) at the model's nominal size and labels cycling through the classes."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((batch, cfg.in_channels, *cfg.input_size), generator=g)
    return Inputs(x_T, torch.arange(batch) % cfg.num_classes, cfg.num_classes)


def ras_subject(size: AccelSize) -> tuple[DiT, str]:
    """shapes64 from the benchmark cache (trained there if missing) and the note that names it."""
    ras, summary = bench_model.shapes64(size.ras_train_steps, size.ras_train_batch)
    return ras, (f"shapes64 (shapes32 fine-tuned {summary['step']} steps at 64x64, batch {size.ras_train_batch}, in "
                 f"{bench_model.cache_dir()}; not shipped)")


def precision_subject(size: AccelSize) -> tuple[DiT, str]:
    """shapes32-S from the benchmark cache (trained there if missing) and the note that names it."""
    model, summary = bench_model.shapes32_s(size.precision_train_steps, size.precision_train_batch)
    return model, (f"shapes32-S (DiT-S trunk: hidden 384, depth 12, 6 heads, 256 tokens; trained {summary['step']} "
                   f"steps, batch {size.precision_train_batch}, in {bench_model.cache_dir()}; not shipped)")


def load_subjects(size: AccelSize, ras: bool = True, precision: bool = True) -> Subjects:
    """The shipped demo and shapes32 models, shapes64 (with `ras`) and, with `precision` and `precision_width` "S",
    shapes32-S from the benchmark cache (trained there if missing)."""
    ras_model, ras_note = ras_subject(size) if ras else (None, "")
    subjects = Subjects(load_demo(), bench_model.load_shapes32(), ras_model, ras_note)
    if precision and size.precision_width == "S":
        subjects.precision, subjects.precision_note = precision_subject(size)
    return subjects


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


class DiffusersDiT(nn.Module):
    """Our call `(x, timestep, class_labels)` on a diffusers `DiTTransformer2DModel`, made inside one cache
    context: diffusers' stateful cache hooks keep their state per context, which `CacheMixin.cache_context` sets
    and `DiTTransformer2DModel`, having no CacheMixin, never does. The conditional and unconditional rows go
    through in one call, so one context ("cfg-batch") serves every call. Counts the attention and MLP modules
    that actually run, for a module-level NFE-equivalent."""

    def __init__(self, model: nn.Module, count: bool = True):
        super().__init__()
        from diffusers.hooks import HookRegistry

        self.model = model
        self.registry = HookRegistry.check_if_exists_or_initialize(model)
        self.module_calls = 0
        self.depth = len(model.transformer_blocks)
        if not count:  # (a compiled model: a Python counter inside the graph would break it)
            self.module_calls = None
            return
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
        if self.module_calls is not None:
            self.module_calls = 0

    def nfe_equivalent(self) -> float | None:
        return None if self.module_calls is None else self.module_calls / (2 * self.depth)


def diffusers_model(model: DiT, hook: Callable[[nn.Module], object] | None = None, compile: bool = False
                    ) -> DiffusersDiT:
    """`model` as a diffusers DiT (fresh copy, on the model's device) with an optional cache hook applied, or
    compiled whole with `torch.compile` (diffusers' own way; its DiT defines no repeated blocks to compile)."""
    ref = dit_to_diffusers(model).to(next(model.parameters()).device)
    if hook is not None:
        hook(ref)
    if compile:
        ref.compile(dynamic=False)
    return DiffusersDiT(ref, count=not compile)
