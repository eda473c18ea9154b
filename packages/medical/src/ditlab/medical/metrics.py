"""The field's image metrics, on a stated HU window: PSNR, SSIM (2D, per plane, 3D) and the data residual.

Both images are clipped to `window` first and the data range is the window's width, so a number is
only quoted together with its window (default (-1000, 1000) HU, MONAI's `ScaleIntensityRange`
convention). Volumes are (X, Y, Z) in RAS order: axial planes are fixed Z, coronal fixed Y,
sagittal fixed X.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ditlab.core.errors import InputError
from ditlab.core.metrics import psnr as core_psnr
from ditlab.medical.operators import HU_WINDOW, Operator, volume_to_slices

if TYPE_CHECKING:
    from ditlab.medical.acquisition import Measurement

Array = np.ndarray | torch.Tensor


def _np(x: Array) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _pair(x: Array, ref: Array, window: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    x, ref = _np(x), _np(ref)
    if x.shape != ref.shape:
        raise InputError(f"image and reference differ in shape: {x.shape} vs {ref.shape}")
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise InputError(f"window must be (low, high) with high > low, got {window}")
    return x.clip(lo, hi), ref.clip(lo, hi), hi - lo


def psnr(x: Array, ref: Array, window: tuple[float, float] = HU_WINDOW) -> float:
    """PSNR in dB of `x` against `ref` (any equal shapes), both clipped to `window`; peak = window width (core's
    `psnr`, capped at 100 dB for identical images)."""
    return core_psnr(*_pair(x, ref, window))


def ssim(x: Array, ref: Array, window: tuple[float, float] = HU_WINDOW) -> float:
    """SSIM of 2D images clipped to `window` (data range = its width): Wang et al. 2004, 11 x 11 Gaussian window
    with sigma 1.5, K1 = 0.01, K2 = 0.03 (skimage's implementation)."""
    x, ref, data_range = _pair(x, ref, window)
    if x.ndim != 2:
        raise InputError(f"ssim expects 2D images (H, W), got shape {x.shape}; use per_plane or ssim3d for volumes")
    if min(x.shape) < 11:
        raise InputError(f"ssim needs images of at least 11 x 11 (its Gaussian window), got shape {x.shape}")
    return float(structural_similarity(x, ref, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}  # the axis each plane holds fixed


def per_plane(x: Array, ref: Array, fn: Callable[..., float] = psnr, **kwargs: Any) -> dict[str, float]:
    """`fn(slice, ref_slice, **kwargs)` averaged over the slices of each plane of volumes (X, Y, Z)."""
    x, ref = _np(x), _np(ref)
    if x.ndim != 3 or x.shape != ref.shape:
        raise InputError(f"per_plane expects two volumes (X, Y, Z) of one shape, got {x.shape} and {ref.shape}")
    return {name: float(np.mean([fn(np.take(x, i, axis), np.take(ref, i, axis), **kwargs)
                                 for i in range(x.shape[axis])]))
            for name, axis in PLANES.items()}


def ssim3d(x: Array, ref: Array, window: tuple[float, float] = HU_WINDOW) -> float:
    """3D SSIM of volumes (X, Y, Z): MONAI `SSIMMetric(spatial_dims=3, data_range=1.0)` (Gaussian 11^3, sigma
    1.5) on the volumes normalised to [0, 1] over `window`; every side must be >= 11 voxels."""
    from monai.metrics import SSIMMetric

    x, ref, data_range = _pair(x, ref, window)
    if x.ndim != 3 or min(x.shape) < 11:
        raise InputError(f"ssim3d expects volumes (X, Y, Z) with every side >= 11, got shape {x.shape}")
    lo = float(window[0])
    a, b = (torch.from_numpy((v - lo) / data_range)[None, None].float() for v in (x, ref))
    return float(SSIMMetric(spatial_dims=3, data_range=1.0)(a, b).mean())


def data_residual(x: torch.Tensor, op: Operator, y: torch.Tensor) -> float:
    """Relative data residual ||A x - y|| / ||y|| of a reconstruction `x` (slices, window units)."""
    return float((op.forward(x.to(y.real.dtype)) - y).norm() / y.norm())


def slice_residuals(x: torch.Tensor, op: Operator, y: torch.Tensor) -> torch.Tensor:
    """Relative data residual ||A x_i - y_i|| / ||y_i|| of each slice of `x` (slices, window units)."""
    with torch.no_grad():
        res = (op.forward(x.to(y.real.dtype)) - y).abs().flatten(1).norm(dim=1)
        return res / y.abs().flatten(1).norm(dim=1).clamp(min=1e-12)


def _ssim_or_nan(x: Array, ref: Array, window: tuple[float, float]) -> float:
    return ssim(x, ref, window) if min(x.shape) >= 11 else float("nan")


def evaluate(rec_hu: np.ndarray, ref_hu: np.ndarray, meas: Measurement | None = None, result: Any = None,
             window: tuple[float, float] = HU_WINDOW) -> dict[str, float]:
    """PSNR and SSIM per plane and their means, 3D SSIM, the data residual (with `meas`), seconds and NFE (with
    a `reconstruct.Result`). SSIM needs 11 x 11 images: planes (and 3D SSIM) of volumes thinner than 11 voxels
    are left out.

    "psnr" (the headline, DiffusionMBIR's protocol) is the mean over the three planes of the mean per-slice PSNR;
    slices of air only weigh as much as slices through the body there, so an exactly flat background scores
    high. "psnr_volume" is the PSNR of the whole volume's mean squared error, which those slices cannot sway."""
    p = per_plane(rec_hu, ref_hu, psnr, window=window)
    out = {f"psnr_{k}": v for k, v in p.items()}
    out["psnr"] = float(np.mean(list(p.values())))
    out["psnr_volume"] = psnr(rec_hu, ref_hu, window=window)
    sizes = {"axial": rec_hu.shape[:2], "coronal": rec_hu.shape[::2], "sagittal": rec_hu.shape[1:]}
    q = {k: v for k, v in per_plane(rec_hu, ref_hu, _ssim_or_nan, window=window).items() if min(sizes[k]) >= 11}
    if q:
        out.update({f"ssim_{k}": v for k, v in q.items()})
        out["ssim"] = float(np.mean(list(q.values())))
    if min(rec_hu.shape) >= 11:
        out["ssim3d"] = ssim3d(rec_hu, ref_hu, window=window)
    if meas is not None:
        x = volume_to_slices(np.clip(rec_hu, HU_WINDOW[0], None))
        out["residual"] = data_residual(x, meas.operator, meas.y)
    if result is not None:
        out["seconds"], out["nfe"] = result.seconds, float(result.nfe)
    return out
