"""Generate shapes and LiDAR scans, complete and densify scans, on the shipped networks.

    from ditlab.vision3d import ShapeGenerator, LidarGenerator
    clouds = ShapeGenerator().generate("chair", n=16)         # (16, 2048, 3), canonical frame (data.CANONICAL)
    lidar = LidarGenerator()
    scans = lidar.generate(4)                                 # [Scan], KITTI-like 64-beam scans
    done = lidar.complete(read_points("scan.bin"), sector=(90, 180))  # regenerate azimuths 90..180 deg
    dense = lidar.densify(read_points("scan16.bin"))          # 16 -> 64 beams

Every sample is seeded on its own ((seed, index) -> its starting noise), so shape i of a call is the same whether
it was drawn in a batch of 1 or of 100. The networks compute in `precision` ("auto": the mode calibrated fastest
on this machine within `MIN_SNR_DB` of fp32, `ditlab.core.accel.auto`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ditlab.core.diffusion import FlowMatching
from ditlab.core.diffusion import sample as core_sample
from ditlab.core.errors import InputError
from ditlab.vision3d.data import CLASSES, check_class
from ditlab.vision3d.io import (
    THRESHOLD,
    PointCloud,
    RangeSpec,
    azimuth_columns,
    exp_depth,
    from_range_image,
    log_depth,
    to_range_image,
)
from ditlab.vision3d.models import PointDiT, PointNetDiffusion, RangeDiT

MODEL_CLASSES = {c.__name__: c for c in (PointDiT, PointNetDiffusion, RangeDiT)}
WEIGHTS = {"shape": "shape-dit", "shape-baseline": "shape-pointnet", "lidar": "lidar-dit",
           "lidar-baseline": "lidar-pointnet"}
MAX_SHAPES = 1000
"""Shapes one call may generate."""
MAX_SHAPE_POINTS = 16384
"""Points per generated shape (the networks were trained on 2048; up to 8x that still gives clean surfaces)."""
MAX_SCANS = 100
"""Scans one call may generate."""
MIN_SNR_DB = 30.0
"""The error bound of precision "auto" for these networks: output SNR against fp32."""
PATH = FlowMatching()


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A packaged network by name (`shape-dit`, `shape-pointnet`, `lidar-dit`; sha256 checked) or a weights folder
    (config.json + model.safetensors), built from the class its config names."""
    from ditlab.core.weights import load_model as core_load
    from ditlab.core.weights import resolve

    folder, _ = resolve(name_or_path, "ditlab.vision3d")
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in MODEL_CLASSES:
        raise InputError(f"{folder}: config.json names class {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    return core_load(MODEL_CLASSES[name], name_or_path, "ditlab.vision3d", device=device)


def sample_noise(shape: tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(
        int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])))


@dataclass
class ShapeGenerator:
    """Class-conditional shape generation with a loaded network (packaged `shape-dit`, or a weights folder).
    `steps` / `guidance` None: the network's own (`sample_steps`, `guidance_scale` of its config, chosen on
    validation shapes); `batch` shapes per network call."""

    weights: str | Path | None = None
    steps: int | None = None
    guidance: float | None = None
    batch: int = 50
    precision: str | None = None
    device: str | torch.device = "cpu"
    _model: torch.nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from ditlab.core.accel.auto import check_precision, default_precision

        self.precision = check_precision(self.precision or default_precision())
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise InputError(f"steps must lie in [1, 1000], got {self.steps}")
        if self.guidance is not None and not 0 <= self.guidance <= 20:
            raise InputError(f"guidance must lie in [0, 20], got {self.guidance}")
        if self.batch < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            model = load_model(self.weights or WEIGHTS["shape"], device=self.device)
            if not isinstance(model, PointDiT | PointNetDiffusion):
                raise InputError(f"{self.weights}: expected shape-generation weights, got {type(model).__name__}")
            self._model = model
        return self._model

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.model.config.classes or CLASSES)

    def generate(self, name: str, n: int = 1, points: int = 2048, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(n, points, 3) float32 clouds of class `name`, in the canonical frame (longest side about 1)."""
        check_class(name)
        if name not in self.classes:
            raise InputError(f"these weights generate {self.classes}, not {name!r}")
        if not 1 <= n <= MAX_SHAPES:
            raise InputError(f"shape count must lie in [1, {MAX_SHAPES}], got {n}")
        if not 16 <= points <= MAX_SHAPE_POINTS:
            raise InputError(f"points per shape must lie in [16, {MAX_SHAPE_POINTS}], got {points}")
        m, cfg = self.model, self.model.config
        label = self.classes.index(name)
        steps = int(self.steps or cfg.sample_steps)
        guidance = float(cfg.guidance_scale if self.guidance is None else self.guidance)
        out = np.empty((n, points, 3), np.float32)
        for lo in range(0, n, self.batch):
            k = min(self.batch, n - lo)
            x_t = torch.stack([sample_noise((points, 3), seed, lo + j) for j in range(k)])
            labels = torch.full((k,), label, dtype=torch.long, device=self.device)
            x0 = core_sample(m, PATH, (k, points, 3), steps=steps, guidance_scale=guidance, x_T=x_t,
                             model_kwargs={"class_labels": labels},
                             uncond_kwargs={"class_labels": torch.full_like(labels, cfg.num_classes)},
                             precision=self.precision)
            out[lo:lo + k] = (x0 / cfg.data_scale).cpu().numpy()
            if progress is not None:
                progress(lo + k, n)
        return out


# ----------------------------------------------------------------------------------------------
# LiDAR
# ----------------------------------------------------------------------------------------------

def encode_scan(depth: np.ndarray, intensity: np.ndarray, spec: RangeSpec) -> np.ndarray:
    """(2, H, W) network values of a range image: log-scaled depth (`io.log_depth`) and intensity in [-1, 1]
    (-1 where there is no return)."""
    d = log_depth(depth, spec)
    i = np.where(d > THRESHOLD, 2 * np.clip(intensity, 0, 1) - 1, -1.0)
    return np.stack([d, i]).astype(np.float32)


def decode_scan(values: np.ndarray, spec: RangeSpec) -> tuple[np.ndarray, np.ndarray]:
    """The depth (metres, 0 = no return) and intensity images of (2, H, W) network values."""
    depth = exp_depth(values[0], spec)
    return depth, np.where(depth > 0, np.clip((values[1] + 1) / 2, 0, 1), 0).astype(np.float32)


def sector_columns(width: int, start_deg: float, end_deg: float) -> np.ndarray:
    """(width,) bool: the columns whose azimuth lies in the sector from `start_deg` to `end_deg`, counter-clockwise
    (degrees in the sensor frame: 0 straight ahead (+x), 90 to the left (+y); the sector may wrap through 180)."""
    for a in (start_deg, end_deg):
        if not np.isfinite(a):
            raise InputError(f"sector angles must be finite degrees, got {start_deg}, {end_deg}")
    span = (end_deg - start_deg) % 360 or (360.0 if end_deg != start_deg else 0.0)
    if span == 0:
        raise InputError(f"the sector from {start_deg} to {end_deg} degrees is empty")
    u = np.arange(width) + 0.5
    azimuth = -(2 * u / width - 1) * 180.0  # the column's centre, as the projection's yaw = -atan2(y, x)
    return (azimuth - start_deg) % 360 < span


def in_view(points: np.ndarray, spec: RangeSpec) -> np.ndarray:
    """(N,) bool: the points within the sensor's vertical field of view (half a row of slack each side) and depth
    range; the projection clips rows, so points above or below would otherwise land in the first or last beam."""
    r = np.linalg.norm(points, axis=1)
    pitch = np.degrees(np.arcsin(np.clip(points[:, 2] / np.maximum(r, 1e-9), -1, 1)))
    half = (spec.fov_up - spec.fov_down) / spec.height / 2
    return (r >= spec.min_depth) & (r <= spec.max_depth) & (pitch >= spec.fov_down - half) & \
        (pitch <= spec.fov_up + half)


@dataclass
class LidarScan:
    """A scan as range images (the network's sensor: `spec`) and as points. `known` (H, W) marks the pixels that
    came from the input (completion, densification), the others were generated; `points` keeps the input's own
    points unchanged and adds one point per generated pixel with a return."""

    depth: np.ndarray
    intensity: np.ndarray
    known: np.ndarray
    spec: RangeSpec
    source: PointCloud | None = None

    @property
    def generated(self) -> PointCloud:
        """The points of the generated pixels only."""
        keep = ~self.known
        return from_range_image(np.where(keep, self.depth, 0), np.where(keep, self.intensity, 0), self.spec)

    @property
    def points(self) -> PointCloud:
        """The whole scan: the input's points (where it was kept) and the generated ones."""
        if self.source is None:
            return from_range_image(self.depth, self.intensity, self.spec)
        gen = self.generated
        src = self.source
        si = src.intensity if src.intensity is not None else np.zeros(len(src), np.float32)
        return PointCloud(np.concatenate([src.points, gen.points]), np.concatenate([si, gen.intensity]))


@dataclass
class LidarGenerator:
    """Generation, sector completion and 16 -> 64 beam densification of LiDAR scans with a loaded RangeDiT
    (packaged `lidar-dit`, or a weights folder). `steps` None: the network's validated `sample_steps`."""

    weights: str | Path | None = None
    steps: int | None = None
    batch: int = 4
    precision: str | None = None
    device: str | torch.device = "cpu"
    _model: RangeDiT | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from ditlab.core.accel.auto import check_precision, default_precision

        self.precision = check_precision(self.precision or default_precision())
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise InputError(f"steps must lie in [1, 1000], got {self.steps}")

    @property
    def model(self) -> RangeDiT:
        if self._model is None:
            model = load_model(self.weights or WEIGHTS["lidar"], device=self.device)
            if not isinstance(model, RangeDiT):
                raise InputError(f"{self.weights}: expected RangeDiT weights, got {type(model).__name__}")
            self._model = model
        return self._model

    @property
    def spec(self) -> RangeSpec:
        c = self.model.config
        return RangeSpec(c.beams, c.width, c.fov_up, c.fov_down, c.min_depth, c.max_depth)

    def _run(self, known: np.ndarray, mask: np.ndarray, seed: int,
             progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(B, 2, H, W) network values with the `mask`ed (B, H, W) pixels of `known` kept."""
        b = known.shape[0]
        out = np.empty_like(known)
        steps = int(self.steps or self.model.config.sample_steps)
        for lo in range(0, b, self.batch):
            k = min(self.batch, b - lo)
            kn = torch.from_numpy(known[lo:lo + k]).to(self.device)
            m = torch.from_numpy(mask[lo:lo + k, None].astype(np.float32)).to(self.device)
            x_t = torch.stack([sample_noise(tuple(known.shape[1:]), seed, lo + j) for j in range(k)])
            x0 = core_sample(self.model, PATH, tuple(x_t.shape), steps=steps, x_T=x_t,
                             model_kwargs={"known": kn, "known_mask": m}, precision=self.precision)
            x0 = x0.clamp(-1, 1).cpu()
            out[lo:lo + k] = torch.where(m.cpu() > 0, kn.cpu(), x0).numpy()
            if progress is not None:
                progress(lo + k, b)
        return out

    def _scans(self, values: np.ndarray, mask: np.ndarray, sources: list[PointCloud | None]) -> list[LidarScan]:
        spec = self.spec
        return [LidarScan(*decode_scan(v, spec), m, spec, s) for v, m, s in zip(values, mask, sources, strict=True)]

    def generate(self, n: int = 1, seed: int = 0, progress: Callable[[int, int], None] | None = None
                 ) -> list[LidarScan]:
        """`n` new scans from nothing (unconditional)."""
        if not 1 <= n <= MAX_SCANS:
            raise InputError(f"scan count must lie in [1, {MAX_SCANS}], got {n}")
        h, w = self.model.shape
        known = np.zeros((n, 2, h, w), np.float32)
        mask = np.zeros((n, h, w), bool)
        return self._scans(self._run(known, mask, seed, progress), mask, [None] * n)

    def _encode(self, cloud: PointCloud | np.ndarray, spec: RangeSpec | None = None) -> tuple[np.ndarray, PointCloud]:
        cloud = cloud if isinstance(cloud, PointCloud) else PointCloud(np.asarray(cloud, np.float32))
        if len(cloud) == 0:
            raise InputError("the scan has no points")
        spec = spec or self.spec
        if not in_view(cloud.points, spec).any():
            raise InputError(f"no point of the scan lies within the sensor's field of view ({spec.fov_down} to "
                             f"{spec.fov_up} deg) and depth range ({spec.min_depth} to {spec.max_depth} m)")
        depth, inten = to_range_image(cloud.points, cloud.intensity, spec)
        if not (depth > 0).any():
            raise InputError(f"no point of the scan lies within the sensor's field of view ({spec.fov_down} to "
                             f"{spec.fov_up} deg) and depth range ({spec.min_depth} to {spec.max_depth} m)")
        return encode_scan(depth, inten, spec), cloud

    def complete(self, cloud: PointCloud | np.ndarray, sector: tuple[float, float] = (135.0, 225.0), seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> LidarScan:
        """The scan with the azimuth `sector` (degrees, counter-clockwise from straight ahead, `sector_columns`)
        generated anew around the rest: the input's points outside the sector are kept as they are."""
        values, cloud = self._encode(cloud)
        cols = sector_columns(self.spec.width, *sector)
        mask = np.broadcast_to(~cols, values.shape[1:]).copy()
        source = cloud.select(~cols[azimuth_columns(cloud.points, self.spec.width)])
        return self._scans(self._run(values[None], mask[None], seed, progress), mask[None], [source])[0]

    def densify(self, cloud: PointCloud | np.ndarray, keep_every: int = 4, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> LidarScan:
        """A 64-beam scan from a sparse one whose beams are every `keep_every`-th beam of the network's sensor (16 of
        64 by default): the input is projected with H / keep_every beams over the same field of view, its rows
        placed at rows 0, keep_every, 2 keep_every, ..., and the rows between generated."""
        h, w = self.model.shape
        if keep_every < 2 or h % keep_every:
            raise InputError(f"keep_every must be >= 2 and divide the network's {h} beams, got {keep_every}")
        s = self.spec
        sparse = replace(s, height=h // keep_every)
        small, cloud = self._encode(cloud, sparse)
        values = np.full((2, h, w), -1.0, np.float32)
        values[:, ::keep_every] = small
        mask = np.zeros((h, w), bool)
        mask[::keep_every] = True
        return self._scans(self._run(values[None], mask[None], seed, progress), mask[None], [cloud])[0]
