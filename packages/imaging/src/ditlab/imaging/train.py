"""The recipes that train the shipped imaging networks (`ditlab imaging train`), in resumable chunks.

- `sr-x4`: SRDiT x4, one network for both degradations, told which by its task input (0: bicubic, 1: real-world
  Real-ESRGAN second-order); each batch is one of the two, alternating by step.
- `restore-x1`: SRDiT x1 for denoise / deblur / JPEG (task 0 / 1 / 2), a task per step in turn.
- `edsr-x4`: the learned baseline, EDSR-style CNN x4, trained on the same batches as `sr-x4` for the same CPU
  time (`--seconds` = the SRDiT run's `elapsed_s`).

Data: `ditlab.imaging.data.training_batch`, a function of the step (train seeds only: procedural images and crops
of the two training photos); 32 x 32 LR crops (128 x 128 HR at x4), the tile size the networks then sample with.
Checkpoints: `out/checkpoint` (float32 with AdamW moments); between sessions a run travels as one half-precision
file `training/<name>.resume.safetensors`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ditlab.core.errors import InputError
from ditlab.core.training import Recipe, Trainer, load_checkpoint, resume_run
from ditlab.core.training.trainer import CHECKPOINT_NAME
from ditlab.core.weights import package
from ditlab.imaging.data import eval_images, training_batch
from ditlab.imaging.degrade import TASKS, degrade
from ditlab.imaging.metrics import psnr_y
from ditlab.imaging.models import EDSR, SRDiT, n_params
from ditlab.imaging.superres import from_model, sample, sr_loss, to_model

SR_TASKS = ("bicubic", "realesrgan")
"""The task index of the x4 network: which degradation the LR image went through."""


@dataclass(frozen=True)
class Spec:
    """One shipped network: its class and config, the degradations it is trained on (one per step, in turn)."""

    name: str
    cls: type
    config: dict
    tasks: tuple[str, ...]
    scale: int
    recipe: Recipe = field(default_factory=lambda: RECIPE)


RECIPE = Recipe(batch=16, lr=3e-4, warmup=200, ema_decay=0.998, grad_clip=1.0, precision="bf16",
                checkpoint_every=100, log_every=25)
TILE = 32
KAPPA = 0.25
"""Noise scale of the residual-shift path (ResShift uses 2.0 in a VQGAN latent space). With 1.0 in pixel space the
x4 network at 700 steps lost 1.5 dB to bicubic on real-world inputs at 4 steps (more steps, worse): the noise the
sampler adds was not taken out again. 0.25 keeps the task near regression, which a CPU budget can learn."""
SPECS = {
    "sr-x4": Spec("sr-x4", SRDiT, {"scale": 4, "num_tasks": 2, "tile": TILE, "kappa": KAPPA}, SR_TASKS, 4),
    "restore-x1": Spec("restore-x1", SRDiT, {"scale": 1, "num_tasks": 3, "tile": TILE, "kappa": KAPPA}, TASKS, 1),
    "edsr-x4": Spec("edsr-x4", EDSR, {"scale": 4, "num_tasks": 2}, SR_TASKS, 4),
}


def spec(name: str) -> Spec:
    if name not in SPECS:
        raise InputError(f"unknown network {name!r}; trainable: {sorted(SPECS)}")
    return SPECS[name]


def build(name: str) -> torch.nn.Module:
    s = spec(name)
    return s.cls(**s.config)


class SRData:
    """`data(step, generator) -> {"lr", "hr", "task"}`: the training batch of a step, a function of the step."""

    def __init__(self, s: Spec, batch: int) -> None:
        self.spec, self.batch = s, batch

    def __call__(self, step: int, generator: torch.Generator) -> dict:
        k = step % len(self.spec.tasks)
        lr, hr = training_batch(seed=step, batch=self.batch, hr_size=TILE * self.spec.scale, scale=self.spec.scale,
                                degradation=self.spec.tasks[k])
        return {"lr": lr, "hr": hr, "task": torch.full((self.batch,), k, dtype=torch.long)}


def edsr_loss(model: EDSR, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return (model(to_model(batch["lr"]), batch["task"]) - to_model(batch["hr"])).abs().mean()


def train(name: str, out_dir: str | Path, steps: int, resume_file: str | Path | None = None, progress: bool = True,
          **changes) -> dict:
    """Train (or resume) network `name` in `out_dir` up to `steps` optimizer steps in total."""
    s = spec(name)
    recipe = replace(s.recipe, **changes)
    resume_run(name, out_dir, resume_file)
    torch.manual_seed(recipe.seed)
    model = build(name)
    loss = edsr_loss if s.cls is EDSR else sr_loss
    config = recipe.train_config(out_dir, steps=steps, progress=progress)
    report = Trainer(model, loss, SRData(s, recipe.batch), config).train()
    return {**report, "params": n_params(model)}


@torch.no_grad()
def validate(model: torch.nn.Module, name: str, n: int = 8, size: int = 128, steps: int | None = None) -> dict:
    """Mean Y-PSNR (dB, border = scale) per task on `n` validation images (validation seeds, never trained on)."""
    s = spec(name)
    g = torch.Generator().manual_seed(7)
    out = {}
    for k, task in enumerate(s.tasks):
        vals = []
        for _, img in eval_images("val", n, (size, size)):
            hr = torch.from_numpy(img).permute(2, 0, 1)[None].float()
            lr = degrade(hr, s.scale, task, g)
            if isinstance(model, EDSR):
                pred = from_model(model(to_model(lr), torch.tensor([k])))
            else:
                pred = sample(model, lr, steps=steps, task=k, generator=torch.Generator().manual_seed(0))
            vals.append(psnr_y(pred[0].permute(1, 2, 0).numpy(), img, border=s.scale))
        out[task] = float(np.mean(vals))
    return out


MODEL_CARD = """# {name}: {what}

**What it is.** {What}. {arch} Parameters: {params:,}.

**Data.** Generated here, seeded, no external data: `ditlab.imaging.data.training_batch`, procedural images
(shapes, gradients, textures, fractal noise, text, line art, photo-like composites; train seeds only) and, in
30% of each batch, random crops of scikit-image's `camera` and `astronaut` (flips, 90-degree turns, downscaling).
Evaluation photos (`chelsea`, `coffee`, `rocket`) and validation / test seeds are never trained on.
Degradations: {tasks}

**Recipe.** `ditlab imaging train {name}` (`ditlab.imaging.train`): AdamW lr {lr}, {warmup} warm-up steps, batch
{batch} crops of {tile} x {tile} LR pixels, L1 loss, grad clip {grad_clip}, EMA {ema_decay} (the EMA weights are
shipped, float16), bf16 autocast, {steps} steps, {hours:.2f} h of wall-clock training on 2-core CPU machines
(AMD EPYC, then Intel Xeon with AMX: sessions run on machines that come and go).

**Metrics.** Y-PSNR (BT.601 limited range, border = scale) on 8 validation images of 128 x 128 (validation
seeds): {val}. For reference, {base_name} on the same images: {base}.
Benchmark figures on held-out photos are in BENCHMARKS.md (`ditlab imaging benchmark`).

**Limits.** Small and CPU-trained for under an hour or a few: far from the field's GPU-trained models. Trained on
synthetic degradations; a photo degraded otherwise (strong motion blur, film grain, heavy compression) is outside
what it has seen.

**Files.** `config.json` + `model.safetensors` (float16, sha256 in `../SHA256SUMS`).
"""

WHAT = {"sr-x4": ("x4 super-resolution (bicubic and real-world degradations)",
                  "A diffusion transformer (SRDiT: LR tokens in joint attention, zero-initialised cross-stream "
                  "depthwise convolutions), residual-shift diffusion, 4 steps (1 works).",
                  "Task 0: bicubic downscaling; task 1: the Real-ESRGAN second-order pipeline (blur, resize, noise, "
                  "JPEG, twice, then sinc)."),
        "restore-x1": ("x1 restoration: denoise, deblur, JPEG artefacts",
                       "A diffusion transformer (SRDiT at x1), residual-shift diffusion, 4 steps.",
                       "task 0: Gaussian noise sigma 5-50/255; task 1: Gaussian blur sigma 0.5-3 + noise 1/255; task "
                       "2: JPEG quality 10-60."),
        "edsr-x4": ("the same-budget CNN baseline for x4",
                    "An EDSR-style residual CNN (no batch norm, pixel-shuffle upsampler), trained next to sr-x4 on the "
                    "same batches for the same wall-clock time (1 torch thread each, the same machine).",
                    "as sr-x4 (task 0 bicubic, 1 real-world).")}


def package_run(name: str, out_dir: str | Path) -> dict:
    """Write the EMA weights of `out_dir/checkpoint` as packaged `name` with its card and sha256."""
    s = spec(name)
    model = build(name)
    state = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME, model, ema=True)
    model.eval()
    t0 = time.perf_counter()
    if isinstance(model, SRDiT):  # the default number of sampling steps of each task: the best on validation
        by_steps = {n: validate(model, name, steps=n) for n in (1, 2, model.config.steps)}
        best = [max(by_steps, key=lambda n, k=k: by_steps[n][k]) for k in s.tasks]
        chosen_model = s.cls(**{**s.config, "sample_steps": best})  # in the constructor: from_config then reads it
        chosen_model.load_state_dict(model.state_dict())
        model = chosen_model.eval()
        val = {k: by_steps[n][k] for k, n in zip(s.tasks, best, strict=True)}
        chosen = "; ".join(f"{n} step{'s' * (n > 1)}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in r.items())
                           for n, r in by_steps.items()) + "; default steps chosen: " + ", ".join(
            f"{k} {n}" for k, n in zip(s.tasks, best, strict=True))
    else:
        val = validate(model, name)
        chosen = ", ".join(f"{k} {v:.2f} dB" for k, v in val.items())
    what, arch, tasks = WHAT[name]
    with torch.no_grad():  # a fresh EDSR is its own skip path: bicubic upsampling at x4, the input itself at x1
        base = validate(EDSR(scale=s.scale, num_tasks=len(s.tasks)), name)
    card = MODEL_CARD.format(name=name, what=what, What=what[0].upper() + what[1:], arch=arch, params=n_params(model),
                             tasks=tasks,
                             tile=TILE, **{**s.recipe.to_dict(), "steps": state["step"]},
                             hours=state.get("elapsed_s", 0) / 3600,
                             val=chosen, base_name="bicubic upsampling" if s.scale > 1 else "the degraded input",
                             base=", ".join(f"{k} {v:.2f} dB" for k, v in base.items()))
    written = package(model, name, "ditlab.imaging", card, dtype=torch.float16)
    return {**written, "step": state["step"], "val_psnr": val, "eval_seconds": time.perf_counter() - t0}
