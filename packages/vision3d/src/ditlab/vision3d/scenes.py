"""Seeded procedural driving worlds scanned by a simulated 64-beam spinning LiDAR (KITTI-like, HDL-64E), as range
and intensity images for range-image generation models (LiDM-style).

Every world is a function of (style, seed) alone: a street built from boxes, prisms, cones and spheres (road,
kerbs and raised sidewalks, buildings or houses, cars, poles, trees and bushes), each object with a reflectance in
[0, 1]. `scan` ray-casts it with open3d's `RaycastingScene` from a sensor in a driving lane and adds gaussian range
noise and random ray drop. Two styles: "urban" is the training distribution (a straight street lined with rows of
buildings, parked cars), "suburban" an out-of-distribution one (a narrow road, detached houses far apart, lawns,
many trees, an intersection, few cars).

Conventions (LiDM's range image, so that the ray-cast image equals the projection of its own points):

- Sensor frame: x forward, y left, z up (KITTI); the sensor origin is at z = 0, the ground at z = -height.
- Pixel (row v, column u) of an H x W image looks along yaw = (2 (u + 0.5) / W - 1) pi and pitch = fov_up - (v + 0.5)
  / H (fov_up - fov_down), with direction (cos pitch cos yaw, -cos pitch sin yaw, sin pitch) (LiDM projects with
  yaw = -atan2(y, x)); row 0 is the top beam, column W / 2 looks forward.
- depth = Euclidean range along the ray in metres, 0 = no return (nothing within max range, or a dropped ray).
- intensity = reflectance times |cos(incidence)|, in [0, 1], 0 where there is no return.

    from ditlab.vision3d.scenes import scan, scans
    s = scan(7)                                       # s.depth, s.intensity: (64, 1024) float32; s.points (N, 3)
    depth, intensity = scans("train", 8)              # (8, 64, 1024) each
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ditlab.core import splits
from ditlab.core.errors import InputError
from ditlab.vision3d.data import open3d_module
from ditlab.vision3d.io import RangeSpec

STYLES = ("urban", "suburban")
KINDS = ("road", "sidewalk", "terrain", "building", "car", "vegetation", "pole")
"""Object classes: `World.kind` and `Scan.label` index this tuple (-1 in `Scan.label` = no return)."""
SPLITS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
"""Seed offset of each split: scene i of split s has seed SPLITS[s] + i."""
SPLIT_SIZE = 1_000_000
_EXTENT = 110.0  # half-size of the ground around the sensor, beyond the default max range
_SEEN = 90.0  # objects stand within this distance of the sensor along the road


@dataclass(frozen=True)
class SensorSpec:
    """A spinning LiDAR: `beams` rows evenly spaced in elevation over [fov_down, fov_up] degrees, `width` azimuth
    columns, mounted `height` metres above the ground, returns up to `max_range` metres. Defaults: HDL-64E (KITTI)."""

    beams: int = 64
    width: int = 1024
    fov_up: float = 3.0
    fov_down: float = -25.0
    height: float = 1.73
    max_range: float = 80.0

    def __post_init__(self) -> None:
        for name, hi in (("beams", 4096), ("width", 16384)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 1 <= v <= hi:
                raise InputError(f"sensor {name} must be an integer in [1, {hi}], got {v!r}")
        fov = (self.fov_down, self.fov_up)
        if not (all(isinstance(v, int | float) for v in fov) and -90.0 <= self.fov_down < self.fov_up <= 90.0):
            raise InputError(f"sensor field of view must satisfy -90 <= fov_down < fov_up <= 90 degrees, "
                             f"got fov_down={self.fov_down!r}, fov_up={self.fov_up!r}")
        for name, hi in (("height", 10.0), ("max_range", 1000.0)):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 < v <= hi):
                raise InputError(f"sensor {name} must be a number in (0, {hi}] metres, got {v!r}")

    def range_spec(self, min_depth: float = 1.0, max_depth: float = 56.0) -> RangeSpec:
        """The range image this sensor's scans are (`ditlab.vision3d.io.RangeSpec`): its beams, columns and field
        of view, keeping depths in [min_depth, min(max_depth, max_range)] (LiDM's 1-56 m by default)."""
        return RangeSpec(self.beams, self.width, self.fov_up, self.fov_down, min_depth, min(max_depth, self.max_range))


@lru_cache(maxsize=16)
def ray_directions(sensor: SensorSpec = SensorSpec()) -> np.ndarray:
    """(beams, width, 3) float32 unit ray directions of every pixel in the sensor frame (module conventions); the
    cached array is read-only."""
    if not isinstance(sensor, SensorSpec):
        raise InputError(f"sensor must be a SensorSpec, got {type(sensor).__name__}")
    h, w = sensor.beams, sensor.width
    pitch = np.radians(sensor.fov_up - (np.arange(h) + 0.5) / h * (sensor.fov_up - sensor.fov_down))
    yaw = (2.0 * (np.arange(w) + 0.5) / w - 1.0) * np.pi
    cp, sp = np.cos(pitch)[:, None], np.sin(pitch)[:, None]
    d = np.stack(np.broadcast_arrays(cp * np.cos(yaw), -cp * np.sin(yaw), sp), axis=-1).astype(np.float32)
    d.flags.writeable = False
    return d


def check_style(style: str) -> str:
    if style not in STYLES:
        raise InputError(f"unknown scene style {style!r}; expected one of {STYLES}")
    return style


def split_seed(split: str, i: int) -> int:
    """The seed of scene i of `split` ("train", "val", "test")."""
    return splits.split_seed(SPLITS, SPLIT_SIZE, split, i, "scene")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"scene seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------------------------
# Mesh templates: unit shapes that every object instance scales, turns about z and places
# ----------------------------------------------------------------------------------------------

def _ring(n: int) -> np.ndarray:
    a = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _prism(n: int, z0: float, z1: float, apex: bool) -> tuple[np.ndarray, np.ndarray]:
    """An n-gon prism of radius 1 from z0 to z1 (a cone with its apex at z1 when `apex`), capped."""
    ring, i = _ring(n), np.arange(n)
    j = (i + 1) % n
    bottom = np.column_stack([ring, np.full(n, z0)])
    if apex:
        v = np.vstack([bottom, [[0, 0, z1], [0, 0, z0]]])
        t = np.vstack([np.column_stack([i, j, np.full(n, n)]), np.column_stack([j, i, np.full(n, n + 1)])])
        return v, t
    v = np.vstack([bottom, np.column_stack([ring, np.full(n, z1)]), [[0, 0, z0], [0, 0, z1]]])
    t = np.vstack([np.column_stack([i, j, j + n]), np.column_stack([i, j + n, i + n]),
                   np.column_stack([j, i, np.full(n, 2 * n)]), np.column_stack([i + n, j + n, np.full(n, 2 * n + 1)])])
    return v, t


def _icosphere() -> tuple[np.ndarray, np.ndarray]:
    """A unit icosahedron subdivided once (42 vertices, 80 triangles)."""
    p = (1 + 5 ** 0.5) / 2
    v = [(-1, p, 0), (1, p, 0), (-1, -p, 0), (1, -p, 0), (0, -1, p), (0, 1, p), (0, -1, -p), (0, 1, -p),
         (p, 0, -1), (p, 0, 1), (-p, 0, -1), (-p, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts, mid, tris = [np.array(x, float) for x in v], {}, []

    def middle(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in mid:
            mid[key] = len(verts)
            verts.append((verts[a] + verts[b]) / 2)
        return mid[key]

    for a, b, c in faces:
        ab, bc, ca = middle(a, b), middle(b, c), middle(c, a)
        tris += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
    verts = np.array(verts)
    return verts / np.linalg.norm(verts, axis=1, keepdims=True), np.array(tris)


def _templates() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    box = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                    [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    roof_v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0], [-0.5, 0, 1], [0.5, 0, 1]])
    roof_t = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 5], [0, 5, 4], [2, 3, 4], [2, 4, 5], [0, 4, 3], [1, 2, 5]])
    wheel_v, wheel_t = _prism(8, -0.5, 0.5, apex=False)
    return {"box": (corners, box), "roof": (roof_v, roof_t),  # a gable roof, ridge along x, base at z = 0
            "cylinder": _prism(8, -0.5, 0.5, apex=False),  # axis z, centred
            "wheel": (wheel_v[:, [0, 2, 1]], wheel_t[:, ::-1]),  # a cylinder with its axis along y
            "cone": _prism(8, 0.0, 1.0, apex=True),  # base at z = 0
            "sphere": _icosphere()}


_TEMPLATES = _templates()


class _Parts:
    """Object instances collected per template and turned into one triangle soup at the end, so that a world of
    hundreds of objects costs a few numpy calls."""

    def __init__(self) -> None:
        self.items: dict[str, list[tuple[float, ...]]] = {name: [] for name in _TEMPLATES}

    def add(self, shape: str, centre, size, yaw: float, reflectance: float, kind: str) -> None:
        """One `shape` scaled by `size` (local x, y, z), turned by `yaw` about z and placed at `centre`."""
        self.items[shape].append((*centre, *size, yaw, reflectance, KINDS.index(kind)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        verts, tris, refl, kind, base = [], [], [], [], 0
        for name, items in self.items.items():
            if not items:
                continue
            tv, tt = _TEMPLATES[name]
            p = np.array(items)
            local = tv[None] * p[:, None, 3:6]
            c, s = np.cos(p[:, 6])[:, None], np.sin(p[:, 6])[:, None]
            v = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1],
                          local[..., 2]], axis=-1) + p[:, None, 0:3]
            verts.append(v.reshape(-1, 3))
            tris.append((tt[None] + base + len(tv) * np.arange(len(p))[:, None, None]).reshape(-1, 3))
            refl.append(np.repeat(p[:, 7], len(tt)))
            kind.append(np.repeat(p[:, 8], len(tt)))
            base += len(p) * len(tv)
        return (np.concatenate(verts).astype(np.float32), np.concatenate(tris).astype(np.uint32),
                np.concatenate(refl).astype(np.float32), np.concatenate(kind).astype(np.int8))


# ----------------------------------------------------------------------------------------------
# Layout: roads, blocks (raised terrain between roads), frontages (kerb lines objects stand along)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Frontage:
    """A kerb line: world point = p0 + s a + t n, `a` along the kerb, `n` away from the road; the block behind it
    is raised by `kerb`, its sidewalk is `sidewalk` wide, objects stand at s in [lo, hi]."""

    p0: tuple[float, float]
    a: tuple[float, float]
    n: tuple[float, float]
    lo: float
    hi: float
    sidewalk: float
    kerb: float

    def at(self, s: float, t: float, z: float) -> tuple[float, float, float]:
        return self.p0[0] + s * self.a[0] + t * self.n[0], self.p0[1] + s * self.a[1] + t * self.n[1], z

    @property
    def yaw(self) -> float:
        return math.atan2(self.a[1], self.a[0])

    def within(self, limit: float) -> _Frontage:
        """This frontage cut to the part within `limit` metres of the sensor along the kerb (kerbs are axis-aligned
        and the sensor stands at the origin), the only part a scan can see."""
        along = self.p0[0] * self.a[0] + self.p0[1] * self.a[1]
        return replace(self, lo=max(self.lo, -limit - along), hi=min(self.hi, limit - along))


def _block(parts: _Parts, rng, x0, x1, y0, y1, road_sides: str, sidewalk: float, kerb: float, terrain: float,
           cross_band: float) -> list[_Frontage]:
    """The raised block [x0, x1] x [y0, y1] with sidewalks along its `road_sides` ("x0", "x1", "y0", "y1" joined),
    its frontages, those along the cross road starting `cross_band` metres from the main road kerb."""
    xi0, xi1 = x0 + sidewalk * ("x0" in road_sides), x1 - sidewalk * ("x1" in road_sides)
    yi0, yi1 = y0 + sidewalk * ("y0" in road_sides), y1 - sidewalk * ("y1" in road_sides)
    walk = rng.uniform(0.2, 0.3)

    def slab(a0, a1, b0, b1, refl, kind):
        parts.add("box", ((a0 + a1) / 2, (b0 + b1) / 2, kerb / 2), (a1 - a0, b1 - b0, kerb), 0.0, refl, kind)

    slab(xi0, xi1, yi0, yi1, terrain, "terrain")
    fronts = []
    if sidewalk > 0:
        for side in ("y0", "y1"):
            if side in road_sides:
                slab(x0, x1, *((y0, yi0) if side == "y0" else (yi1, y1)), walk, "sidewalk")
        for side in ("x0", "x1"):
            if side in road_sides:
                slab(*((x0, xi0) if side == "x0" else (xi1, x1)), yi0, yi1, walk, "sidewalk")
    margin = sidewalk + 2.0
    for side in ("y0", "y1"):
        if side in road_sides:
            y = y0 if side == "y0" else y1
            fronts.append(_Frontage((x0, y), (1.0, 0.0), (0.0, 1.0 if side == "y0" else -1.0),
                                    margin * ("x0" in road_sides), x1 - x0 - margin * ("x1" in road_sides),
                                    sidewalk, kerb))
    for side in ("x0", "x1"):
        if side in road_sides:
            x, up = (x0 if side == "x0" else x1), "y0" in road_sides
            fronts.append(_Frontage((x, y0 if up else y1), (0.0, 1.0 if up else -1.0),
                                    (1.0 if side == "x0" else -1.0, 0.0), cross_band, y1 - y0, sidewalk, kerb))
    return fronts


def _car(parts: _Parts, rng, x: float, y: float, yaw: float) -> tuple[float, float]:
    """A car on the road at (x, y) heading `yaw`: a body box, a cabin box and four wheels; returns (length, width)."""
    length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.95)
    height = rng.uniform(1.65, 1.9) if rng.random() < 0.2 else rng.uniform(1.35, 1.6)  # vans and SUVs
    clear = rng.uniform(0.18, 0.3)
    body = (height - clear) * rng.uniform(0.45, 0.55)
    cabin_l, shift = length * rng.uniform(0.45, 0.6), length * rng.uniform(-0.12, 0.05)
    c, s = math.cos(yaw), math.sin(yaw)
    parts.add("box", (x, y, clear + body / 2), (length, width, body), yaw, rng.uniform(0.3, 0.9), "car")
    parts.add("box", (x + shift * c, y + shift * s, clear + body + (height - clear - body) / 2),
              (cabin_l, width * rng.uniform(0.85, 0.95), height - clear - body), yaw, rng.uniform(0.2, 0.4), "car")
    r = rng.uniform(0.3, 0.36)
    for fx in (-0.33, 0.33):
        for fy in (-0.5, 0.5):
            lx, ly = fx * length, fy * (width - 0.2)
            parts.add("wheel", (x + lx * c - ly * s, y + lx * s + ly * c, r), (r, 0.22, r), yaw,
                      rng.uniform(0.1, 0.15), "car")
    return length, width


class _Traffic:
    """Cars on the road, kept from overlapping each other and the ego car at the sensor."""

    def __init__(self, parts: _Parts, rng, ego: tuple[float, float]) -> None:
        self.parts, self.rng, self.boxes = parts, rng, [(ego[0], ego[1], 2.6, 1.1)]

    def place(self, x: float, y: float, yaw: float) -> bool:
        along_x = abs(math.cos(yaw)) > 0.7
        hx, hy = (2.5, 1.0) if along_x else (1.0, 2.5)
        if any(abs(x - bx) < hx + ex + 0.4 and abs(y - by) < hy + ey + 0.3 for bx, by, ex, ey in self.boxes):
            return False
        self.boxes.append((x, y, hx, hy))
        _car(self.parts, self.rng, x, y, yaw + self.rng.uniform(-0.04, 0.04))
        return True


def _tree(parts: _Parts, rng, f: _Frontage, s: float, t: float, max_radius: float, conifer: bool = False) -> None:
    trunk_h, r = rng.uniform(1.8, 3.5), min(rng.uniform(1.2, 3.0), max_radius)
    z = f.kerb
    parts.add("cylinder", f.at(s, t, z + trunk_h / 2), (rng.uniform(0.1, 0.25),) * 2 + (trunk_h,), 0.0,
              rng.uniform(0.3, 0.4), "vegetation")
    veg = rng.uniform(0.3, 0.5)
    if conifer:
        parts.add("cone", f.at(s, t, z + trunk_h * 0.5), (r, r, rng.uniform(4.0, 9.0)), rng.uniform(0, np.pi),
                  veg, "vegetation")
    else:
        rz = r * rng.uniform(0.7, 1.1)
        parts.add("sphere", f.at(s, t, z + trunk_h + 0.6 * rz), (r, r * rng.uniform(0.85, 1.0), rz),
                  rng.uniform(0, np.pi), veg, "vegetation")


def _street_lights(parts: _Parts, rng, f: _Frontage, spacing: tuple[float, float]) -> None:
    s = f.lo + rng.uniform(0, spacing[1])
    while s < f.hi:
        h, t = rng.uniform(6.0, 9.0), rng.uniform(0.4, 0.7)
        refl = rng.uniform(0.45, 0.55)
        parts.add("cylinder", f.at(s, t, f.kerb + h / 2), (rng.uniform(0.08, 0.14),) * 2 + (h,), 0.0, refl, "pole")
        arm = rng.uniform(1.2, 2.5)
        parts.add("box", f.at(s, t - arm / 2, f.kerb + h - 0.1), (0.15, arm, 0.15), f.yaw, refl, "pole")
        if rng.random() < 0.3:  # a traffic sign on its own post
            ss = s + rng.uniform(3, 8)
            parts.add("cylinder", f.at(ss, t, f.kerb + 1.3), (0.04, 0.04, 2.6), 0.0, refl, "pole")
            parts.add("box", f.at(ss, t - 0.05, f.kerb + 2.4), (0.6, 0.04, 0.6), f.yaw, rng.uniform(0.7, 0.9), "pole")
        s += rng.uniform(*spacing)


# ----------------------------------------------------------------------------------------------
# Styles
# ----------------------------------------------------------------------------------------------

def _urban(parts: _Parts, rng) -> tuple[float, float, float]:
    """A straight street along x, 2-4 lanes with parking strips, rows of buildings: returns the sensor pose."""
    lanes, lane_w = int(rng.choice([2, 3, 4], p=[0.45, 0.3, 0.25])), rng.uniform(3.2, 3.7)
    park = [rng.uniform(2.2, 2.5) if rng.random() < 0.8 else 0.0 for _ in range(2)]  # right, left
    y_r, y_l = -lanes * lane_w / 2 - park[0], lanes * lane_w / 2 + park[1]
    kerb = rng.uniform(0.12, 0.18)
    walks = rng.uniform(2.0, 5.0, size=2)
    lane_y = -lanes * lane_w / 2 + (np.arange(lanes) + 0.5) * lane_w
    ego = (0.0, float(rng.choice(lane_y[: (lanes + 1) // 2]) + rng.uniform(-0.4, 0.4)))
    parts.add("box", (0, (y_r + y_l) / 2, -0.05), (2 * _EXTENT, y_l - y_r, 0.1), 0.0, rng.uniform(0.1, 0.2), "road")
    terrain = rng.uniform(0.2, 0.3)
    fronts = (_block(parts, rng, -_EXTENT, _EXTENT, -_EXTENT, y_r, "y1", walks[0], kerb, terrain, 0.0)
              + _block(parts, rng, -_EXTENT, _EXTENT, y_l, _EXTENT, "y0", walks[1], kerb, terrain, 0.0))
    traffic = _Traffic(parts, rng, ego)
    for f, strip, heading in zip(fronts, park, (0.0, np.pi), strict=True):
        f = f.within(_SEEN)
        s = f.lo
        while s < f.hi:  # buildings, occasionally with a gap and a tree in it
            width = rng.uniform(6.0, 25.0)
            setback, depth, h = rng.uniform(0.0, 2.5), rng.uniform(8.0, 20.0), rng.uniform(6.0, 25.0)
            t0 = f.sidewalk + setback
            refl = rng.uniform(0.2, 0.5)
            parts.add("box", f.at(s + width / 2, t0 + depth / 2, f.kerb + h / 2), (width, depth, h), f.yaw, refl,
                      "building")
            if rng.random() < 0.3:  # a set-back upper storey
                top = rng.uniform(2.5, 6.0)
                parts.add("box", f.at(s + width / 2, t0 + depth / 2 + 1.0, f.kerb + h + top / 2),
                          (width * rng.uniform(0.5, 0.9), depth * rng.uniform(0.5, 0.8), top), f.yaw, refl, "building")
            s += width
            if rng.random() < 0.15:
                gap = rng.uniform(3.0, 12.0)
                if gap > 5.0 and rng.random() < 0.5:
                    _tree(parts, rng, f, s + gap / 2, f.sidewalk + rng.uniform(1.0, 4.0), gap / 2)
                s += gap
        if rng.random() < 0.5:  # a row of street trees
            s = f.lo + rng.uniform(0, 10)
            t = max(0.8, f.sidewalk * 0.5)
            while s < f.hi:
                _tree(parts, rng, f, s, t, t + 0.8)
                s += rng.uniform(8.0, 15.0)
        _street_lights(parts, rng, f, (20.0, 35.0))
        if strip > 0:  # parked cars along the kerb
            s = f.lo
            while s < f.hi:
                slot = rng.uniform(5.5, 7.5)
                if rng.random() < 0.65:
                    x, y, _ = f.at(s + slot / 2, -strip / 2 + rng.uniform(-0.15, 0.15), 0.0)
                    traffic.place(x, y, heading)
                s += slot
    for _ in range(int(rng.integers(0, 5))):  # cars driving in the lanes
        lane = lane_y[int(rng.integers(lanes))]
        traffic.place(rng.uniform(-70, 70), lane + rng.uniform(-0.3, 0.3), 0.0 if lane <= 0 else np.pi)
    return ego[0], ego[1], rng.uniform(-0.05, 0.05)


def _suburban(parts: _Parts, rng) -> tuple[float, float, float]:
    """A narrow two-lane road along x, often crossed by another, detached houses on lawns, trees and bushes, few
    cars: returns the sensor pose."""
    lane_w, kerb = rng.uniform(2.8, 3.3), rng.uniform(0.1, 0.15)
    hw = lane_w
    walk = rng.uniform(1.2, 2.0) if rng.random() < 0.7 else 0.0
    ego = (0.0, -lane_w / 2 + rng.uniform(-0.3, 0.3))
    road = rng.uniform(0.1, 0.2)
    parts.add("box", (0, 0, -0.05), (2 * _EXTENT, 2 * hw, 0.1), 0.0, road, "road")
    lawn = rng.uniform(0.3, 0.45)
    band = walk + 28.0  # cross-road frontages start behind the main road's houses
    if rng.random() < 0.8:  # an intersection
        xc, cw = rng.choice([-1, 1]) * rng.uniform(12.0, 45.0), rng.uniform(2.8, 3.3)
        for y0, y1 in ((hw, _EXTENT), (-_EXTENT, -hw)):
            parts.add("box", (xc, (y0 + y1) / 2, -0.05), (2 * cw, y1 - y0, 0.1), 0.0, road, "road")
        blocks = [(-_EXTENT, xc - cw, "x1"), (xc + cw, _EXTENT, "x0")]
    else:
        xc, cw, blocks = None, 0.0, [(-_EXTENT, _EXTENT, "")]
    fronts = []
    for x0, x1, sides in blocks:
        fronts += _block(parts, rng, x0, x1, -_EXTENT, -hw, sides + "y1", walk, kerb, lawn, band)
        fronts += _block(parts, rng, x0, x1, hw, _EXTENT, sides + "y0", walk, kerb, lawn, band)
    for f in (f.within(_SEEN) for f in fronts):
        lo, hi = f.lo, f.hi
        if hi - lo < 10.0:
            continue
        houses, s = [], lo + rng.uniform(0, 10)
        while True:
            width, depth = rng.uniform(8.0, 14.0), rng.uniform(7.0, 12.0)
            if s + width > hi:
                break
            t0 = f.sidewalk + rng.uniform(5.0, 12.0)
            wall, roof = rng.uniform(2.8, 6.0), rng.uniform(1.5, 3.5)
            turn = rng.random() < 0.4  # ridge across the road
            parts.add("box", f.at(s + width / 2, t0 + depth / 2, f.kerb + wall / 2), (width, depth, wall), f.yaw,
                      rng.uniform(0.25, 0.5), "building")
            parts.add("roof", f.at(s + width / 2, t0 + depth / 2, f.kerb + wall),
                      (depth + 0.6, width + 0.6, roof) if turn else (width + 0.6, depth + 0.6, roof),
                      f.yaw + (np.pi / 2 if turn else 0.0), rng.uniform(0.1, 0.3), "building")
            houses.append((s - 1.0, s + width + 1.0, t0 - 1.0, t0 + depth + 1.0))
            if rng.random() < 0.35:  # a hedge along the front of the plot
                parts.add("box", f.at(s + width / 2, f.sidewalk + rng.uniform(0.5, 1.5), f.kerb + 0.6),
                          (width + rng.uniform(2, 6), rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.5)), f.yaw,
                          rng.uniform(0.3, 0.5), "vegetation")
            s += width + rng.uniform(6.0, 20.0)

        def free(s: float, t: float, houses=houses) -> bool:
            return not any(a0 < s < a1 and b0 < t < b1 for a0, a1, b0, b1 in houses)

        for _ in range(int(rng.poisson((hi - lo) / 7.0))):  # trees on the lawns
            s, t = rng.uniform(lo, hi), rng.uniform(f.sidewalk + 1.5, 35.0)
            if free(s, t):
                _tree(parts, rng, f, s, t, t + 0.5, conifer=rng.random() < 0.3)
        for _ in range(int(rng.poisson((hi - lo) / 6.0))):  # bushes
            s, t = rng.uniform(lo, hi), rng.uniform(f.sidewalk + 0.8, 15.0)
            if free(s, t):
                r = rng.uniform(0.5, 1.2)
                parts.add("sphere", f.at(s, t, f.kerb + r * 0.6), (r, r * rng.uniform(0.7, 1.0), r * 0.8),
                          rng.uniform(0, np.pi), rng.uniform(0.3, 0.5), "vegetation")
        if f.a[0] and f.n[1] > 0:  # street lights on one side of the main road
            _street_lights(parts, rng, f, (30.0, 50.0))
    traffic = _Traffic(parts, rng, ego)
    for _ in range(int(rng.integers(0, 3))):  # parked along the kerb
        side = rng.choice([-1, 1])
        traffic.place(rng.uniform(-60, 60), side * (hw - 1.0), 0.0 if side < 0 else np.pi)
    for _ in range(int(rng.integers(0, 3))):  # driving
        side = rng.choice([-1, 1])
        traffic.place(rng.uniform(-60, 60), side * lane_w / 2 + rng.uniform(-0.3, 0.3), 0.0 if side < 0 else np.pi)
    if xc is not None:
        for _ in range(int(rng.integers(0, 2))):
            side = rng.choice([-1, 1])
            traffic.place(xc + side * cw / 2, rng.choice([-1, 1]) * rng.uniform(hw + 5, 50),
                          np.pi / 2 if side > 0 else -np.pi / 2)
    return ego[0], ego[1], rng.uniform(-0.05, 0.05)


_STYLES = {"urban": _urban, "suburban": _suburban}


@dataclass(frozen=True)
class World:
    """One seeded world as a triangle soup in the road frame (ground at z = 0, main road along x): `vertices`
    (V, 3) float32, `triangles` (T, 3) uint32, per triangle `reflectance` (T,) float32 in [0, 1] and `kind` (T,)
    int8 (an index into KINDS), and the sensor's ground position and heading `pose` = (x, y, yaw)."""

    style: str
    seed: int
    vertices: np.ndarray
    triangles: np.ndarray
    reflectance: np.ndarray
    kind: np.ndarray
    pose: tuple[float, float, float]

    def scene(self):
        """An open3d `RaycastingScene` of the world (one geometry; `primitive_ids` index the triangles)."""
        o3d = open3d_module()
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(self.vertices), o3d.core.Tensor(self.triangles))
        return scene


def build_world(seed: int, style: str = "urban") -> World:
    """The world of `seed` in `style` ("urban" or "suburban"), a pure function of the two."""
    seed, style = _check_seed(seed), check_style(style)
    rng = np.random.default_rng([STYLES.index(style), seed, 0])
    parts = _Parts()
    pose = _STYLES[style](parts, rng)
    return World(style, seed, *parts.arrays(), tuple(float(v) for v in pose))


@dataclass(frozen=True)
class Scan:
    """One LiDAR sweep: `depth` and `intensity` (beams, width) float32 images (module conventions), `label` (beams,
    width) int8 (an index into KINDS, -1 = no return), and the returns as `points` (N, 3) float32 in the sensor
    frame with `point_intensity` (N,) float32 and `ring` (N,) int64 (the image row), in row-major pixel order."""

    depth: np.ndarray
    intensity: np.ndarray
    label: np.ndarray
    points: np.ndarray
    point_intensity: np.ndarray
    ring: np.ndarray


def scan(seed: int, style: str = "urban", sensor: SensorSpec = SensorSpec(), noise: float = 0.01) -> Scan:
    """Ray-cast the world of (`seed`, `style`) with `sensor`, add gaussian range noise of std `noise` metres and drop
    1-3% of the rays at random (seeded, like the world)."""
    if not isinstance(sensor, SensorSpec):
        raise InputError(f"sensor must be a SensorSpec, got {type(sensor).__name__}")
    if not (isinstance(noise, int | float) and 0.0 <= noise <= 1.0):
        raise InputError(f"range noise must be a number in [0, 1] metres, got {noise!r}")
    world = build_world(seed, style)
    o3d = open3d_module()
    dirs = ray_directions(sensor)
    x, y, yaw = world.pose
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)  # row vectors: d @ rot = R d
    rays = np.empty((*dirs.shape[:2], 6), np.float32)
    rays[..., :3] = (x, y, sensor.height)
    rays[..., 3:] = dirs @ rot
    hit = world.scene().cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    rng = np.random.default_rng([STYLES.index(world.style), world.seed, 1])
    keep = (t <= sensor.max_range) & (rng.random(t.shape) >= rng.uniform(0.01, 0.03))
    prim = hit["primitive_ids"].numpy()[keep].astype(np.int64)
    cos = np.abs(np.einsum("nk,nk->n", hit["primitive_normals"].numpy()[keep], rays[..., 3:][keep]))
    depth = np.zeros(t.shape, np.float32)
    depth[keep] = np.clip(t[keep] + rng.normal(0.0, noise, prim.size), 0.05, sensor.max_range)
    intensity = np.zeros(t.shape, np.float32)
    intensity[keep] = np.clip(world.reflectance[prim] * cos, 0.0, 1.0)
    label = np.full(t.shape, -1, np.int8)
    label[keep] = world.kind[prim]
    rows, cols = np.nonzero(keep)
    points = (dirs[rows, cols] * depth[rows, cols, None]).astype(np.float32)
    return Scan(depth, intensity, label, points, intensity[rows, cols], rows.astype(np.int64))


def scans(split: str, count: int, style: str = "urban", start: int = 0,
          sensor: SensorSpec = SensorSpec()) -> tuple[np.ndarray, np.ndarray]:
    """(depth, intensity), each (count, beams, width) float32: scans start .. start + count - 1 of `split`."""
    check_style(style)
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise InputError(f"scan count must be a non-negative integer, got {count!r}")
    seeds = [split_seed(split, start + i) for i in range(count)]
    if not isinstance(sensor, SensorSpec):
        raise InputError(f"sensor must be a SensorSpec, got {type(sensor).__name__}")
    depth = np.zeros((count, sensor.beams, sensor.width), np.float32)
    intensity = np.zeros_like(depth)
    for i, seed in enumerate(seeds):
        sc = scan(seed, style, sensor)
        depth[i], intensity[i] = sc.depth, sc.intensity
    return depth, intensity


def cached_scans(split: str, count: int, style: str = "urban") -> tuple[np.ndarray, np.ndarray]:
    """`scans(split, count, style)` with the default sensor, generated once and then read from
    `ditlab.vision3d.data.cache_dir()` (float16 on disk: a pure function of its arguments, so the file is a cache)."""
    from ditlab.core.files import atomic_write
    from ditlab.vision3d.data import cache_dir

    check_style(style)
    path = cache_dir() / f"scans-{style}-{split}-{count}.npy"
    if not path.is_file():
        both = np.stack(scans(split, count, style), axis=1).astype(np.float16)  # (count, 2, H, W)

        def write(p):
            with open(p, "wb") as f:
                np.save(f, both)

        atomic_write(path, write)
    both = np.load(path).astype(np.float32)
    return both[:, 0], both[:, 1]
