"""The classical methods every super-resolution and restoration result is compared with: bicubic / Lanczos /
nearest upscaling (PIL, float32), TV and wavelet denoising, Richardson-Lucy deblurring, light JPEG deblocking,
and the classical real-world pipeline (denoise, then bicubic).

Every function takes a float image in [0, 1], (H, W, C) or grey (H, W), and returns a new float32 image in
[0, 1] with the same channel layout; the input is never changed. `SR_BASELINES` and `RESTORE_BASELINES` name
them for the benchmark to loop over.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image
from skimage import restoration

from ditlab.core.errors import InputError

SRBaseline = Callable[[np.ndarray, int], np.ndarray]  # (lr, scale) -> sr
RestoreBaseline = Callable[[np.ndarray], np.ndarray]  # degraded -> restored, same size

# PIL's BICUBIC is Keys' a = -0.5 kernel, widened when downscaling (antialiased, like MATLAB `imresize`).
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
             "nearest": Image.Resampling.NEAREST}
UPSCALE_METHODS = tuple(_RESAMPLE)

TV_WEIGHT_COEF = 3.0  # denoise_tv: weight = 3 sigma^1.5 (fitted here: within 0.5 dB of the best weight, sigma 3-50/255)
DEJPEG_TV_WEIGHT = 0.005  # of 0.005-0.02, the one weight that never lowered PSNR here on JPEG quality 10-90
DEFAULT_PSF_SIGMA, DEFAULT_PSF_SIZE = 1.5, 21


def _image(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
        raise InputError(f"expected an image (H, W, C) or grey (H, W), got shape {np.shape(img)}")
    return a


def _out(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _channel_axis(a: np.ndarray) -> int | None:
    return -1 if a.ndim == 3 else None


def _per_channel(fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray) -> np.ndarray:
    """`fn` on each 2D channel of `a`, keeping its layout."""
    if a.ndim == 2:
        return fn(a)
    return np.stack([fn(a[..., c]) for c in range(a.shape[2])], axis=-1)


def upscale(lr: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
    """(H, W, C) -> (H * scale, W * scale, C) with PIL's `method` resampling per channel in float32 (mode "F"),
    clipped to [0, 1]: "bicubic" (a = -0.5), "lanczos" (a = 3) or "nearest"."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    if method not in _RESAMPLE:
        raise InputError(f"unknown upscaling method {method!r}; expected one of {', '.join(UPSCALE_METHODS)}")
    a = _image(lr)
    size = (a.shape[1] * scale, a.shape[0] * scale)  # PIL sizes are (width, height)
    return _out(_per_channel(lambda ch: np.asarray(Image.fromarray(ch).resize(size, _RESAMPLE[method])), a))


def noise_sigma(img: np.ndarray) -> float:
    """Gaussian noise sigma in [0, 1] units, averaged over channels (skimage `estimate_sigma`: the median absolute
    deviation of the finest wavelet detail coefficients, Donoho's estimator)."""
    a = _image(img)
    return float(restoration.estimate_sigma(a, channel_axis=_channel_axis(a), average_sigmas=True))


def denoise_tv(img: np.ndarray, weight: float | None = None) -> np.ndarray:
    """Chambolle TV denoising per channel; `weight` None: 3 sigma^1.5 from the estimated noise sigma (unchanged
    when no noise is found)."""
    a = _image(img)
    if weight is None:
        weight = TV_WEIGHT_COEF * noise_sigma(a) ** 1.5
    if weight <= 0:
        return _out(a)
    return _out(restoration.denoise_tv_chambolle(a, weight=weight, channel_axis=_channel_axis(a)))


def denoise_wavelet(img: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """BayesShrink soft thresholding of db2 wavelet coefficients (skimage), RGB in YCbCr; `sigma` the noise sigma
    in [0, 1] units, None: estimated per channel from the finest detail coefficients."""
    a = _image(img)
    rgb = a.ndim == 3 and a.shape[2] == 3
    return _out(restoration.denoise_wavelet(a, sigma=sigma, wavelet="db2", method="BayesShrink", mode="soft",
                                            convert2ycbcr=rgb, rescale_sigma=True, channel_axis=_channel_axis(a)))


def gaussian_psf(sigma: float = DEFAULT_PSF_SIGMA, size: int = DEFAULT_PSF_SIZE) -> np.ndarray:
    """Isotropic Gaussian blur kernel (size, size), float64, summing to 1 (size odd)."""
    if size < 1 or size % 2 == 0 or not sigma > 0:
        raise InputError(f"gaussian_psf expects an odd size >= 1 and sigma > 0, got size {size}, sigma {sigma}")
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return np.outer(g, g) / g.sum() ** 2


def deblur_richardson_lucy(img: np.ndarray, psf: np.ndarray | None = None, iterations: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution per channel with `psf` (2D, >= 0, summing to 1; None: `gaussian_psf()`, sigma
    1.5, 21 x 21), on the image reflect-padded by the PSF's half size so its borders do not ring."""
    psf = gaussian_psf() if psf is None else np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or (psf < 0).any() or not np.isclose(psf.sum(), 1.0, atol=1e-6):
        raise InputError(f"psf must be a 2D kernel >= 0 summing to 1, got shape {psf.shape}, sum {psf.sum():.6g}")
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    a = _image(img)
    ph, pw = psf.shape[0] // 2, psf.shape[1] // 2

    def deblur(ch: np.ndarray) -> np.ndarray:
        padded = np.pad(ch, ((ph, ph), (pw, pw)), mode="reflect")
        out = restoration.richardson_lucy(padded, psf.astype(np.float32), num_iter=iterations, clip=True)
        return out[ph:ph + ch.shape[0], pw:pw + ch.shape[1]]

    return _out(_per_channel(deblur, a))


def dejpeg(img: np.ndarray, weight: float = DEJPEG_TV_WEIGHT) -> np.ndarray:
    """Light JPEG deblocking: Chambolle TV per channel with a small fixed `weight` (0.005 gained 0.05-0.6 dB here
    on JPEG quality 10-90 and never lost; 0.01-0.02 suits quality <= 40 but costs up to 1 dB at 80-90)."""
    return denoise_tv(img, weight=weight)


def classical_realworld(lr: np.ndarray, scale: int) -> np.ndarray:
    """The classical real-world SR pipeline: wavelet denoising with the estimated noise (BayesShrink), then
    bicubic upscaling by `scale`."""
    return upscale(denoise_wavelet(lr), scale, "bicubic")


SR_BASELINES: dict[str, SRBaseline] = {
    "bicubic": partial(upscale, method="bicubic"),
    "lanczos": partial(upscale, method="lanczos"),
    "denoise+bicubic": classical_realworld,
}

RESTORE_BASELINES: dict[str, dict[str, RestoreBaseline]] = {
    "denoise": {"tv": denoise_tv, "wavelet": denoise_wavelet},
    "deblur": {"richardson-lucy": deblur_richardson_lucy},
    "jpeg": {"deblock": dejpeg},
}
