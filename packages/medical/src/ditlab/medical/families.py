"""Volume families unlike the torso phantom (`data.make_phantom`): the out-of-distribution benchmark's test data,
and a broad mix for training the prior.

Every generator is seeded and returns HU (float32, (X, Y, Z) in RAS order, air outside each slice's inscribed
circle, like the torso phantom). Seeds follow the project's split: test seeds 0+, validation seeds 100+,
training seeds 100000+, and "user" seeds 50000+ for fine-tuning (`SPLITS`); the benchmark scores test seeds,
settings are chosen on validation seeds.

- `ellipses`: analytic piecewise-constant phantoms: a body ellipsoid holding 6-16 random ellipsoids of random
  HU (overlaps add, as in Shepp-Logan), the whole set seen through a random oblique rotation (the volume is an
  oblique acquisition of an object aligned elsewhere); written with that oblique affine (`family_affine`).
- `texture`: smooth random-field textures with sharp edges: a thresholded Gaussian random field splits a body
  into 3-5 tissue classes with hard boundaries, each class a base HU plus its own smooth texture.
- `head`: a head-like generator of nested shells (skin, skull with a diploe, CSF, grey and white matter) whose
  radii carry angular harmonics (the fine folds of the cortex), with ventricles, air sinuses and calcifications.
- `leaves`: training only: natural-image-like textures (a dead-leaves model of occluding balls with power-law
  radii, plus 1/f noise), mapped to a random HU window.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from ditlab.core.errors import InputError

FAMILIES = ("ellipses", "texture", "head")
"""The out-of-distribution families the benchmark scores (never the training-only `leaves`)."""
TRAIN_FAMILIES = (*FAMILIES, "leaves")
SPLITS = {"test": 0, "validation": 100, "user": 50_000, "train": 100_000}
"""The first seed of each split; a split's seeds are first, first + 1, ... "user" seeds stand in for a user's own
scans in the fine-tuning benchmark: never in the prior's training mix, never scored."""


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates: x, y in [-1, 1] across the slice, z in [-1, 1] scaled by the aspect (Z / X)."""
    nx, ny, nz = shape
    zr = nz / max(nx, ny)
    return np.meshgrid(np.linspace(-1, 1, nx, dtype=np.float32), np.linspace(-1, 1, ny, dtype=np.float32),
                       np.linspace(-zr, zr, nz, dtype=np.float32), indexing="ij")


def _circle(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, _ = _grid(shape)
    return x ** 2 + y ** 2 <= 0.98


def _field(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """A smooth Gaussian random field of unit std, `sigma` in units of the slice side."""
    n = max(shape[0], shape[1])
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma * n, mode="wrap")
    return f / (f.std() + 1e-12)


def _finish(hu: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    hu = np.where(_circle(shape), hu, -1000.0)
    return np.ascontiguousarray(np.clip(hu, -1000, 1000)).astype(np.float32)


def oblique_rotation(seed: int) -> np.ndarray:
    """The `ellipses` family's random oblique rotation (3 x 3): tilts of up to 25 degrees about X and Y, any
    angle about Z."""
    rng = np.random.default_rng([seed, 7])
    angles = rng.uniform(-25, 25, 2).tolist() + [rng.uniform(-180, 180)]
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix().astype(np.float32)


def ellipses(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """An analytic piecewise-constant phantom of random ellipsoids seen through a random oblique rotation."""
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)
    rot = oblique_rotation(seed)
    pts = np.stack([x, y, z], -1) @ rot.T  # object coordinates of every voxel
    u, v, w = pts[..., 0], pts[..., 1], pts[..., 2]

    def ellipsoid(c, r, angle) -> np.ndarray:
        ca, sa = np.cos(angle), np.sin(angle)
        a, b = (u - c[0]) * ca + (v - c[1]) * sa, -(u - c[0]) * sa + (v - c[1]) * ca
        return (a / r[0]) ** 2 + (b / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2 <= 1

    hu = np.full(shape, -1000.0, dtype=np.float32)
    body_r = (rng.uniform(0.7, 0.9), rng.uniform(0.55, 0.85), rng.uniform(1.0, 2.5))
    hu[ellipsoid((0, 0, 0), body_r, rng.uniform(0, np.pi))] = rng.uniform(-100, 100)
    for _ in range(int(rng.integers(6, 17))):
        c = (rng.uniform(-0.5, 0.5) * body_r[0], rng.uniform(-0.5, 0.5) * body_r[1], rng.uniform(-0.6, 0.6))
        r = (rng.uniform(0.04, 0.35), rng.uniform(0.04, 0.35), rng.uniform(0.1, 0.8))
        value = rng.choice([rng.uniform(-900, -400), rng.uniform(-150, 150), rng.uniform(200, 900)], p=[.2, .5, .3])
        m = ellipsoid(c, r, rng.uniform(0, np.pi)) & (hu > -1000)
        hu[m] += value - (0 if rng.random() < 0.5 else hu[m].mean() if m.any() else 0)  # overlaps add or replace
    return _finish(hu, shape)


def texture(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smooth random-field textures with sharp edges: a thresholded random field splits a body into classes."""
    rng = np.random.default_rng(seed)
    x, y, _ = _grid(shape)
    k = int(rng.integers(3, 6))
    labels = _field(rng, shape, rng.uniform(0.06, 0.14))
    edges = np.quantile(labels, np.sort(rng.uniform(0.1, 0.9, k - 1)))
    cls = np.digitize(labels, edges)  # sharp boundaries between classes
    base = rng.uniform(-200, 400, k)
    if rng.random() < 0.5:
        base[rng.integers(k)] = rng.uniform(-900, -600)  # one lung-like class
    hu = base[cls].astype(np.float32)
    for i in range(k):  # each class its own smooth texture, 15-80 HU
        hu += (cls == i) * rng.uniform(15, 80) * _field(rng, shape, rng.uniform(0.02, 0.06))
    ax, ay = rng.uniform(0.7, 0.92), rng.uniform(0.55, 0.9)
    wob = 1 + 0.05 * _field(rng, shape, 0.25)
    body = (x / ax) ** 2 + (y / ay) ** 2 <= wob
    return _finish(np.where(body, hu, -1000.0), shape)


def head(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A head-like phantom: nested shells with folded boundaries, ventricles, sinuses and calcifications."""
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)
    ax, ay = rng.uniform(0.62, 0.72), rng.uniform(0.78, 0.9)  # the head is longer front to back (Y)
    shrink = np.sqrt(np.clip(1 - (z / rng.uniform(1.2, 2.0)) ** 2, 0.2, 1))  # narrower towards the vertex
    theta = np.arctan2(y / ay, x / ax)
    r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2) / shrink

    def harmonics(ks: range, amp: float) -> np.ndarray:
        out = np.zeros_like(r)
        for k in ks:
            weight = amp / np.sqrt(k) * rng.normal()
            phase = rng.uniform(0, 2 * np.pi) + k * z * rng.normal(0, 0.5)  # folds that drift along z
            out += weight * np.cos(k * theta + phase)
        return out

    outer = 1 + harmonics(range(2, 5), 0.02)
    skull_out, skull_in = outer - rng.uniform(0.04, 0.06), outer - rng.uniform(0.12, 0.16)
    cortex = skull_in - rng.uniform(0.03, 0.05) + harmonics(range(3, 6), 0.01)
    folds = harmonics(range(14, 30), 0.05)  # the grey-white boundary's fine folds (gyri)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[r <= outer] = rng.uniform(20, 60)  # scalp
    hu[r <= skull_out] = rng.uniform(900, 1000)  # cortical bone
    diploe = (r <= skull_out - 0.015) & (r >= skull_in + 0.015)
    hu[diploe] = rng.uniform(350, 550) + 120 * _field(rng, shape, 0.02)[diploe]
    hu[r <= skull_in] = rng.uniform(0, 15)  # CSF
    grey, white = rng.uniform(35, 45), rng.uniform(22, 30)
    hu[r <= cortex] = grey
    hu[r <= 0.72 * cortex + folds] = white
    for side in (-1, 1):  # lateral ventricles, crescent-like
        vx, vy = side * rng.uniform(0.08, 0.14), rng.uniform(-0.05, 0.1)
        vent = ((x - vx) / (ax * rng.uniform(0.06, 0.1))) ** 2 + ((y - vy) / (ay * rng.uniform(0.25, 0.35))) ** 2 \
            + (z / rng.uniform(0.15, 0.3)) ** 2 <= 1
        hu[vent] = rng.uniform(0, 10)
    for _ in range(int(rng.integers(1, 4))):  # air sinuses in the frontal bone
        cx, cy = rng.uniform(-0.2, 0.2), ay * rng.uniform(0.7, 0.85)
        s = rng.uniform(0.04, 0.08)
        hu[((x - cx) ** 2 + (y - cy) ** 2) / s ** 2 + (z / rng.uniform(0.1, 0.3)) ** 2 <= 1] = rng.uniform(-950, -800)
    brain = np.argwhere(r <= 0.7 * cortex)
    for _ in range(int(rng.integers(0, 4))):  # small calcifications
        i, j, k = brain[rng.integers(len(brain))]
        hu[((x - x[i, j, k]) ** 2 + (y - y[i, j, k]) ** 2 + (z - z[i, j, k]) ** 2) <= rng.uniform(0.01, 0.025) ** 2] = \
            rng.uniform(150, 400)
    inside = hu > -1000
    hu = np.where(inside, (hu + 1000) * (1 + 0.01 * _field(rng, shape, 0.04)) - 1000, hu)
    return _finish(hu, shape)


def leaves(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Natural-image-like texture for training: dead leaves (occluding balls, power-law radii) plus 1/f noise,
    mapped to a random HU window, sometimes inside a body outline."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    img = np.zeros(shape, dtype=np.float32)
    filled = np.zeros(shape, dtype=bool)
    ii, jj, kk = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    r_min, r_max = 1.5, max(nx, ny) / 3
    for _ in range(400):  # front to back: a ball only paints what is still empty
        u = rng.random()
        rad = (r_min ** -2 + u * (r_max ** -2 - r_min ** -2)) ** -0.5  # density ~ r^-3 (scale-invariant)
        c = rng.uniform(0, (nx, ny, nz))
        m = ~filled & (((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * 2) ** 2) <= rad ** 2)
        img[m] = rng.random() + 0.15 * rng.standard_normal() * (ii[m] - c[0]) / rad  # a shaded leaf
        filled |= m
        if filled.all():
            break
    spectrum = np.fft.fftn(rng.standard_normal(shape))
    f = np.sqrt(sum(np.fft.fftfreq(n)[tuple(slice(None) if a == d else None for d in range(3))] ** 2
                    for a, n in enumerate(shape)))
    pink = np.real(np.fft.ifftn(spectrum / np.maximum(f, 1 / max(shape)) ** rng.uniform(1.0, 1.5)))
    img = img + rng.uniform(0.05, 0.3) * pink / (pink.std() + 1e-12)
    lo, hi = np.quantile(img, (0.01, 0.99))
    img = np.clip((img - lo) / (hi - lo + 1e-12), 0, 1)
    w_lo = rng.uniform(-1000, 200)
    hu = w_lo + rng.uniform(300, 1800) * img
    if rng.random() < 0.5:
        x, y, _ = _grid(shape)
        hu = np.where((x / rng.uniform(0.6, 0.95)) ** 2 + (y / rng.uniform(0.5, 0.95)) ** 2 <= 1, hu, -1000.0)
    return _finish(hu, shape)


GENERATORS = {"ellipses": ellipses, "texture": texture, "head": head, "leaves": leaves}


def make_volume(family: str, shape: tuple[int, int, int] = (64, 64, 16), seed: int = 0) -> np.ndarray:
    """A seeded volume of `family` (one of `TRAIN_FAMILIES`) in HU, (X, Y, Z) with every side >= 8."""
    if family not in GENERATORS:
        raise InputError(f"unknown family {family!r}; expected one of {TRAIN_FAMILIES}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"expected a 3D shape (X, Y, Z) with every side >= 8, got {shape}")
    return GENERATORS[family](shape, int(seed))


def family_affine(family: str, shape: tuple[int, int, int], seed: int,
                  spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> np.ndarray:
    """The affine a family's volume is written with: centred, `spacing` mm, oblique for `ellipses` (its
    rotation), axis-aligned RAS otherwise."""
    rot = oblique_rotation(seed) if family == "ellipses" else np.eye(3, dtype=np.float32)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def split_seeds(split: str, n: int) -> list[int]:
    """The first `n` seeds of `split` ("test", "validation" or "train")."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return list(range(SPLITS[split], SPLITS[split] + n))
