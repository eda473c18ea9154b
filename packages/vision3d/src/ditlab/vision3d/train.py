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

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ditlab.core.diffusion import FlowMatching
from ditlab.core.diffusion.losses import diffusion_loss, masked_mean
from ditlab.core.errors import InputError
from ditlab.core.training import Recipe, Trainer, resume_run
from ditlab.core.training.trainer import CHECKPOINT_NAME
from ditlab.vision3d.data import CLASSES, cached_dataset
from ditlab.vision3d.io import from_range_image
from ditlab.vision3d.models import PointDiT, PointNetDiffusion, RangeDiT, matched_pointnet, n_params
from ditlab.vision3d.pipeline import decode_scan, encode_scan
from ditlab.vision3d.scenes import SensorSpec, cached_scans

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


RECIPE = Recipe(batch=16, lr=2e-4, warmup=200, ema_decay=0.999, grad_clip=1.0, precision="auto",
                checkpoint_every=100, log_every=25)
SHAPE_CONFIG = {"num_classes": len(CLASSES), "classes": CLASSES, "data_scale": DATA_SCALE}


def _shape_dit() -> PointDiT:
    return PointDiT(**SHAPE_CONFIG)


def _shape_pointnet() -> PointNetDiffusion:
    return matched_pointnet(n_params(_shape_dit()), **SHAPE_CONFIG)


LIDAR_RECIPE = replace(RECIPE, batch=8, checkpoint_every=25)


PIXEL_HEAD = 32
"""Channels of RangeDiT's full-resolution head (`models.PixelHead`)."""


def _lidar_dit() -> RangeDiT:
    return RangeDiT(pixel_head=PIXEL_HEAD)


def _lidar_pointnet() -> PointNetDiffusion:
    # matched to the transformer without its pixel head (the head is ~1% of the parameters and came later)
    return matched_pointnet(n_params(RangeDiT()), num_classes=0, data_scale=LIDAR_SCALE)


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
        self.spec = SensorSpec().range_spec()
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


WARM_START = "warm_start.json"
EMA_START_SHARE = 0.05
"""A second stage ships its EMA weights only once they hold at most this share of where the stage started."""
PRECISION_NOTE = {"bf16": "bf16 autocast", "no": "fp32",
                  "auto": "bf16 autocast where the CPU computes bf16 natively (avx512_bf16, AMX), else fp32"}


def warm_start(model: torch.nn.Module, weights: str | Path, out_dir: str | Path) -> dict:
    """Start `model` from trained weights (a packaged name or a folder): every tensor of those weights must fit
    the model; the model's own new modules (such as a zero-initialised head added since) keep their initial
    values. What it started from is recorded in `out_dir/warm_start.json` for the model card."""
    from ditlab.core.weights import resolve, sha256_file, weights_file
    from ditlab.vision3d.pipeline import load_model

    folder, digest = resolve(weights, "ditlab.vision3d")
    source = load_model(weights)  # a packaged name's recorded sha256 is checked here; it is the one recorded below
    own, theirs = model.state_dict(), source.state_dict()
    unfit = [k for k in theirs if k not in own or own[k].shape != theirs[k].shape]
    if unfit:
        raise InputError(f"{weights} does not fit {type(model).__name__}: {unfit[:4]}")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in theirs.items()}})
    card = folder / "README.md"
    paragraphs = card.read_text().split("\n\n") if card.is_file() else []
    recipe = next((p.replace("\n", " ") for p in paragraphs if p.startswith("**Recipe.**")), "")
    record = {"from": str(weights), "sha256": digest or sha256_file(weights_file(folder)),
              "new": sorted({k.split(".")[0] for k in own if k not in theirs}), "recipe": recipe}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / WARM_START).write_text(json.dumps(record, indent=1))
    return record


def train(name: str, out_dir: str | Path, steps: int, resume_file: str | Path | None = None, progress: bool = True,
          seconds: float | None = None, init_from: str | Path | None = None, **changes) -> dict:
    """Train (or resume) network `name` in `out_dir` up to `steps` optimizer steps in total, or until `seconds`
    of training (counted over resumed sessions) have passed. `init_from`: start a new run from those trained
    weights (`warm_start`) instead of from scratch."""
    s = spec(name)
    recipe = replace(s.recipe, **changes)
    resume_run(name, out_dir, resume_file)
    torch.manual_seed(recipe.seed)
    model = build(name)
    if init_from is not None and not (Path(out_dir) / CHECKPOINT_NAME).exists():
        warm_start(model, init_from, out_dir)
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


# ----------------------------------------------------------------------------------------------
# Validation and packaging
# ----------------------------------------------------------------------------------------------

SHAPE_CANDIDATES = ((8, 1.0), (16, 1.0), (16, 2.0))
"""(steps, guidance) settings validation chooses among for the shape networks: few steps, for the speed goal (100
shapes in 30 s on a 2-core CPU)."""
LIDAR_CANDIDATES = (8, 16, 24)
VAL_SHAPES = 12
"""Validation shapes per class (validation seeds) the settings are chosen on."""
VAL_SCANS = 8


def validate_shapes(model: torch.nn.Module, steps: int, guidance: float, n: int = VAL_SHAPES) -> dict[str, float]:
    """1-NNA-CD (%, unit-box normalisation) per class of `n` generated shapes against `n` validation shapes, their
    mean, and the mean MMD-CD: what the settings are chosen on (1-NNA first, lower is better, 50 ideal; MMD breaks
    ties, which matter while a network is far from the data and every setting scores 100%)."""
    from ditlab.vision3d.metrics import evaluate_sets
    from ditlab.vision3d.pipeline import ShapeGenerator

    gen = ShapeGenerator(steps=steps, guidance=guidance, _model=model)
    out, mmd = {}, []
    for name in CLASSES:
        refs = cached_dataset(name, "val", 50)[:n]
        clouds = gen.generate(name, n, seed=12345)
        scores = evaluate_sets(clouds, refs, normalisation="unit_box", metrics=("cd",))
        out[name] = 100 * scores["1-NNA-CD"]
        mmd.append(scores["MMD-CD"])
    out["mean"] = float(np.mean([out[c] for c in CLASSES]))
    out["mmd"] = float(np.mean(mmd))
    return out


def validate_lidar(model: RangeDiT, steps: int, n: int = VAL_SCANS) -> dict[str, float]:
    """Chamfer distance (m^2) of the generated points against the truth, sector completion (90 deg) and 16 -> 64
    densification, on `n` validation scans (lower is better)."""
    from ditlab.vision3d.metrics import chamfer_distance
    from ditlab.vision3d.pipeline import LidarGenerator, sector_columns

    gen = LidarGenerator(steps=steps, _model=model)
    spec = gen.spec
    depth, inten = cached_scans("val", 16)
    out = {"complete": [], "densify": []}
    for j in range(n):
        truth = from_range_image(depth[j], inten[j], spec)
        cols = sector_columns(spec.width, 45.0 + 40 * j, 135.0 + 40 * j)
        done = gen.complete(truth, (45.0 + 40 * j, 135.0 + 40 * j), seed=j)
        want = from_range_image(np.where(cols, depth[j], 0), spec=spec).points
        out["complete"].append(chamfer_distance(done.generated.points, want))
        sparse = truth.select(truth.ring % 4 == 0)
        dense = gen.densify(sparse, seed=j)
        rows = np.arange(spec.height)[:, None] % 4 != 0
        want = from_range_image(np.where(rows, depth[j], 0), spec=spec).points
        out["densify"].append(chamfer_distance(dense.generated.points, want))
    return {k: float(np.mean(v)) for k, v in out.items()}


MODEL_CARD = """# {name}: {what}

**What it is.** {arch} Parameters: {params:,}. Flow matching (velocity target), Euler sampling.

**Data.** Generated here, seeded, no external data: {data} Validation and test seeds are never trained on; the
sampling settings below were chosen on validation seeds only.

**Recipe.** {stage}`ditlab vision3d train {name}{init}` (`ditlab.vision3d.train`): AdamW lr {lr}, {warmup} warm-up
steps, batch {batch}, grad clip {grad_clip}, EMA {ema_decay} ({shipped}, float16), {precision},
{steps} steps, {hours:.2f} h of wall-clock training at 1 torch thread on a 2-core CPU machine{budget}.

**Validation.** {val}

Benchmark figures on held-out test data are in BENCHMARKS.md (`ditlab vision3d benchmark`).

**Limits.** Small and CPU-trained for an hour or two: far from the field's GPU-trained models (LION trains ~550
GPU-hours per class). {limits}

**Files.** `config.json` + `model.safetensors` (float16, sha256 in `../SHA256SUMS`).
"""

SHAPE_DATA = (f"`ditlab.vision3d.data`, {TRAIN_SHAPES} procedural shapes per class ({', '.join(CLASSES)}; open3d "
              "primitives with random proportions and parts), 2048 Poisson-disk points each, canonical frame (longest "
              f"side 1, y up), times {DATA_SCALE}.")
LIDAR_DATA = (f"`ditlab.vision3d.scenes`, {TRAIN_SCANS} urban scans of procedural streets (buildings, kerbs, cars, "
              "poles, trees) ray-cast as a 64-beam, 1024-column LiDAR (fov +3 to -25 deg, 1.73 m high), range noise "
              "1 cm and 1-3% ray drop; rolled in azimuth and mirrored at random.")
WHAT = {
    "shape-dit": ("class-conditional point-cloud shapes (DiT-3D)",
                  "PointDiT: DiT-3D on core's DiT (voxels 32^3, 3D patches 4^3 -> 512 tokens, 3D sin-cos positions, "
                  "window attention 4^3 tokens in all blocks but every 4th, trilinear devoxelisation, point-wise "
                  "head), class labels with classifier-free guidance.", SHAPE_DATA,
                  "Five procedural classes only. Trained on 2048 points a shape: other counts run, but were never seen "
                  "in training. At this training budget the clouds are fuzzy (points scattered about the surface; "
                  "see the benchmark)."),
    "shape-pointnet": ("the same-budget PointNet baseline for shapes",
                       "A PointNet-style point diffusion network (shared per-point MLPs, max-pooled global feature, "
                       "FiLM conditioning), parameters matched to shape-dit, trained next to it on the same batches "
                       "for the same wall-clock time.", SHAPE_DATA, "A baseline: not meant for use."),
    "lidar-dit": ("64-beam LiDAR range images: generation, sector completion, 16 -> 64 densification",
                  "RangeDiT: core's DiT on 2D tokens of 4 x 16 pixels (depth, log-scaled as LiDM, and intensity), "
                  "azimuth-periodic positions, window attention, known pixels and their mask as input channels, "
                  f"then a full-resolution pixel head ({PIXEL_HEAD} channels, 3 convolutions over 9 x 9 pixels, "
                  "circular in azimuth) that corrects the transformer's velocity.",
                  LIDAR_DATA, "Trained on synthetic streets only: real scans (KITTI, nuScenes) differ in sensor, "
                  "ray drop and scene content; densification assumes the sparse beams are every 4th of the sensor. "
                  "At this budget generated pixels are noisy: a bird's-eye view of a generated scan, or of a "
                  "completed sector, shows scattered returns about the right ranges, not walls, kerbs and ground "
                  "rings; densification is less accurate than linear interpolation between the known beams."),
    "lidar-pointnet": ("the PointNet baseline for LiDAR generation",
                       f"A PointNet-style point diffusion network on {LIDAR_POINTS} points per scan (metres times "
                       f"{LIDAR_SCALE}), parameters matched to lidar-dit, trained for the same wall-clock time.",
                       LIDAR_DATA, "A baseline: not meant for use."),
}


def package_run(name: str, out_dir: str | Path) -> dict:
    """Choose the sampling settings on validation data, then write the EMA weights of `out_dir/checkpoint` as
    packaged `name` with its card and sha256. A second stage (`warm_start`) whose EMA still holds more than
    `EMA_START_SHARE` of the first stage's weights ships its final weights instead: after n steps the average keeps
    decay^n of where it started (57% after 560 steps at 0.999), new zero-initialised modules included."""
    import time

    from ditlab.core.training import load_checkpoint
    from ditlab.core.weights import package

    s = spec(name)
    model = build(name)
    warm = Path(out_dir) / WARM_START
    steps_done = json.loads((Path(out_dir) / CHECKPOINT_NAME / "state.json").read_text())["step"]
    use_ema = not (warm.is_file() and s.recipe.ema_decay**steps_done > EMA_START_SHARE)
    state = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME, model, ema=use_ema)
    model.eval()
    t0 = time.perf_counter()
    config = dict(model.config)
    if s.kind == "shape":
        scores = {c: validate_shapes(model, *c) for c in SHAPE_CANDIDATES}
        best = min(scores, key=lambda c: (scores[c]["mean"], scores[c]["mmd"]))
        config.update(sample_steps=best[0], guidance_scale=best[1])
        val = ("1-NNA-CD (%, unit box; 50 ideal) of " f"{VAL_SHAPES} generated vs {VAL_SHAPES} validation shapes per "
               "class, mean over classes (and mean MMD-CD): " + "; ".join(
                   f"{st} steps, guidance {g:g}: {v['mean']:.1f} ({v['mmd']:.4f})" for (st, g), v in scores.items())
               + f". Chosen: {best[0]} steps, guidance {best[1]:g} (per class: "
               + ", ".join(f"{c} {scores[best][c]:.1f}" for c in CLASSES) + ").")
    elif s.kind == "lidar":
        scores = {n: validate_lidar(model, n) for n in LIDAR_CANDIDATES}
        best = min(scores, key=lambda n: scores[n]["complete"] + scores[n]["densify"])
        config.update(sample_steps=best)
        val = (f"Chamfer distance (m^2) of generated vs true points on {VAL_SCANS} validation scans: " + "; ".join(
            f"{n} steps: completion {v['complete']:.3f}, densification {v['densify']:.3f}" for n, v in scores.items())
            + f". Chosen: {best} steps.")
    else:
        scores = {}
        val = f"none: a baseline, sampled with its default {model.config.sample_steps} steps."
    chosen = type(model).from_config({k: v for k, v in config.items() if not k.startswith("_")})
    chosen.load_state_dict(model.state_dict())
    what, arch, data, limits = WHAT[name]
    r = s.recipe
    budget = f", the same {state.get('elapsed_s', 0):.0f} s as its DiT" if "pointnet" in name else ""
    stage, init = "", ""
    shipped = "the EMA weights are shipped" if use_ema else (
        f"the final weights are shipped, not the EMA, which after {steps_done} steps of stage 2 still held "
        f"{100 * s.recipe.ema_decay**steps_done:.0f}% of stage 1's weights")
    if warm.is_file():  # a second stage: say what the first one was
        w = json.loads(warm.read_text())
        first = w["recipe"].removeprefix("**Recipe.** ").rstrip(".")
        new = f"; new modules, zero-initialised: {', '.join(w['new'])}" if w["new"] else ""
        stage = (f"Stage 1: {first}. Stage 2, from those weights (`{w['from']}`, sha256 {w['sha256'][:12]}...{new}): ")
        init = f" --init-from {w['from']}"
        budget += " (stage 2)" if budget else ""
    card = MODEL_CARD.format(name=name, what=what, arch=arch, params=n_params(model), data=data, lr=r.lr,
                             warmup=r.warmup, batch=r.batch, grad_clip=r.grad_clip, ema_decay=r.ema_decay,
                             steps=state["step"], hours=state.get("elapsed_s", 0) / 3600, budget=budget, val=val,
                             stage=stage, init=init, limits=limits, precision=PRECISION_NOTE[r.precision],
                             shipped=shipped)
    written = package(chosen.eval(), name, "ditlab.vision3d", card, dtype=torch.float16)
    return {**written, "step": state["step"], "ema": use_ema, "validation": {str(k): v for k, v in scores.items()},
            "eval_seconds": time.perf_counter() - t0}
