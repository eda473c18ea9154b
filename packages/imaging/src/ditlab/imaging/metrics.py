"""The field's super-resolution and restoration metrics, with the field's conventions, so our numbers sit next to
the papers': PSNR and SSIM on the luma Y of MATLAB's `rgb2ycbcr` (BT.601 limited range, 16..235 on the 0..255
scale) after cropping `border` (= the scale) pixels on each side, as BasicSR computes them; plus RGB PSNR, the
colour bias and the tile-seam energy that users ask about.

Images are numpy float arrays in [0, 1]: (H, W, 3) RGB, or (H, W) / (H, W, 1) grey. Values are used as given:
neither clipped nor rounded to 8 bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ditlab.core.errors import InputError

Y_WEIGHTS = np.array([65.481, 128.553, 24.966])  # MATLAB rgb2ycbcr: R, G, B in [0, 1] -> Y on the 0..255 scale
Y_OFFSET = 16.0
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004, with L = 255
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def _image(img: np.ndarray) -> np.ndarray:
    """`img` as float64 (H, W, C) with C = 1 or 3."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise InputError(f"expected an image (H, W, 3) RGB or (H, W) / (H, W, 1) grey, got shape {np.shape(img)}")
    return a


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.shape(pred) != np.shape(ref):
        raise InputError(f"prediction and reference differ in shape: {np.shape(pred)} vs {np.shape(ref)}")
    return _image(pred), _image(ref)


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    h, w = a.shape[:2]
    if border < 0 or 2 * border >= min(h, w):
        raise InputError(f"border must be >= 0 and leave pixels of an image {h} x {w}, got {border}")
    return a[border:h - border, border:w - border]


def _y(a: np.ndarray) -> np.ndarray:
    return a @ Y_WEIGHTS + Y_OFFSET if a.shape[2] == 3 else a[..., 0] * 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma Y (H, W) float64 on the 0..255 scale: 16 + 65.481 R + 128.553 G + 24.966 B (MATLAB `rgb2ycbcr`, 16..235);
    a grey image is taken as Y itself, times 255 (as BasicSR does for 1-channel images)."""
    return _y(_image(img))


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def psnr_y(pred: np.ndarray, ref: np.ndarray, border: int) -> float:
    """PSNR in dB on Y (peak 255) after cropping `border` pixels on each side; inf for identical images."""
    p, r = _pair(pred, ref)
    return _psnr(_crop(_y(p), border), _crop(_y(r), border), 255.0)


def psnr_rgb(pred: np.ndarray, ref: np.ndarray, border: int) -> float:
    """PSNR in dB over all channels in [0, 1] units (peak 1) after cropping `border` pixels on each side; inf for
    identical images."""
    p, r = _pair(pred, ref)
    return _psnr(_crop(p, border), _crop(r, border), 1.0)


def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    g = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_y(pred: np.ndarray, ref: np.ndarray, border: int) -> float:
    """SSIM (Wang et al. 2004) on Y (0..255, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2) after cropping `border`:
    11 x 11 Gaussian window, sigma 1.5, 'valid' filtering (MATLAB `ssim_index`, BasicSR), mean of the map."""
    p, r = _pair(pred, ref)
    x, y = _crop(_y(p), border), _crop(_y(r), border)
    if min(x.shape) < SSIM_WINDOW:
        raise InputError(f"ssim_y needs at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels after the border crop, "
                         f"got {x.shape[0]} x {x.shape[1]}")
    g, k = _gaussian_window(), SSIM_WINDOW // 2
    stats = np.stack([x, y, x * x, y * y, x * y])  # (5, H, W): the five local moments, filtered at once
    for axis in (1, 2):
        stats = ndimage.correlate1d(stats, g, axis=axis)
    mu_x, mu_y, xx, yy, xy = stats[:, k:-k, k:-k]  # 'valid': windows that lie inside the image
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def colour_bias(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean per-channel bias pred - ref in [0, 1] units, shape (C,) (C = 1 for grey): the colour shift a colour fix
    has to remove."""
    p, r = _pair(pred, ref)
    return (p - r).mean(axis=(0, 1))


def max_colour_bias(pred: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute per-channel mean bias in [0, 1] units (the goal: <= 1/255)."""
    return float(np.abs(colour_bias(pred, ref)).max())


def _seam_mask(seams: Sequence[int], n: int, width: int, name: str) -> np.ndarray:
    """Boolean mask over the n - 1 boundaries (index b - 1 for the boundary b between pixels b - 1 and b)."""
    mask = np.zeros(n - 1, dtype=bool)
    for s in seams:
        if not 1 <= s <= n - 1:
            raise InputError(f"seam {name}={s} is not a boundary between pixels: expected 1..{n - 1}")
        mask[max(s - width, 0):s + width - 1] = True
    return mask


def seam_energy(img: np.ndarray, seams_x: Sequence[int], seams_y: Sequence[int], width: int = 1,
                period: int = 1) -> tuple[float, float]:
    """(squared luma gradient across the tile seams, what the interior's boundaries predict there): the two terms
    of `seam_energy_ratio`, to pool over several images. A seam at x lies between columns x - 1 and x (rows
    likewise for `seams_y`); the boundaries b with |b - seam| < `width` count as seam. Columns and rows are compared
    each with their own interior, so anisotropic texture does not bias the ratio; with `period` (the upscaling
    factor) each seam boundary is compared with the interior boundaries at the same position modulo `period`, since
    an upscaled image's gradient energy varies with the sub-pixel phase (bicubic's by ~10% at x4)."""
    if width < 1:
        raise InputError(f"width must be >= 1 boundary, got {width}")
    if period < 1:
        raise InputError(f"period must be >= 1, got {period}")
    if not len(seams_x) and not len(seams_y):
        raise InputError("seam_energy needs at least one seam in seams_x or seams_y")
    y = _y(_image(img))
    h, w = y.shape
    col_energy = (np.diff(y, axis=1) ** 2).sum(axis=0)  # (W - 1,): across each column boundary, summed over rows
    row_energy = (np.diff(y, axis=0) ** 2).sum(axis=1)  # (H - 1,)
    seam, expected = 0.0, 0.0
    for energy, mask, name in ((col_energy, _seam_mask(seams_x, w, width, "x"), "x"),
                               (row_energy, _seam_mask(seams_y, h, width, "y"), "y")):
        if not mask.any():
            continue
        if mask.all():
            raise InputError(f"the seams in {name} cover every boundary: no interior left to compare with")
        phase = np.arange(1, len(energy) + 1) % period  # boundary b = index + 1
        seam += float(energy[mask].sum())
        for ph in np.unique(phase[mask]):
            same = ~mask & (phase == ph)
            if not same.any():
                raise InputError(f"no interior boundary in {name} at phase {ph} of period {period} to compare with")
            expected += float((mask & (phase == ph)).sum() * energy[same].mean())
    return seam, expected


def seam_energy_ratio(img: np.ndarray, seams_x: Sequence[int], seams_y: Sequence[int], width: int = 1,
                      period: int = 1) -> float:
    """Squared luma gradient across the tile seams over what the interior's boundaries predict (`seam_energy`):
    1.0 = seams indistinguishable (the goal: within 10%). One image's content alone moves it; pool `seam_energy`
    over many crops to measure the tiling."""
    seam, expected = seam_energy(img, seams_x, seams_y, width, period)
    if expected == 0:
        return 1.0 if seam == 0 else float("inf")
    return seam / expected


def evaluate(pred: np.ndarray, ref: np.ndarray, scale: int) -> dict[str, float]:
    """The benchmark's numbers for one image: `psnr_y`, `ssim_y`, `psnr_rgb` (border = `scale`) and
    `colour_bias_255`, the largest per-channel mean bias over the whole image in 1/255 units."""
    return {"psnr_y": psnr_y(pred, ref, scale), "ssim_y": ssim_y(pred, ref, scale),
            "psnr_rgb": psnr_rgb(pred, ref, scale), "colour_bias_255": 255.0 * max_colour_bias(pred, ref)}
