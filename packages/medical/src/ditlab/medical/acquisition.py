"""What was measured: the acquisition (sparse-view or limited-angle CT, parallel or fan beam, or Cartesian
MRI) and a volume's measurements with the metadata needed to write its reconstruction back.

One task vocabulary for the whole vertical: `TASKS`. CT slices that are not square are reconstructed on the
square grid of their longer side, padded with air and cropped back (the operators do it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.core.errors import InputError
from ditlab.medical.operators import MAX_VIEWS, MRI, FanBeam, Operator, ParallelBeam, mri_mask, volume_to_slices

TASKS = ("sparse-view", "limited-angle", "mri")
GEOMETRIES = ("parallel", "fan")


@dataclass
class Acquisition:
    """What was measured: sparse-view or limited-angle CT (parallel or fan beam), or Cartesian MRI.

    `views` lies in [2, MAX_VIEWS] (720: sparse-view and limited-angle CT need far fewer; the cap bounds the
    operators' memory)."""

    task: str = "sparse-view"
    views: int = 8
    angles: tuple[float, float] | None = None  # degrees; limited-angle default (0, 90)
    accel: float = 4.0
    mask: str = "uniform1d"
    geometry: str = "parallel"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.geometry not in GEOMETRIES:
            raise InputError(f"unknown geometry {self.geometry!r}; expected one of {GEOMETRIES}")
        if self.task == "mri":
            if not (isinstance(self.accel, int | float) and self.accel >= 1):
                raise InputError(f"MRI acceleration must be >= 1, got {self.accel}")
            return
        if int(self.views) != self.views or not 2 <= self.views <= MAX_VIEWS:
            raise InputError(f"views must be an integer in [2, {MAX_VIEWS}], got {self.views}")
        self.views = int(self.views)
        if self.task == "limited-angle" and self.angles is None:
            self.angles = (0.0, 90.0)
        if self.angles is not None:
            a = tuple(float(v) for v in self.angles)
            if len(a) != 2 or not 0 < a[1] - a[0] <= 360:
                raise InputError(f"angles must be (start_deg, end_deg) with 0 < end - start <= 360, "
                                        f"got {self.angles}")
            self.angles = a

    def operator(self, size: tuple[int, int], seed: int = 0) -> Operator:
        """The forward model for axial slices of `size` (X, Y) pixels (`seed` draws random MRI masks)."""
        h, w = (int(n) for n in size)
        if self.task == "mri":
            return MRI(mri_mask((h, w), self.accel, self.mask, seed=seed))
        cls = ParallelBeam if self.geometry == "parallel" else FanBeam
        return cls(self.views, max(h, w), angles=self.angles, image_shape=(h, w))

    def describe(self) -> str:
        if self.task == "mri":
            return f"MRI x{self.accel:g} ({self.mask})"
        span = "" if self.angles is None else f", {self.angles[0]:g}-{self.angles[1]:g} deg"
        return f"CT {self.task} {self.views} views ({self.geometry}{span})"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Measurement:
    """Measurements of a volume's axial slices, with what is needed to write the reconstruction back."""

    y: torch.Tensor  # (Z, ...) sinograms or k-space
    acquisition: Acquisition
    shape: tuple[int, int, int]  # (X, Y, Z) of the volume, RAS
    affine: np.ndarray  # RAS affine of the volume
    original_affine: np.ndarray | None = None
    noise: float = 0.0
    seed: int = 0
    source: str = ""

    @functools.cached_property
    def operator(self) -> Operator:
        """Built once: operators cache their sampling grids and norm."""
        return self.acquisition.operator(self.shape[:2], seed=self.seed)


def simulate(volume_hu: np.ndarray | torch.Tensor, acquisition: Acquisition | Operator, noise: float = 0.01,
             seed: int = 0, upsample: int = 2) -> tuple[torch.Tensor, Operator]:
    """Measure the axial slices of a volume (X, Y, Z) in HU; return (measurements, operator at 1x).

    `acquisition` is an `Acquisition` (its operator is built for the slices, `seed` drawing random MRI masks)
    or an operator built for them. Slices are windowed to [0, 1], upsampled `upsample` times (bicubic) and
    measured on the finer grid, then the detector is binned (CT) or k-space cropped (MRI) back to 1x:
    reconstructing at 1x does not commit the inverse crime. Gaussian noise of std `noise` x the RMS of each
    slice's measurements is added (complex for MRI, on the sampled points only).
    """
    if int(upsample) != upsample or upsample < 1:
        raise InputError(f"upsample must be an integer >= 1, got {upsample}")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    x = volume_to_slices(volume_hu)  # (B, H, W)
    B, H, W = x.shape
    op = acquisition.operator((H, W), seed=seed) if isinstance(acquisition, Acquisition) else acquisition
    fine = F.interpolate(x[:, None], scale_factor=upsample, mode="bicubic", align_corners=False)[:, 0].clamp(min=0)
    if isinstance(op, MRI):
        y = _fine_kspace(fine, (H, W), upsample) * op.mask
        sampled = op.mask.expand_as(y)
    else:
        y = op.refine(upsample).forward(fine).reshape(B, *op.shape, upsample).mean(-1) / upsample
        sampled = torch.ones_like(y, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    rms = torch.sqrt((y.abs() ** 2).sum((1, 2)) / sampled.sum((1, 2)))[:, None, None]
    e = torch.randn(y.shape, generator=gen)
    if y.is_complex():
        e = torch.complex(e, torch.randn(y.shape, generator=gen)) / math.sqrt(2) * op.mask
    return y + noise * rms * e, op


def _fine_kspace(fine: torch.Tensor, shape: tuple[int, int], upsample: int) -> torch.Tensor:
    """The centred k-space of 1x images from their `upsample`x version: crop the low frequencies, rescale, and
    undo the sub-pixel shift between the two grids' first pixels (their sample positions differ by
    (upsample - 1) / (2 upsample) of a 1x pixel)."""
    k = torch.fft.fftshift(torch.fft.fft2(fine, norm="ortho"), dim=(-2, -1)) / upsample
    crop = [slice(upsample * n // 2 - n // 2, upsample * n // 2 - n // 2 + n) for n in shape]
    k = k[:, crop[0], crop[1]]
    shift = (upsample - 1) / (2 * upsample)
    for axis, n in zip((-2, -1), shape, strict=True):
        freq = (torch.arange(n) - n // 2).to(torch.float64)
        ramp = torch.exp(2j * math.pi * freq * shift / n).to(k.dtype)
        k = k * (ramp[:, None] if axis == -2 else ramp)
    return k
