"""The recipe that trains the shipped CT slice prior (`ditlab medical train`), in resumable chunks.

Data: axial slices of procedural volumes from training seeds that never meet the validation (100+) and test
(0+) seeds, in [-1, 1]. Up to step `MIX_FROM` (the first 5800 steps): torso phantoms (`data.make_phantom`)
only, 64 x 64 crops of 128 x 128 x 64 phantoms (random position and left-right flip) and whole slices of
64 x 64 x 32 phantoms, 3:1. From `MIX_FROM` on, the broad mix `MIX`: half of each batch is torso slices as
before, the other half slices of the `families` generators (ellipses, texture, head, and the natural-image-
like `leaves`), whole 64 x 64 slices and 64 x 64 crops of 128 x 128 slices. Every source draws from a pool of
volumes that slides by new seeds every 250 steps, so the data a step sees is a function of the step alone
and a resumed run sees what an uninterrupted one would.

Training runs for as long as it is let run and resumes from `out/checkpoint` (float32, with AdamW moments).
Between sessions on different machines the run travels as one half-precision file of weights + EMA, the
repository's `training/ct-prior.resume.safetensors` (`ditlab.core.training.export_resume` / `import_resume`);
AdamW moments restart then.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ditlab.core.diffusion import diffusion_loss
from ditlab.core.training import Recipe, Trainer, export_run, load_checkpoint, resume_run
from ditlab.core.training.trainer import CHECKPOINT_NAME
from ditlab.core.weights import package
from ditlab.medical.data import make_phantom
from ditlab.medical.families import SPLITS, TRAIN_FAMILIES, make_volume
from ditlab.medical.metrics import psnr
from ditlab.medical.models import PATH, PRIOR_NAME, n_params, prior_model, random_crop
from ditlab.medical.operators import hu_to_unit

TRAIN_SEED, QUICK_SEED = 100_000, 200_000
POOL, SLIDE, REFRESH = 64, 8, 250
QUICK_SHARE = 0.25  # share of each batch that is whole slices of the small phantoms
MIX_FROM = 5800  # the step the broad mix starts at (where the torso-only run had reached)
MIX = {"full": 8, "quick": 8, **{f: 4 for f in TRAIN_FAMILIES}}
"""Slices per batch of each source in the broad mix (a batch of 32)."""
FAMILY_POOL, FAMILY_SLIDE = 32, 4
FAMILY_SHAPES = ((64, 64, 16), (128, 128, 8))  # even seeds whole slices, odd seeds 64 x 64 crops
RECIPE = Recipe(batch=32, lr=3e-4, warmup=200, ema_decay=0.999, grad_clip=1.0, precision="bf16",
                checkpoint_every=100, log_every=25)


class SliceData:
    """`data(step, generator) -> {"x": (B, 1, 64, 64)}`: the training batches, a function of the step."""

    def __init__(self, batch: int = RECIPE.batch, quick_share: float = QUICK_SHARE,
                 full_shape: tuple[int, int, int] = (128, 128, 64), quick_shape: tuple[int, int, int] = (64, 64, 32),
                 pool: int = POOL, mix_from: int = MIX_FROM, mix: dict[str, int] | None = None) -> None:
        self.batch, self.n_quick = batch, int(round(batch * quick_share))
        self.full_shape, self.quick_shape, self.pool = full_shape, quick_shape, pool
        self.mix_from = mix_from
        mix = dict(MIX if mix is None else mix)
        total = sum(mix.values())
        # the mix scaled to the batch (the torso sources take what rounding leaves)
        self.mix = {k: int(v * batch // total) for k, v in mix.items() if k not in ("full", "quick")}
        rest = batch - sum(self.mix.values())
        self.mix = {"quick": rest // 2, "full": rest - rest // 2, **self.mix}
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _slices(self, kind: str, seed: int) -> np.ndarray:
        key = (kind, seed)
        if key not in self._cache:
            if kind in ("full", "quick"):
                shape = self.full_shape if kind == "full" else self.quick_shape
                hu = make_phantom(shape, seed=seed)
            else:
                hu = make_volume(kind, FAMILY_SHAPES[seed % 2], seed=seed)
            unit = hu_to_unit(np.moveaxis(hu, 2, 0))  # (Z, X, Y) in [0, 1]
            keep = unit[(unit > 0.01).mean(axis=(1, 2)) >= 0.05]
            self._cache[key] = (2 * keep - 1).astype(np.float32)
        return self._cache[key]

    def seeds(self, step: int, kind: str) -> list[int]:
        if kind in ("full", "quick"):
            base = (TRAIN_SEED if kind == "full" else QUICK_SEED) + SLIDE * (step // REFRESH)
            return list(range(base, base + self.pool))
        base = SPLITS["train"] + FAMILY_SLIDE * (step // REFRESH)
        return list(range(base, base + FAMILY_POOL))

    def kinds(self, step: int) -> list[str]:
        """The source of each slice of step `step`'s batch."""
        if step < self.mix_from:
            return ["quick"] * self.n_quick + ["full"] * (self.batch - self.n_quick)
        return [k for k, n in self.mix.items() for _ in range(n)]

    def __call__(self, step: int, generator: torch.Generator) -> dict:
        kinds = self.kinds(step)
        live = {(k, s) for k in set(kinds) for s in self.seeds(step, k)}
        for key in [k for k in self._cache if k not in live]:
            del self._cache[key]
        out = []
        for kind in kinds:
            seeds = self.seeds(step, kind)
            vol = self._slices(kind, seeds[int(torch.randint(len(seeds), (1,), generator=generator))])
            out.append(random_crop(vol, generator))
        return {"x": torch.stack(out)[:, None]}


def prior_loss(model: torch.nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return diffusion_loss(model, PATH, batch["x"], generator=generator)


def train_prior(out_dir: str | Path, steps: int, resume_file: str | Path | None = None, progress: bool = True,
                **changes) -> dict:
    """Train (or resume) the prior in `out_dir` up to `steps` optimizer steps in total; return the trainer's report.

    The run goes on from `out_dir/checkpoint`, or from `resume_file` where that is further along (default: this
    checkout's `training/ct-prior.resume.safetensors`, when there is one). `changes` replace fields of RECIPE.
    """
    recipe = replace(RECIPE, **changes)
    resume_run(PRIOR_NAME, out_dir, resume_file)
    torch.manual_seed(recipe.seed)
    model = prior_model()
    config = recipe.train_config(out_dir, steps=steps, progress=progress)
    trainer = Trainer(model, prior_loss, SliceData(recipe.batch), config)
    return {**trainer.train(), "params": n_params(model)}


def export_prior_resume(out_dir: str | Path, file: str | Path | None = None) -> Path:
    """Pack `out_dir/checkpoint` into `file` (default: this checkout's `training/ct-prior.resume.safetensors`)."""
    return export_run(PRIOR_NAME, out_dir, file)


@torch.no_grad()
def denoise_psnr(model: torch.nn.Module, ts: tuple[float, ...] = (0.05, 0.2, 0.5), n: int = 16,
                 seed: int = 100) -> dict[float, float]:
    """PSNR (dB, [-1000, 1000] HU window) of the one-step x0 estimate from x_t on validation slices."""
    from ditlab.medical.models import SlicePrior

    vol = hu_to_unit(np.moveaxis(make_phantom((128, 128, 64), seed=seed), 2, 0))
    x = torch.from_numpy(vol[np.linspace(8, 56, n).astype(int)].astype(np.float32))
    prior = SlicePrior(model.eval(), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    out = {}
    for t in ts:
        x0 = prior.x0(SlicePrior.to_path(x, t, torch.randn(x.shape, generator=g)), t).clamp(0, 1)
        out[t] = float(np.mean([psnr(a, b, window=(0.0, 1.0)) for a, b in zip(x0, x, strict=True)]))  # per slice
    return out


MODEL_CARD = """# ct-prior: a 2D DiT prior over axial CT slices

**What it is.** The prior of `ditlab.medical`'s DiT reconstructions (DDS, DPS, RED-diff): a DiT with
{params:,} parameters (hidden 192, depth 6, 3 heads, patch 4, axial RoPE, 16 x 16-token window attention in
every block), unconditional, over one-channel slices in [-1, 1] (HU window -1000..1000). Flow matching:
x_t = (1 - t) x0 + t eps, velocity target, logit-normal t (mean -0.4, std 1.2). Slices of any size are
handled in 64 x 64-pixel windows (padded with air to a multiple of 64; windows shifted at random per call).

**Data.** Generated here, seeded, no external data. Steps 0-{mix_from}: axial slices of
`ditlab.medical.data.make_phantom` torso phantoms (ellipsoids with z-coherence, 3% smooth texture, low-contrast
lesions), 64 x 64 crops of 128 x 128 x 64 volumes and whole slices of 64 x 64 x 32 volumes, 3:1. From step
{mix_from}: the broad mix, per batch of 32: 8 + 8 torso slices as before and 4 each of the
`ditlab.medical.families` generators: `ellipses` (piecewise-constant random ellipsoids, oblique), `texture`
(random-field textures with sharp edges), `head` (nested shells with folds) and `leaves` (natural-image-like
dead-leaves + 1/f textures in random HU windows), whole 64 x 64 slices and crops of 128 x 128 slices. Training
seeds only (torso from {train_seed} and {quick_seed}, families from 100000): validation seeds 100+, test seeds
0+ and the "user" seeds 50000+ of the fine-tuning benchmark are never trained on.

**Recipe.** `ditlab medical train` (`ditlab.medical.train`): AdamW lr {lr}, {warmup} warm-up steps, batch
{batch}, grad clip {grad_clip}, EMA {ema_decay} (the EMA weights are shipped, float16), bf16 autocast,
{steps} steps so far, {hours:.1f} h of training on a 2-core CPU (1-2 torch threads), in resumable chunks
across sessions.

**Metrics.** One-step denoising x0 PSNR on 16 validation slices (seed 100, 128 x 128):
{denoise}. Reconstruction figures are in BENCHMARKS.md (`ditlab medical benchmark`).

**Limits.** Trained only on synthetic volumes: it knows their grammar (ellipses, textures, shells, lesions),
not real anatomy; on real scans expect it to be no better than the classical baselines: the reconstructions'
safeguard checks every result against the measurements and backs off to TV where it is less consistent than
the noise allows, and fine-tuning (`ditlab medical finetune`) adapts it to a folder of your own scans.
CPU-trained for hours, not days: a weak prior by the field's standards.

**Files.** `config.json` + `model.safetensors` (float16, sha256 in `../SHA256SUMS`).
"""


def package_prior(out_dir: str | Path) -> dict:
    """Write the EMA weights of `out_dir/checkpoint` as the packaged `ct-prior` with its card and sha256."""
    model = prior_model()
    state = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME, model, ema=True)
    model.eval()
    t0 = time.perf_counter()
    den = denoise_psnr(model)
    seconds = time.perf_counter() - t0
    card = MODEL_CARD.format(
        **{**RECIPE.to_dict(), "steps": state["step"]}, params=n_params(model), train_seed=TRAIN_SEED,
        quick_seed=QUICK_SEED, hours=state.get("elapsed_s", 0) / 3600, mix_from=MIX_FROM,
        denoise=", ".join(f"t={t}: {p:.1f} dB" for t, p in den.items()))
    written = package(model, PRIOR_NAME, "ditlab.medical", card, dtype=torch.float16)
    return {**written, "step": state["step"], "denoise_psnr": den, "eval_seconds": seconds}
