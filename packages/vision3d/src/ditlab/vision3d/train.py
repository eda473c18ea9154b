"""The recipes that train the shipped vision3d networks (`ditlab vision3d train`), in resumable chunks.

- `shape-dit`: PointDiT (DiT-3D), one class-conditional network for the five shape classes.
- `shape-pointnet`: the PointNet-style baseline, its parameter count matched to `shape-dit`'s, trained on the same
  batches for the same wall-clock time (`--seconds` = the DiT run's `elapsed_s`, both at 1 torch thread).
- `lidar-dit`: RangeDiT on 64 x 1024 range images of the procedural driving world, one network for generation,
  sector completion and 16 -> 64 beam densification (a known-pixel mask per sample).
- `lidar-pointnet`: the PointNet-style baseline for LiDAR generation, on `LIDAR_POINTS` points drawn from each scan.

Data: train seeds only. Shapes: `TRAIN_SHAPES` per class (`ditlab.vision3d.data.cached_dataset`, 2048 Poisson-disk
points each); scans: `TRAIN_SCANS` urban scans (`ditlab.vision3d.scenes`). Flow matching (velocity target, core's
`FlowMatching`), AdamW, EMA, bf16 autocast. Checkpoints: `out/checkpoint` (float32 with AdamW moments); between
sessions a run travels as one half-precision file `training/<name>.resume.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ditlab.core.diffusion import FlowMatching
from ditlab.core.diffusion.losses import diffusion_loss, masked_mean
from ditlab.core.errors import InputError
from ditlab.core.training import Recipe, Trainer, export_resume, import_resume, resume_path
from ditlab.core.training.trainer import CHECKPOINT_NAME
from ditlab.vision3d.data import CLASSES, cached_dataset
from ditlab.vision3d.io import RangeSpec, from_range_image
from ditlab.vision3d.models import PointDiT, PointNetDiffusion, RangeDiT, matched_pointnet, n_params
from ditlab.vision3d.pipeline import decode_scan, encode_scan
from ditlab.vision3d.scenes import cached_scans

TRAIN_SHAPES = 600
"""Training shapes per class (train seeds 0 .. 599)."""
DATA_SCALE = 4.0
"""Canonical coordinates (longest side 1) times this are what the shape networks see: a per-axis std near 1."""
TRAIN_SCANS = 1000
"""Training scans (urban style, train seeds 0 .. 999)."""
LIDAR_POINTS = 4096
"""Points per scan of the LiDAR point baseline (drawn at random from a training scan's points each step)."""
LIDAR_SCALE = 0.1
"""Metres times this are what the LiDAR point baseline sees."""
MASK_MODES = {"generate": 0.3, "complete": 0.35, "densify": 0.35}
"""How often each conditioning appears in RangeDiT's training batches: nothing known, all but a random azimuth
sector of 30-180 deg known, every 4th beam known."""
PATH = FlowMatching()


@dataclass(frozen=True)
class Spec:
    """One shipped network: how to build it and what it trains on."""

    name: str
    build: object
    kind: str  # "shape" | "lidar"
    recipe: Recipe = field(default_factory=lambda: RECIPE)


RECIPE = Recipe(batch=16, lr=2e-4, warmup=200, ema_decay=0.999, grad_clip=1.0, precision="bf16",
                checkpoint_every=100, log_every=25)
SHAPE_CONFIG = {"num_classes": len(CLASSES), "classes": CLASSES, "data_scale": DATA_SCALE}


def _shape_dit() -> PointDiT:
    return PointDiT(**SHAPE_CONFIG)


def _shape_pointnet() -> PointNetDiffusion:
    return matched_pointnet(n_params(_shape_dit()), **SHAPE_CONFIG)


LIDAR_RECIPE = replace(RECIPE, batch=8)


def _lidar_dit() -> RangeDiT:
    return RangeDiT()


def _lidar_pointnet() -> PointNetDiffusion:
    return matched_pointnet(n_params(_lidar_dit()), num_classes=0, data_scale=LIDAR_SCALE)


SPECS = {
    "shape-dit": Spec("shape-dit", _shape_dit, "shape"),
    "shape-pointnet": Spec("shape-pointnet", _shape_pointnet, "shape"),
    "lidar-dit": Spec("lidar-dit", _lidar_dit, "lidar", LIDAR_RECIPE),
    "lidar-pointnet": Spec("lidar-pointnet", _lidar_pointnet, "lidar-points", LIDAR_RECIPE),
}


def spec(name: str) -> Spec:
    if name not in SPECS:
        raise InputError(f"unknown network {name!r}; trainable: {sorted(SPECS)}")
    return SPECS[name]


def build(name: str) -> torch.nn.Module:
    return spec(name).build()


class ShapeData:
    """`data(step, generator) -> {"x0", "class_labels"}`: a class-balanced batch of training shapes, scaled."""

    def __init__(self, batch: int, count: int = TRAIN_SHAPES) -> None:
        self.batch = batch
        self.pool = torch.from_numpy(np.stack([cached_dataset(c, "train", count) for c in CLASSES]))  # (K, M, N, 3)

    def __call__(self, step: int, generator: torch.Generator) -> dict:
        k, m = self.pool.shape[:2]
        labels = torch.arange(self.batch) % k
        labels = labels[torch.randperm(self.batch, generator=generator)]
        idx = torch.randint(0, m, (self.batch,), generator=generator)
        return {"x0": self.pool[labels, idx] * DATA_SCALE, "class_labels": labels}


def shape_loss(model: torch.nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return diffusion_loss(model, PATH, batch["x0"], {"class_labels": batch["class_labels"]}, generator=generator)


def training_masks(batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 1, H, W) known-pixel masks drawn per sample from `MASK_MODES`."""
    masks = torch.zeros(batch, 1, height, width)
    p = torch.tensor(list(MASK_MODES.values()))
    for j, mode in enumerate(torch.multinomial(p, batch, replacement=True, generator=generator).tolist()):
        if mode == 1:
            span = int(width * (30 + 150 * torch.rand(1, generator=generator).item()) / 360)
            start = int(torch.randint(0, width, (1,), generator=generator))
            masks[j, 0] = 1
            masks[j, 0, :, (start + torch.arange(span)) % width] = 0
        elif mode == 2:
            masks[j, 0, ::4] = 1
    return masks


class ScanData:
    """`data(step, generator)`: training scans as network values, rolled by a random azimuth and mirrored
    (y -> -y) at random, with known-pixel masks (`training_masks`); or, for the point baseline (`points` > 0),
    `points` of each scan's points, scaled by `LIDAR_SCALE`."""

    def __init__(self, batch: int, count: int = TRAIN_SCANS, points: int = 0) -> None:
        self.batch, self.points = batch, points
        self.spec = RangeSpec()
        depth, inten = cached_scans("train", count)
        self.pool = torch.from_numpy(np.stack([encode_scan(d, i, self.spec) for d, i in zip(depth, inten,
                                                                                              strict=True)]))

    def __call__(self, step: int, generator: torch.Generator) -> dict:
        idx = torch.randint(0, len(self.pool), (self.batch,), generator=generator)
        x = self.pool[idx]
        w = x.shape[-1]
        shifts = torch.randint(0, w, (self.batch,), generator=generator).tolist()
        flips = (torch.rand(self.batch, generator=generator) < 0.5).tolist()
        x = torch.stack([torch.roll(xi.flip(-1) if f else xi, s, dims=-1) for xi, s, f in zip(x, shifts, flips,
                                                                                            strict=True)])
        if self.points:
            return {"x0": torch.stack([self._points(xi, generator) for xi in x])}
        return {"x0": x, "known_mask": training_masks(self.batch, x.shape[2], w, generator)}

    def _points(self, values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pts = from_range_image(decode_scan(values.numpy(), self.spec)[0], spec=self.spec).points
        pick = torch.randint(0, len(pts), (self.points,), generator=generator)
        return torch.from_numpy(pts)[pick] * LIDAR_SCALE


def range_loss(model: torch.nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Flow matching on the unknown pixels (the known ones are given and kept as they are when sampling)."""
    x0, m = batch["x0"], batch["known_mask"]
    b = x0.shape[0]
    t = PATH.sample_t(b, generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    out = model(PATH.interpolate(x0, eps, t), PATH.model_time(t), known=x0, known_mask=m)
    err = (out.float() - PATH.target(x0, eps, t).float()) ** 2
    return masked_mean(err, (1 - m).expand_as(err))


def point_loss(model: torch.nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    return diffusion_loss(model, PATH, batch["x0"], generator=generator)


def train(name: str, out_dir: str | Path, steps: int, resume_file: str | Path | None = None, progress: bool = True,
          seconds: float | None = None, **changes) -> dict:
    """Train (or resume) network `name` in `out_dir` up to `steps` optimizer steps in total, or until `seconds`
    of training (counted over resumed sessions) have passed."""
    s = spec(name)
    recipe = replace(s.recipe, **changes)
    file = Path(resume_file) if resume_file is not None else resume_path(name)
    if resume_file is not None or file.is_file():
        import_resume(file, Path(out_dir) / CHECKPOINT_NAME)
    torch.manual_seed(recipe.seed)
    model = build(name)
    if s.kind == "shape":
        data, loss = ShapeData(recipe.batch), shape_loss
    elif s.kind == "lidar":
        data, loss = ScanData(recipe.batch), range_loss
    else:
        data, loss = ScanData(recipe.batch, points=LIDAR_POINTS), point_loss
    config = recipe.train_config(out_dir, steps=steps, progress=progress)
    trainer = Trainer(model, loss, data, config)
    if seconds is not None:
        trainer.on_step = lambda step, value: trainer.elapsed_s >= seconds
    report = trainer.train()
    return {**report, "params": n_params(model)}


def export_run(name: str, out_dir: str | Path, file: str | Path | None = None) -> Path:
    """Pack `out_dir/checkpoint` into `file` (default: this checkout's `training/<name>.resume.safetensors`)."""
    return export_resume(Path(out_dir) / CHECKPOINT_NAME, file or resume_path(name))
