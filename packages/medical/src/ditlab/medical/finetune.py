"""Fine-tuning the CT slice prior on a user's own reconstructed scans: a small adapter, on their own machine.

`finetune(folder, adapter)` reads every volume of a folder (NIfTI files, DICOM series sub-folders), checks them
(at least `MIN_VOLUMES`, finite voxels; in-plane spacings that differ by more than `SPACING_TOLERANCE` are
resampled to the finest one, so a millimetre means the same to the prior in every scan), and trains a
parameter-efficient adapter (`ditlab.core.training.peft`: DiffFit biases and gates plus LoRA rank 8 on the
attention and MLP) on 64 x 64 crops of their axial slices, with the prior's own flow-matching loss. The adapter
file (a few hundred KB) names the prior it belongs to by its weights' sha256; `load_prior(adapter=...)`
refuses it on any other.

Resumable: the run keeps a checkpoint in `<adapter>.run/` (every `CHECKPOINT_EVERY` steps), and the same
command goes on from it; the folder also records which scans the run was started on, and a run on other
scans is refused rather than mixed. The adapter is written atomically at the end and the run folder removed;
a run stopped by its time budget (`minutes`) writes the adapter too and keeps the folder, so that the same call
goes on to the full step count. Runs too short for the EMA (decay^steps > 0.05) save the trained weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import zoom

from ditlab.core.errors import InputError
from ditlab.core.files import write_json
from ditlab.core.training import Recipe, Trainer
from ditlab.core.training.peft import PeftConfig, apply_peft, parameter_counts, save_adapter
from ditlab.medical.io import NIFTI_SUFFIXES, Volume, load_volume
from ditlab.medical.models import PATH, TILE, load_prior, prior_identity, random_crop
from ditlab.medical.operators import hu_to_unit

MIN_VOLUMES = 2
SPACING_TOLERANCE = 0.05  # relative difference of in-plane spacings that is resampled away
CHECKPOINT_EVERY = 50
RECIPE = Recipe(batch=16, lr=1e-3, steps=400, warmup=20, ema_decay=0.99, grad_clip=1.0, precision="bf16",
                checkpoint_every=CHECKPOINT_EVERY, log_every=10)
"""The fine-tuning recipe: 400 steps of 16 crops (about 6 minutes on a 2-core CPU with bf16)."""
PEFT = PeftConfig(method="difffit+lora", rank=8)
Progress = Callable[[int, int, float], None] | None  # (step, total, loss)


@dataclass
class Scans:
    """The user's scans as training slices: (N, H, W) arrays in [-1, 1], one per volume, and what was done."""

    slices: list[np.ndarray]
    sources: list[str]
    spacing: float  # the in-plane spacing (mm) every volume has after resampling
    resampled: list[str]  # sources that were resampled in-plane

    @property
    def n_slices(self) -> int:
        return sum(len(s) for s in self.slices)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.slices:
            h.update(np.ascontiguousarray(s[:, ::8, ::8]).tobytes())
        return h.hexdigest()


def scan_paths(folder: str | Path) -> list[Path]:
    """The volumes of a folder: NIfTI files and sub-folders (DICOM series), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder of scans: {folder}")
    paths = [p for p in sorted(folder.iterdir())
             if p.is_dir() or p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)]
    if not paths:
        raise InputError(f"{folder} holds no scans; expected at least {MIN_VOLUMES} volumes (.nii / .nii.gz files "
                         "or DICOM series folders)")
    return paths


def prepare_scans(volumes: list[Volume]) -> Scans:
    """Check the volumes and turn them into training slices (see the module docstring)."""
    if len(volumes) < MIN_VOLUMES:
        raise InputError(f"fine-tuning needs at least {MIN_VOLUMES} volumes, got {len(volumes)}; expected a folder "
                         "of several reconstructed scans of the same kind")
    inplane = [min(v.spacing[0], v.spacing[1]) for v in volumes]
    target = min(inplane)
    slices, resampled = [], []
    for v in volumes:
        if not np.isfinite(v.data).all():
            raise InputError(f"{v.source}: non-finite voxels (NaN or Inf); expected a finite volume in HU")
        data = v.data
        fx, fy = v.spacing[0] / target, v.spacing[1] / target
        if abs(fx - 1) > SPACING_TOLERANCE or abs(fy - 1) > SPACING_TOLERANCE:
            data = zoom(data, (fx, fy, 1), order=1)
            resampled.append(v.source)
        unit = hu_to_unit(np.moveaxis(data, 2, 0))  # (Z, X, Y) in [0, 1]
        unit = unit[(unit > 0.01).mean(axis=(1, 2)) >= 0.05]  # skip slices with almost no body
        if len(unit) == 0:
            raise InputError(f"{v.source}: no axial slice holds more than 5% tissue in the [-1000, 1000] HU window; "
                             "expected a reconstructed scan in HU")
        ph, pw = max(0, TILE - unit.shape[1]), max(0, TILE - unit.shape[2])
        if ph or pw:  # slices smaller than a window: padded with air
            unit = np.pad(unit, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        slices.append((2 * unit - 1).astype(np.float32))
    return Scans(slices, [v.source for v in volumes], float(target), resampled)


def load_scans(folder: str | Path) -> Scans:
    """Read and check the scans of a folder (`scan_paths`, `prepare_scans`)."""
    return prepare_scans([load_volume(p) for p in scan_paths(folder)])


class ScanCrops:
    """`data(step, generator) -> {"x": (B, 1, 64, 64)}`: random crops of the scans' slices (left-right flips)."""

    def __init__(self, scans: Scans, batch: int) -> None:
        self.scans, self.batch = scans, batch

    def __call__(self, step: int, generator: torch.Generator) -> dict:
        vols = self.scans.slices
        crops = [random_crop(vols[int(torch.randint(len(vols), (1,), generator=generator))], generator)
                 for _ in range(self.batch)]
        return {"x": torch.stack(crops)[:, None]}


def _loss(model: torch.nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    from ditlab.core.diffusion import diffusion_loss

    return diffusion_loss(model, PATH, batch["x"], generator=generator)


def run_folder(adapter: str | Path) -> Path:
    """Where the fine-tuning run of `adapter` keeps its checkpoint: `<adapter>.run/`."""
    adapter = Path(adapter)
    return adapter.with_name(adapter.name + ".run")


def finetune(scans: Scans | str | Path, adapter: str | Path, steps: int | None = None,
             weights: str | Path | None = None, minutes: float | None = None, progress: Progress = None,
             show_bar: bool = False, **changes) -> dict:
    """Fine-tune the prior (packaged, or `weights`) on `scans` (a folder, or `Scans`) for `steps` optimizer
    steps (default `RECIPE.steps`) or until `minutes` have passed, and write the adapter file; resumes an
    interrupted run of the same adapter path. `changes` replace RECIPE fields. Returns a report."""
    adapter = Path(adapter)
    if not adapter.name.endswith(".safetensors"):
        raise InputError(f"the adapter file must end with .safetensors, got {adapter}")
    if not isinstance(scans, Scans):
        scans = load_scans(scans)
    recipe = replace(RECIPE, **changes)
    steps = int(recipe.steps if steps is None else steps)
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if recipe.ema_decay ** steps > 0.05:  # too short a run for the EMA to leave the base: save the weights
        recipe = replace(recipe, ema_decay=0.0)
    name, digest = prior_identity(weights)
    run = run_folder(adapter)
    stamp = {"scans": scans.fingerprint(), "base_sha256": digest, "sources": scans.sources}
    if (run / "scans.json").is_file():
        old = json.loads((run / "scans.json").read_text())
        if old.get("scans") != stamp["scans"] or old.get("base_sha256") != digest:
            raise InputError(f"{run} holds a fine-tuning run started on other scans or another prior "
                             f"({len(old.get('sources', []))} scans); delete it, or write the adapter elsewhere")
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "scans.json", stamp)
    torch.manual_seed(recipe.seed)
    model = apply_peft(load_prior(weights), PEFT)
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> bool:
        if progress is not None:
            progress(step, steps, loss)
        return minutes is not None and time.perf_counter() - t0 > 60 * minutes

    trainer = Trainer(model, _loss, ScanCrops(scans, recipe.batch),
                      recipe.train_config(run, steps=steps, progress=show_bar), on_step=on_step)
    report = trainer.train()
    trainable, total = parameter_counts(model)
    save_adapter(trainer.ema_model, adapter, base_digest=digest, base_name=name, config=PEFT)
    if report["step"] >= steps:  # stopped by `minutes`: the run folder stays, and the same call goes on
        shutil.rmtree(run, ignore_errors=True)
    return {**report, "adapter": str(adapter), "adapter_bytes": adapter.stat().st_size, "base": name,
            "base_sha256": digest, "trainable_params": trainable, "params": total, "volumes": len(scans.slices),
            "slices": scans.n_slices, "resampled": scans.resampled, "spacing_mm": scans.spacing,
            "seconds": time.perf_counter() - t0, "finished": report["step"] >= steps}
