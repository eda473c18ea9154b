"""The benchmark models of `ditlab core benchmark --accel`: class-conditional shapes at 32x32 (shipped as
`shapes32`, 256 tokens) and 64x64 (1024 tokens, trained on demand for the RAS rows, not shipped).

The images are `demo.render_shapes` at 16x16 (shapes of half-size 3-6 px), upsampled bilinearly: the demo
renderer does not scale its shapes with the image size, so a 32x32 render would hold shapes a quarter of
the area. The DiT config stays inside what diffusers' `DiTTransformer2DModel` can express, so the same
weights run in both engines (`dit_to_diffusers`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.core import demo
from ditlab.core.diffusion import diffusion_loss, sample
from ditlab.core.models import DiT
from ditlab.core.training import Recipe
from ditlab.core.weights import load_model, package, save_model

WEIGHTS_NAME = "shapes32"
RECIPE = Recipe(batch=32, lr=1e-3, warmup=100, ema_decay=0.995, seed=0, precision="bf16", checkpoint_every=50)
SAMPLE_STEPS, GUIDANCE = 50, 2.0  # how the benchmark samples and evaluates these models


def render(labels: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """(B,) class indices -> (B, 1, size, size) in [-1, 1]: demo shapes rendered at 16x16, upsampled."""
    small = demo.render_shapes(labels, generator, size=demo.SIZE)
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


S_LR = 5e-4  # the S-size subject's peak learning rate (1e-3 is for the small models)
WIDTHS = {"base": (128, 6, 4), "S": (384, 12, 6)}  # (hidden, depth, heads); "S" is DiT-S's trunk


def shapes_model(size: int = 32, width: str = "base") -> DiT:
    """The benchmark DiT at `size` x `size`, patch 2, diffusers-compatible: hidden 128, depth 6, 4 heads
    ("base", shapes32 and shapes64), or DiT-S's hidden 384, depth 12, 6 heads ("S", 33M parameters)."""
    hidden, depth, heads = WIDTHS[width]
    return DiT(token_kind="2d", in_channels=1, input_size=[size, size], patch_size=2, hidden_size=hidden,
               depth=depth, num_heads=heads, num_classes=len(demo.CLASSES), class_dropout_prob=0.1,
               pos_embed="sincos", time_freq_shift=1.0, norm_eps=1e-6, mlp_norm_eps=1e-5)


def load_shapes32(weights: str | Path | None = None) -> DiT:
    """The packaged `shapes32` model (sha256-verified), or a weights folder."""
    return load_model(DiT, weights or WEIGHTS_NAME)


def _loss(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return diffusion_loss(model, demo.PATH, batch["x"], {"class_labels": batch["class_labels"]},
                          generator=generator)


def train_shapes(size: int, steps: int, output_dir: str | Path, batch: int = RECIPE.batch, init: DiT | None = None,
                 progress: bool = False, width: str = "base", lr: float = RECIPE.lr) -> tuple[DiT, dict]:
    """Train the shapes DiT at `size` for `steps` steps with checkpoints in `output_dir` (a rerun resumes
    there), starting from the weights of `init` (a shapes DiT of any size: positions are not learned) or from
    scratch; returns the EMA model and the trainer's summary, with the training seconds of all sessions."""
    from ditlab.core.training import Trainer
    from ditlab.core.training.trainer import LOG_NAME

    torch.manual_seed(RECIPE.seed)
    model = shapes_model(size, width)
    if init is not None:
        model.load_state_dict(init.state_dict())
    cfg = RECIPE.train_config(output_dir, steps=steps, lr=lr, progress=progress)

    def data(step: int, generator: torch.Generator) -> dict:
        labels = torch.randint(0, len(demo.CLASSES), (batch,), generator=generator)
        return {"x": render(labels, generator, size), "class_labels": labels}

    trainer = Trainer(model, _loss, data, cfg)
    summary = trainer.train()
    last = (Path(output_dir) / LOG_NAME).read_text().splitlines()[-1]
    summary["seconds"] = json.loads(last)["elapsed_s"]
    return trainer.ema_model.cpu().eval(), summary


def cache_dir() -> Path:
    """Where the benchmark keeps models it trains itself: $XDG_CACHE_HOME/ditlab/accel-bench (~/.cache default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ditlab" / "accel-bench"


def shapes64(steps: int, batch: int) -> tuple[DiT, dict]:
    """The 1024-token RAS subject (64x64, patch 2): shapes32 fine-tuned at 64x64 in `cache_dir()` on first use,
    resumed there when it has fewer than `steps` steps, loaded as it is when it has as many or more. Not shipped:
    from scratch, 200 steps at 1024 tokens on this CPU still sample noise; from shapes32 it only has to adapt."""
    return train_shapes(64, steps, cache_dir() / "shapes64", batch=batch, init=load_shapes32())


def shapes32_s(steps: int, batch: int) -> tuple[DiT, dict]:
    """The DiT-S-size precision subject (32x32, 256 tokens, the size of issue 4's probe), trained from scratch in
    `cache_dir()` on first use and resumed or loaded like `shapes64`. Not shipped: 33M parameters (66 MB in fp16)."""
    return train_shapes(32, steps, cache_dir() / "shapes32-S", batch=batch, width="S", lr=S_LR)


@torch.no_grad()
def class_accuracy(model: DiT, clf: nn.Module, per_class: int = 16, seed: int = 0) -> float:
    """Share of class-conditional samples (Euler 50 steps, CFG 2) that the demo's 16x16 shape classifier,
    shown the samples average-pooled to 16x16, assigns to the class asked for."""
    size = model.cfg.input_size[0]
    labels = torch.arange(len(demo.CLASSES)).repeat_interleave(per_class)
    x = sample(model, demo.PATH, (len(labels), 1, size, size), steps=SAMPLE_STEPS,
               guidance_scale=GUIDANCE, model_kwargs={"class_labels": labels},
               generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    small = F.adaptive_avg_pool2d(x, demo.SIZE)
    return demo.class_accuracy(clf, small, labels)


MODEL_CARD = """# shapes32: the 256-token benchmark DiT of `ditlab core benchmark --accel`

**What it is.** A class-conditional DiT ({params:,} parameters; depth 6, hidden 128, 4 heads, patch 2 ->
256 tokens) over 1 x 32 x 32 images in [-1, 1] of 4 synthetic shapes ({classes}). Flow matching (linear
path, velocity target, logit-normal t), label dropout 0.1 for classifier-free guidance. Its config is one
diffusers' `DiTTransformer2DModel` can express (sin-cos positions, time embedding shift 1, LayerNorm eps
1e-6 / 1e-5), so `ditlab.core.models.interop.dit_to_diffusers` turns it into a diffusers model with the
same outputs; that is what the benchmark's diffusers rows run.

**Data.** `ditlab.core.demo.render_shapes` at 16x16 (one filled shape, random centre, half-size 3-6 px,
4x supersampled), upsampled bilinearly to 32x32 (`ditlab.core.accel.bench_model.render`): the demo
renderer keeps the shape size fixed in pixels, so rendering at 32 directly would shrink the shapes.
Generated on the fly, seeded. No external data.

**Recipe.** `ditlab.core.accel.bench_model.ship_shapes32({steps}, output_dir)`: {steps} AdamW steps,
batch {batch}, lr {lr}, {warmup} warm-up steps, grad clip {grad_clip}, EMA {ema_decay} (the EMA weights are
shipped), seed {seed}, {precision} autocast on a 2-core CPU with {threads} torch thread(s) while other CPU
jobs shared the machine; {seconds:.0f} s of training wall clock (checkpointed every {checkpoint_every} steps,
resumable). Final training loss (mean of the last 10 steps) {loss:.4f}.

**Metrics.** The demo's small shape CNN (`demo.train_classifier`, 16x16), shown the samples
average-pooled to 16x16, assigns {acc:.1%} of {n_samples} class-conditional samples (Euler, {sample_steps} steps,
CFG {guidance}) to the class asked for (chance 25%).

**Limits.** A benchmark subject, not a prior for any real domain. Undertrained for its 256 tokens (one
sitting of CPU time): samples are soft blobs with some residual pixel noise, and their class is often not
recognisable (the accuracy above). Smooth upsampled toy shapes only. Cache and precision speed-ups
measured on it show how the methods trade time for fidelity at 256 tokens; they do not transfer as
numbers to large latent DiTs.

**Files.** `config.json` + `model.safetensors` (fp32, sha256 in `../SHA256SUMS`).
"""


def ship_shapes32(steps: int, output_dir: str | Path, out: str | Path | None = None) -> dict:
    """Train (or resume) shapes32 for `steps` steps, evaluate it and write weights, model card and sha256
    (into the packaged `weights/shapes32` unless `out` is given)."""
    threads = torch.get_num_threads()
    ema, summary = train_shapes(32, steps, output_dir)
    clf = demo.train_classifier()
    per_class = 16
    acc = class_accuracy(ema, clf, per_class)
    card = MODEL_CARD.format(**{**RECIPE.to_dict(), "steps": summary["step"]},
                             params=sum(p.numel() for p in ema.parameters()), classes=", ".join(demo.CLASSES),
                             seconds=summary["seconds"], loss=summary["loss"], acc=acc, sample_steps=SAMPLE_STEPS,
                             guidance=GUIDANCE, n_samples=per_class * len(demo.CLASSES), threads=threads)
    if out is None:
        written = package(ema, WEIGHTS_NAME, "ditlab.core", card)
    else:
        written = {"folder": str(out), "sha256": save_model(ema, out, card=card)}
    return {**written, "sample_accuracy": acc, **summary}
