"""Image-quality metrics shared by the engine's benchmarks: the one PSNR of the project."""

from __future__ import annotations

import numpy as np
import torch

from ditlab.core.errors import InputError

PSNR_CAP = 100.0  # dB reported for identical inputs (an MSE of 0 has no finite PSNR)


def _float64(a: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def psnr(x: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray, data_range: float) -> float:
    """10 log10(data_range^2 / MSE) in dB over all elements of `x` against `ref` (torch or numpy, equal shapes),
    capped at `PSNR_CAP` (identical inputs); NaN when either holds a NaN."""
    x, ref = _float64(x), _float64(ref)
    if x.shape != ref.shape:
        raise InputError(f"psnr expects equal shapes, got {x.shape} and reference {ref.shape}")
    if not data_range > 0:
        raise InputError(f"psnr expects a positive data_range, got {data_range}")
    floor = data_range**2 / 10 ** (PSNR_CAP / 10)
    mse = np.maximum(np.mean((x - ref) ** 2), floor)  # np.maximum keeps a NaN
    return float(10 * np.log10(data_range**2 / mse))
