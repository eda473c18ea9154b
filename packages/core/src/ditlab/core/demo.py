"""The demo model: a tiny class-conditional DiT trained on synthetic 16x16 shapes with flow matching.

It is the proof that the engine learns (`ditlab core demo-train`, under 3 minutes on a 2-core CPU)
and the model the suite app samples from out of the box. Classes: disc, square, triangle, cross,
each at a random position and size, rendered anti-aliased in [-1, 1].
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ditlab.core.diffusion import FlowMatching, diffusion_loss, sample
from ditlab.core.errors import InputError
from ditlab.core.files import atomic_write
from ditlab.core.models import DiT
from ditlab.core.training import Recipe
from ditlab.core.weights import load_model, package, save_model

CLASSES = ("disc", "square", "triangle", "cross")
SIZE = 16
WEIGHTS_NAME = "demo-shapes"
RECIPE = Recipe(steps=2400, batch=64, lr=5e-4, warmup=100, ema_decay=0.995)
SAMPLER, SAMPLE_STEPS, GUIDANCE = "euler", 25, 2.0  # how the shipped model is sampled and evaluated
PATH = FlowMatching(t_sampling="logit_normal")


def render_shapes(labels: torch.Tensor, generator: torch.Generator, size: int = SIZE, ss: int = 4) -> torch.Tensor:
    """(B,) class indices -> (B, 1, size, size) images in [-1, 1], 4x supersampled for smooth edges."""
    b = labels.shape[0]
    n = size * ss
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / ss  # pixel-unit coordinates
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    r = 3.0 + 3.0 * torch.rand(b, generator=generator)  # half-size, 3 to 6 pixels
    cx = r + 1 + (size - 2 * r - 2) * torch.rand(b, generator=generator)
    cy = r + 1 + (size - 2 * r - 2) * torch.rand(b, generator=generator)
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    rr = r[:, None, None]
    disc = dx**2 + dy**2 <= rr**2
    square = (dx.abs() <= rr * 0.85) & (dy.abs() <= rr * 0.85)
    tri = (dy <= rr * 0.8) & (dy >= -rr) & (dx.abs() <= (dy + rr) * 0.6)  # apex up
    arm = rr * 0.35
    cross = ((dx.abs() <= arm) & (dy.abs() <= rr)) | ((dy.abs() <= arm) & (dx.abs() <= rr))
    masks = torch.stack([disc, square, tri, cross], dim=1).float()  # (B, 4, n, n)
    img = masks[torch.arange(b), labels]
    img = img.reshape(b, size, ss, size, ss).mean(dim=(2, 4))
    return (img * 2 - 1).unsqueeze(1)


def demo_batch(step: int, generator: torch.Generator, batch: int = RECIPE.batch) -> dict:
    labels = torch.randint(0, len(CLASSES), (batch,), generator=generator)
    return {"x": render_shapes(labels, generator), "class_labels": labels}


def demo_model() -> DiT:
    return DiT.from_preset("tiny/4", token_kind="2d", in_channels=1, input_size=[SIZE, SIZE],
                           num_classes=len(CLASSES), class_dropout_prob=0.1, pos_embed="sincos")


def demo_loss(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return diffusion_loss(model, PATH, batch["x"], {"class_labels": batch["class_labels"]}, generator=generator)


def load_demo(weights: str | Path | None = None) -> DiT:
    """The packaged demo model (sha256-verified), or a weights folder given by the user."""
    return load_model(DiT, weights or WEIGHTS_NAME)


@torch.no_grad()
def sample_demo(model: DiT | None = None, per_class: int = 8, steps: int = SAMPLE_STEPS,
                guidance: float = GUIDANCE, seed: int = 0, classes: list[int] | None = None,
                weights: str | Path | None = None, progress=False, precision: str | None = None) -> torch.Tensor:
    """Samples (len(classes) * per_class, 1, 16, 16) in [-1, 1], ordered class by class; `precision` as in
    `sample` (None: auto)."""
    model = model if model is not None else load_demo(weights)
    classes = list(range(len(CLASSES))) if classes is None else classes
    bad = [c for c in classes if not 0 <= c < len(CLASSES)]
    if bad:
        raise InputError(f"class indices must lie in [0, {len(CLASSES) - 1}] ({', '.join(CLASSES)}), got {bad}")
    labels = torch.tensor(classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    x = sample(model, PATH, (len(labels), 1, SIZE, SIZE), sampler=SAMPLER, steps=steps,
               guidance_scale=guidance, model_kwargs={"class_labels": labels}, generator=g, progress=progress,
               precision=precision)
    return x.clamp(-1, 1)


def to_grid(images: torch.Tensor, rows: int, scale: int = 4) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> uint8 grid image with `rows` rows, upscaled `scale`x (nearest)."""
    n, _, h, w = images.shape
    cols = math.ceil(n / rows)
    pad = torch.full((rows * cols - n, 1, h, w), -1.0)
    x = torch.cat([images.cpu(), pad]).reshape(rows, cols, h, w)
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=0.0)  # grey frame between tiles
    grid = x.permute(0, 2, 1, 3).reshape(rows * (h + 2), cols * (w + 2))
    grid = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def write_grid(path: str | Path, images: torch.Tensor, rows: int = len(CLASSES)) -> None:
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"expected a .png output path, got {path}")
    atomic_write(path, lambda p: Image.fromarray(to_grid(images, rows)).save(p, format="PNG"))


class ShapeClassifier(nn.Module):
    """A small CNN, trained on rendered shapes, that judges which class a sample looks like."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_classifier(seed: int = 1234, steps: int = 300) -> ShapeClassifier:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clf = ShapeClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(steps):
        b = demo_batch(0, g, 64)
        loss = nn.functional.cross_entropy(clf(b["x"]), b["class_labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def class_accuracy(clf: ShapeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (clf(images).argmax(dim=1) == labels).float().mean().item()


def evaluate(model: DiT, clf: ShapeClassifier | None = None, per_class: int = 32, seed: int = 0) -> float:
    """Share of class-conditional samples the classifier assigns to the class they were asked for."""
    clf = clf or train_classifier()
    x = sample_demo(model, per_class=per_class, seed=seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    return class_accuracy(clf, x, labels)


MODEL_CARD = """# demo-shapes: a tiny class-conditional DiT

**What it is.** `ditlab.core`'s demo model: DiT `tiny/4` ({params:,} parameters; depth 4, hidden 128,
4 heads, patch 4 -> 16 tokens), class-conditional over 4 synthetic shapes
({classes}), 1 x 16 x 16 images in [-1, 1]. Flow matching (linear path x_t = (1 - t) x0 + t eps,
velocity target, logit-normal t), label dropout 0.1 for classifier-free guidance.

**Data.** Generated on the fly by `ditlab.core.demo.render_shapes` (seeded): one filled shape per image,
random centre and half-size 3-6 px, 4x supersampled. No external data.

**Recipe.** `ditlab core demo-train` (`ditlab.core.demo.train_demo`): {steps} AdamW steps, batch {batch},
lr {lr}, {warmup} warm-up steps, grad clip {grad_clip}, EMA {ema_decay} (the EMA weights are shipped), seed {seed},
fp32 on {device} with {threads} torch thread(s); {seconds:.0f} s wall clock.

**Metrics.** A small CNN trained on rendered shapes (`train_classifier`, its own seed) recognises
{acc:.1%} of 128 class-conditional samples (Euler, {sample_steps} steps, CFG {guidance}) as the class asked for;
{acc_untrained:.1%} for the same network untrained (chance is 25%).

**Limits.** A toy: 16x16 single shapes only. It exists to prove the engine learns and to give the
apps a model that works out of the box; it is not a prior for any real domain.

**Files.** `config.json` + `model.safetensors` (fp32, sha256 in `../SHA256SUMS`).
"""


def train_demo(out: str | Path | None = None, steps: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train the demo model with the shipped recipe and write weights and model card: into `out`, or as the
    packaged `demo-shapes` with its SHA256SUMS line."""
    from ditlab.core.training import Trainer

    recipe = replace(RECIPE, steps=steps or RECIPE.steps, seed=seed)
    torch.manual_seed(recipe.seed)
    model = demo_model()
    start = time.time()
    trainer = Trainer(model, demo_loss, demo_batch, recipe.train_config(None, progress=progress))
    trainer.train()
    seconds = time.time() - start
    ema = trainer.ema_model.cpu().eval()
    clf = train_classifier()
    acc = evaluate(ema, clf)
    acc_untrained = evaluate(demo_model().eval(), clf)
    card = MODEL_CARD.format(**recipe.to_dict(), params=sum(p.numel() for p in ema.parameters()),
                             classes=", ".join(CLASSES), seconds=seconds, acc=acc, acc_untrained=acc_untrained,
                             sample_steps=SAMPLE_STEPS, guidance=GUIDANCE,
                             device="CUDA" if torch.cuda.is_available() else "a 2-core CPU",
                             threads=torch.get_num_threads())
    if out is None:
        written = package(ema, WEIGHTS_NAME, "ditlab.core", card)
    else:
        written = {"folder": str(out), "sha256": save_model(ema, out, card=card)}
    return {**written, "sample_accuracy": acc, "untrained_accuracy": acc_untrained, "seconds": seconds}
