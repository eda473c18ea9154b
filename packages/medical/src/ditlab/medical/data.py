"""Synthetic CT volumes this project generates (seeded), and the HU window conventions.

`make_phantom` draws a torso-like volume in HU: a body ellipse with a fat layer, lungs, organs, a
spine, vessels and low-contrast lesions, all ellipsoids whose cross-sections change smoothly along z,
with a smooth multiplicative texture of a few % on the attenuation (HU + 1000). Voxels are (X, Y, Z)
in RAS order; written files get an anisotropic 0.8 x 0.8 x 2.5 mm spacing. `make_ood_volume` gives
out-of-distribution volumes (MONAI's `create_test_image_3d` spheres with noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ditlab.core.errors import InputError
from ditlab.medical.io import Volume, save_volume
from ditlab.medical.operators import HU_WINDOW, hu_to_unit

SIZES = {"quick": (64, 64, 32), "full": (128, 128, 64)}
SPACING = (0.8, 0.8, 2.5)  # mm, X Y Z

def _shape(size: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(size, str):
        if size not in SIZES:
            raise InputError(f"unknown size {size!r}; expected one of {sorted(SIZES)} or a shape (X, Y, Z)")
        return SIZES[size]
    shape = tuple(int(n) for n in size)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"expected a 3D shape (X, Y, Z) with every side >= 8, got {size}")
    return shape


def make_phantom(shape: str | tuple[int, int, int] = (128, 128, 64), seed: int = 0, texture: float = 0.03,
                 n_lesions: int = 4) -> np.ndarray:
    """A seeded torso-like CT phantom in HU (float32, (X, Y, Z) in RAS order) within each slice's inscribed circle.

    `shape` is "quick" (64, 64, 32), "full" (128, 128, 64) or any (X, Y, Z) with sides >= 8; `texture` is
    the std of the smooth multiplicative texture on the attenuation.
    """
    nx, ny, nz = _shape(shape)
    rng = np.random.default_rng(seed)
    # normalised coordinates: x, y in [-1, 1] across the slice, z in [-1, 1] along the volume
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (nx, ny, nz)), indexing="ij")

    def wobble(amp: float) -> np.ndarray:
        """A smooth scale profile along z: cross-sections swell and shrink by about `amp`."""
        return 1 + amp * np.sin(np.pi * z * rng.uniform(0.7, 1.3) + rng.uniform(0, 2 * np.pi))

    def ellipsoid(cx: float, cy: float, cz: float, rx: float, ry: float, rz: float, angle: float = 0.0,
                  k: np.ndarray | float = 1.0) -> np.ndarray:
        """Mask of an ellipsoid rotated in-plane by `angle`, its in-plane radii scaled by `k` along z."""
        c, s = np.cos(angle), np.sin(angle)
        u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
        return (u / (rx * k)) ** 2 + (v / (ry * k)) ** 2 + ((z - cz) / rz) ** 2 <= 1

    hu = np.full((nx, ny, nz), -1000.0, dtype=np.float32)
    bx, by = rng.uniform(0.72, 0.84), rng.uniform(0.52, 0.64)
    k = wobble(0.04)
    hu[ellipsoid(0, 0, 0, bx, by, 1e6, k=k)] = rng.uniform(-110, -80)  # subcutaneous fat
    hu[ellipsoid(0, 0, 0, bx - 0.06, by - 0.06, 1e6, k=k)] = rng.uniform(30, 50)  # soft tissue
    for side in (-1, 1):  # lungs, upper part of the volume
        hu[ellipsoid(side * rng.uniform(0.3, 0.38), rng.uniform(-0.05, 0.1), rng.uniform(0.3, 0.7),
                     rng.uniform(0.2, 0.26), rng.uniform(0.26, 0.34), rng.uniform(0.7, 1.0),
                     angle=side * rng.uniform(0, 0.3), k=wobble(0.05))] = rng.uniform(-880, -820)
    organs = [(-0.3, 0.1, -0.5, 0.3, 0.25), (0.35, 0.05, -0.6, 0.18, 0.14), (-0.2, -0.25, -0.7, 0.1, 0.08),
              (0.2, -0.25, -0.7, 0.1, 0.08)]  # liver, spleen, kidneys: (cx, cy, cz, rx, ry)
    for cx, cy, cz, rx, ry in organs:
        hu[ellipsoid(cx + rng.normal(0, 0.03), cy + rng.normal(0, 0.03), cz + rng.normal(0, 0.1),
                     rx * rng.uniform(0.85, 1.15), ry * rng.uniform(0.85, 1.15), rng.uniform(0.4, 0.7),
                     angle=rng.uniform(-0.5, 0.5), k=wobble(0.05))] = rng.uniform(50, 80)
    spine_y = -by + 0.17
    spine = ellipsoid(0, spine_y, 0, 0.09, 0.08, 1e6)
    hu[spine] = np.where(np.cos(np.pi * 7 * z) > 0.6, 280, 700)[spine]  # vertebrae with discs between
    hu[ellipsoid(0, spine_y, 0, 0.04, 0.035, 1e6)] = 30  # spinal canal
    hu[ellipsoid(rng.uniform(0.08, 0.14), spine_y + 0.16, 0, 0.055, 0.055, 1e6)] = rng.uniform(150, 200)  # aorta
    hu[ellipsoid(-rng.uniform(0.08, 0.14), spine_y + 0.16, 0, 0.05, 0.045, 1e6)] = rng.uniform(100, 130)  # cava
    soft = (hu > 0) & (hu < 100)
    for _ in range(n_lesions):  # low-contrast lesions inside soft tissue
        candidates = np.argwhere(soft)
        if len(candidates) == 0:
            break
        i, j, k = candidates[rng.integers(len(candidates))]
        les = ellipsoid(x[i, j, k], y[i, j, k], z[i, j, k], rng.uniform(0.04, 0.08), rng.uniform(0.04, 0.08),
                        rng.uniform(0.1, 0.25), angle=rng.uniform(0, np.pi)) & soft
        hu[les] += rng.choice([-1, 1]) * rng.uniform(20, 40)
    if texture > 0:  # smooth field, z-coherent over a few slices, on the attenuation (not on air)
        field = gaussian_filter(rng.standard_normal((nx, ny, nz)).astype(np.float32),
                                sigma=(nx / 32, ny / 32, nz / 16))
        field /= field.std() + 1e-12
        hu = (hu + 1000) * (1 + texture * np.clip(field, -3, 3)) - 1000
    # the layout above has the patient's right at -x; RAS+ has it at +x (liver on the right): mirror X
    return np.ascontiguousarray(np.clip(hu, -1000, 1000)[::-1]).astype(np.float32)


def make_ood_volume(shape: str | tuple[int, int, int] = (128, 128, 64), seed: int = 0, noise: float = 0.05,
                    n_objects: int = 10) -> np.ndarray:
    """An out-of-distribution volume in HU: MONAI `create_test_image_3d` spheres on air, with uniform noise."""
    from monai.data import create_test_image_3d

    nx, ny, nz = _shape(shape)
    r_max = max(3, min(nx, ny, nz) // 3)
    img, _ = create_test_image_3d(nx, ny, nz, num_objs=n_objects, rad_max=r_max, rad_min=max(2, r_max // 3),
                                  noise_max=noise, num_seg_classes=1, random_state=np.random.RandomState(seed))
    return np.clip(-1000 + 1600 * img, -1000, 1000).astype(np.float32)


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """A RAS affine with the given spacing (mm) that puts the volume's centre at the world origin."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    return affine


def phantom_dataset(n: int, size: str | tuple[int, int, int] = "quick", seed: int = 0) -> list[np.ndarray]:
    """`n` phantoms in HU with seeds `seed`, `seed + 1`, ...: keep training, validation and test seeds apart."""
    return [make_phantom(_shape(size), seed=seed + i) for i in range(n)]


def write_phantoms(out_dir: str | Path, n: int, size: str | tuple[int, int, int] = "quick",
                   seed: int = 0) -> list[Path]:
    """Write `n` phantoms as `phantom_<seed>.nii.gz` (HU, RAS, 0.8 x 0.8 x 2.5 mm); return the paths."""
    out_dir = Path(out_dir)
    paths = []
    for i, hu in enumerate(phantom_dataset(n, size, seed)):
        affine = phantom_affine(hu.shape)
        vol = Volume(hu, affine, SPACING, source=f"make_phantom(seed={seed + i})")
        paths.append(save_volume(vol, out_dir / f"phantom_{seed + i:04d}.nii.gz"))
    return paths


def slices_for_training(n: int, size: str | tuple[int, int, int] = "quick", seed: int = 0,
                        window: tuple[float, float] = HU_WINDOW, min_body_fraction: float = 0.05) -> np.ndarray:
    """Axial slices (N, X, Y) of `n` phantoms windowed to [-1, 1], skipping slices with almost no body."""
    slices = []
    for hu in phantom_dataset(n, size, seed):
        unit = hu_to_unit(np.moveaxis(hu, 2, 0), *window)  # (Z, X, Y)
        slices.append(unit[(unit > 0.01).mean(axis=(1, 2)) >= min_body_fraction])
    return (2 * np.concatenate(slices) - 1).astype(np.float32)
