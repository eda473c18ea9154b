"""Seeded procedural shapes: five classes built from open3d primitives with random proportions and parts, sampled
as point clouds by Poisson disk, and the train / validation / test splits.

Every shape is a function of (class, seed) alone. Splits own disjoint seed ranges (`split_seed`), so checkpoints
and settings are chosen on "val" and "test" is never looked at until the benchmark. A shape is a union of part
meshes (boxes, cylinders, cones, spheres, tori), each placed and sized from the seed; the union is sampled by
Poisson disk on its surface area (`sample_points`), then centred on its bounding box and scaled so that its
longest side is 1 (`CANONICAL`), y up, the front towards -z.

    from ditlab.vision3d.data import shape_points, dataset
    pts = shape_points("chair", seed=3, n=2048)          # (2048, 3) float32
    train = dataset("chair", "train", 100, n=2048)       # (100, 2048, 3)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ditlab.core import splits
from ditlab.core.errors import InputError
from ditlab.core.files import atomic_write

CLASSES = ("chair", "airplane", "car", "table", "lamp")
SPLITS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
"""Seed offset of each split: shape i of split s has seed SPLITS[s] + i."""
SPLIT_SIZE = 1_000_000
MAX_POINTS = 1_000_000
CANONICAL = "bounding-box centre at the origin, longest side 1, y up, front towards -z"


def open3d_module():
    try:
        import open3d as o3d
    except ImportError as e:  # libusb-1.0-0 missing is the usual cause
        raise RuntimeError(f"open3d cannot be imported ({e}); install the Debian package libusb-1.0-0") from e
    return o3d


def check_class(name: str) -> str:
    if name not in CLASSES:
        raise InputError(f"unknown shape class {name!r}; expected one of {CLASSES}")
    return name


def split_seed(split: str, i: int) -> int:
    """The seed of shape i of `split` ("train", "val", "test")."""
    return splits.split_seed(SPLITS, SPLIT_SIZE, split, i, "shape")


# ----------------------------------------------------------------------------------------------
# Parts
# ----------------------------------------------------------------------------------------------

def _box(size, centre):
    o3d = open3d_module()
    sx, sy, sz = (float(v) for v in size)
    m = o3d.geometry.TriangleMesh.create_box(sx, sy, sz)
    m.translate(np.asarray(centre, float) - np.array([sx, sy, sz]) / 2)
    return m


def _rotate(m, axis: str, angle: float, centre=None):
    o3d = open3d_module()
    r = {"x": (angle, 0, 0), "y": (0, angle, 0), "z": (0, 0, angle)}[axis]
    m.rotate(o3d.geometry.get_rotation_matrix_from_xyz(r), center=m.get_center() if centre is None else centre)
    return m


def _cylinder(radius, height, centre, axis: str = "y", resolution: int = 24):
    """A cylinder along `axis` centred at `centre` (open3d's is along z)."""
    o3d = open3d_module()
    m = o3d.geometry.TriangleMesh.create_cylinder(float(radius), float(height), resolution=resolution)
    if axis == "y":
        _rotate(m, "x", np.pi / 2, (0, 0, 0))
    elif axis == "x":
        _rotate(m, "y", np.pi / 2, (0, 0, 0))
    m.translate(np.asarray(centre, float))
    return m


def _cone(radius, height, centre, axis: str = "y", flip: bool = False):
    o3d = open3d_module()
    m = o3d.geometry.TriangleMesh.create_cone(float(radius), float(height), resolution=24)
    m.translate((0, 0, -height / 2))
    angle = {"y": -np.pi / 2, "z": 0.0, "x": np.pi / 2}[axis] + (np.pi if flip else 0.0)
    _rotate(m, "x" if axis != "x" else "y", angle, (0, 0, 0))
    m.translate(np.asarray(centre, float))
    return m


def _sphere(radius, centre, scale=(1, 1, 1)):
    o3d = open3d_module()
    m = o3d.geometry.TriangleMesh.create_sphere(float(radius), resolution=16)
    v = np.asarray(m.vertices) * np.asarray(scale, float)
    m.vertices = o3d.utility.Vector3dVector(v)
    m.translate(np.asarray(centre, float))
    return m


# ----------------------------------------------------------------------------------------------
# Classes
# ----------------------------------------------------------------------------------------------

def _legs(rng, w, d, h, top_y, round_legs: bool, inset: float, t: float):
    parts = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (w / 2 - inset), sz * (d / 2 - inset)
            if round_legs:
                parts.append(_cylinder(t / 2, h, (x, top_y - h / 2, z)))
            else:
                parts.append(_box((t, h, t), (x, top_y - h / 2, z)))
    return parts


def _chair(rng):
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    seat_h, seat_t = rng.uniform(0.35, 0.5), rng.uniform(0.03, 0.08)
    back_h = rng.uniform(0.3, 0.6)
    leg_t = rng.uniform(0.03, 0.06)
    parts = [_box((w, seat_t, d), (0, seat_h, 0))]
    parts += _legs(rng, w, d, seat_h - seat_t / 2, seat_h - seat_t / 2, rng.random() < 0.4, leg_t, leg_t)
    back_t = rng.uniform(0.03, 0.06)
    back = _box((w, back_h, back_t), (0, seat_h + back_h / 2, d / 2 - back_t / 2))
    _rotate(back, "x", rng.uniform(0.0, 0.25), (0, seat_h, d / 2))
    parts.append(back)
    if rng.random() < 0.4:  # arm rests
        arm_h = rng.uniform(0.15, 0.25)
        for sx in (-1, 1):
            parts.append(_box((0.04, 0.04, d * 0.9), (sx * (w / 2 - 0.02), seat_h + arm_h, 0)))
            parts.append(_box((0.03, arm_h, 0.03), (sx * (w / 2 - 0.02), seat_h + arm_h / 2, -d / 2 + 0.05)))
    return parts


def _table(rng):
    round_top = rng.random() < 0.35
    w, d = rng.uniform(0.8, 1.6), rng.uniform(0.5, 1.0)
    h, t = rng.uniform(0.5, 0.8), rng.uniform(0.03, 0.07)
    parts = []
    if round_top:
        r = rng.uniform(0.35, 0.6)
        parts.append(_cylinder(r, t, (0, h, 0), resolution=40))
        if rng.random() < 0.5:  # pedestal
            parts.append(_cylinder(rng.uniform(0.03, 0.07), h - t / 2, (0, (h - t / 2) / 2, 0)))
            parts.append(_cylinder(r * rng.uniform(0.4, 0.7), 0.03, (0, 0.015, 0), resolution=32))
        else:
            parts += _legs(rng, r * 1.2, r * 1.2, h - t / 2, h - t / 2, True, 0.05, rng.uniform(0.03, 0.06))
    else:
        parts.append(_box((w, t, d), (0, h, 0)))
        leg = rng.uniform(0.04, 0.08)
        parts += _legs(rng, w, d, h - t / 2, h - t / 2, rng.random() < 0.3, rng.uniform(0.04, 0.12), leg)
        if rng.random() < 0.4:  # a lower shelf
            parts.append(_box((w * 0.9, t * 0.7, d * 0.9), (0, rng.uniform(0.1, 0.25), 0)))
    return parts


def _car(rng):
    length, width = rng.uniform(3.6, 4.8), rng.uniform(1.6, 1.9)
    body_h, clear = rng.uniform(0.5, 0.8), rng.uniform(0.15, 0.3)
    cabin_h, cabin_l = rng.uniform(0.4, 0.6), length * rng.uniform(0.4, 0.6)
    wheel_r = rng.uniform(0.3, 0.38)
    parts = [_box((width, body_h, length), (0, clear + body_h / 2, 0))]
    cabin = _box((width * rng.uniform(0.8, 0.95), cabin_h, cabin_l),
                 (0, clear + body_h + cabin_h / 2, rng.uniform(-0.15, 0.25) * length))
    parts.append(cabin)
    for sz in (-1, 1):
        for sx in (-1, 1):
            parts.append(_cylinder(wheel_r, 0.22, (sx * width / 2, wheel_r, sz * length * 0.33), axis="x"))
    if rng.random() < 0.3:  # a spoiler
        parts.append(_box((width * 0.9, 0.05, 0.3), (0, clear + body_h + 0.15, length / 2 - 0.2)))
    return parts


def _airplane(rng):
    length = rng.uniform(3.0, 4.0)
    r = length * rng.uniform(0.05, 0.08)
    span = length * rng.uniform(0.8, 1.3)
    chord = length * rng.uniform(0.12, 0.22)
    parts = [_cylinder(r, length * 0.75, (0, 0, 0), axis="z")]
    parts.append(_cone(r, length * 0.15, (0, 0, -length * 0.45), axis="z", flip=True))  # nose towards -z
    parts.append(_cone(r, length * 0.1, (0, 0, length * 0.425), axis="z"))
    wing_z = rng.uniform(-0.1, 0.1) * length
    sweep = rng.uniform(0.0, 0.5)
    for sx in (-1, 1):
        wing = _box((span / 2, r * 0.25, chord), (sx * span / 4, -r * 0.3, wing_z))
        _rotate(wing, "y", -sx * sweep, (0, 0, wing_z))
        parts.append(wing)
        tail = _box((span * 0.18, r * 0.2, chord * 0.5), (sx * span * 0.09, 0, length * 0.36))
        parts.append(tail)
        if rng.random() < 0.6:  # engines under the wings
            parts.append(_cylinder(r * 0.4, chord * 0.9, (sx * span * 0.18, -r * 0.9, wing_z - chord * 0.3),
                                   axis="z"))
    parts.append(_box((r * 0.2, length * 0.12, chord * 0.6), (0, length * 0.06 + r * 0.5, length * 0.36)))
    return parts


def _lamp(rng):
    base_r, base_t = rng.uniform(0.08, 0.15), rng.uniform(0.02, 0.05)
    pole_h, pole_r = rng.uniform(0.3, 0.7), rng.uniform(0.008, 0.02)
    parts = [_cylinder(base_r, base_t, (0, base_t / 2, 0), resolution=32)]
    if rng.random() < 0.5:  # straight
        parts.append(_cylinder(pole_r, pole_h, (0, base_t + pole_h / 2, 0)))
        top = np.array([0, base_t + pole_h, 0])
    else:  # bent arm
        low = pole_h * rng.uniform(0.4, 0.7)
        parts.append(_cylinder(pole_r, low, (0, base_t + low / 2, 0)))
        arm = rng.uniform(0.15, 0.3)
        a = _cylinder(pole_r, arm, (0, base_t + low + arm / 2, 0))
        angle = rng.uniform(0.4, 1.0)
        _rotate(a, "x", angle, (0, base_t + low, 0))
        parts.append(a)
        top = np.array([0, base_t + low + arm * np.cos(angle), -arm * np.sin(angle)])
    shade_r, shade_h = rng.uniform(0.08, 0.18), rng.uniform(0.08, 0.2)
    kind = rng.integers(3)
    if kind == 0:
        parts.append(_cone(shade_r, shade_h, top - (0, shade_h * 0.3, 0), axis="y"))
    elif kind == 1:
        parts.append(_cylinder(shade_r, shade_h, top + (0, shade_h * 0.3, 0), resolution=32))
    else:
        parts.append(_sphere(shade_r, top + (0, shade_r * 0.5, 0), scale=(1, rng.uniform(0.6, 1.0), 1)))
    return parts


_BUILDERS = {"chair": _chair, "table": _table, "car": _car, "airplane": _airplane, "lamp": _lamp}


def shape_mesh(name: str, seed: int):
    """The open3d TriangleMesh of shape `seed` of class `name`, in the canonical frame (`CANONICAL`)."""
    o3d = open3d_module()
    rng = np.random.default_rng([CLASSES.index(check_class(name)), int(seed)])
    mesh = o3d.geometry.TriangleMesh()
    for part in _BUILDERS[name](rng):
        mesh += part
    lo, hi = mesh.get_min_bound(), mesh.get_max_bound()
    mesh.translate(-(lo + hi) / 2)
    mesh.scale(1.0 / float(np.max(hi - lo)), center=(0, 0, 0))
    mesh.compute_triangle_normals()
    return mesh


def sample_points(mesh, n: int, seed: int) -> np.ndarray:
    """(n, 3) float32 points on the mesh surface by Poisson disk (open3d's sample elimination from 5n uniform
    samples), seeded."""
    o3d = open3d_module()
    if not 1 <= n <= MAX_POINTS:
        raise InputError(f"point count must lie in [1, {MAX_POINTS}], got {n}")
    o3d.utility.random.seed(int(seed) % (2**31))
    pcd = mesh.sample_points_poisson_disk(int(n), init_factor=5)
    return np.asarray(pcd.points, dtype=np.float32)


def shape_points(name: str, seed: int, n: int = 2048) -> np.ndarray:
    """(n, 3) float32 points of shape `seed` of class `name`."""
    return sample_points(shape_mesh(name, seed), n, seed)


def dataset(name: str, split: str, count: int, n: int = 2048, start: int = 0) -> np.ndarray:
    """(count, n, 3) float32: shapes start .. start + count - 1 of `split` of class `name`."""
    check_class(name)
    return np.stack([shape_points(name, split_seed(split, start + i), n) for i in range(count)])


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/ditlab/vision3d (default ~/.cache/ditlab/vision3d): generated datasets kept between runs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ditlab" / "vision3d"


def cached_dataset(name: str, split: str, count: int, n: int = 2048) -> np.ndarray:
    """`dataset(name, split, count, n)`, generated once and then read from `cache_dir()` (a pure function of its
    arguments, so the file is a cache, never a source of truth)."""
    check_class(name)
    path = cache_dir() / f"shapes-{name}-{split}-{count}x{n}.npy"
    if path.is_file():
        return np.load(path)
    points = dataset(name, split, count, n)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, points)

    atomic_write(path, write)
    return points
