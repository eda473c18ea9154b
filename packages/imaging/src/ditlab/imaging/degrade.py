"""Degradations that turn a clean HR batch into the model's input: bicubic and Real-ESRGAN for x2/x4 SR, noise, blur
and JPEG for x1 restoration.

Tensors are batches (B, C, H, W) of floats in [0, 1]; randomness comes only from the `torch.Generator` passed in,
so a seeded generator gives the same degradation on every run. Degraded outputs are clamped to [0, 1] and rounded
to 8 bits, as the images users bring are 8-bit files. Real-ESRGAN's second-order pipeline (Wang et al. 2021) is
written here: basicsr-fixed has it, but needs a torchvision matching our pinned torch, which is not installed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.special import j1

from ditlab.core.errors import InputError

DEGRADATIONS = ("bicubic", "realesrgan")  # x2 / x4 super-resolution
TASKS = ("denoise", "deblur", "jpeg")  # x1 restoration
SR_SCALES = (2, 4)
RESIZE_METHODS = ("bicubic", "bilinear", "area", "nearest")
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_SIZES = tuple(range(7, 22, 2))  # odd sizes 7..21, as Real-ESRGAN samples them

DENOISE_SIGMA = (5.0, 50.0)  # /255
DEBLUR_SIGMA = (0.5, 3.0)  # px, kernel 21, plus 1/255 noise
DEBLUR_NOISE = 1.0  # /255
JPEG_QUALITY = (10, 60)


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise InputError(f"expected a float batch (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _pick(g: torch.Generator, options: Sequence, probs: Sequence[float] | None = None):
    weights = torch.tensor([1.0] * len(options) if probs is None else probs, dtype=torch.float64)
    return options[int(torch.multinomial(weights, 1, generator=g))]


# ---- resizing ---------------------------------------------------------------------------------------------------

def resize(x: torch.Tensor, size: tuple[int, int], method: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """Resize a batch to `size` (H, W), unclamped. `antialias` widens bicubic/bilinear when downscaling (as PIL and
    MATLAB's imresize do); "area" averages boxes; "nearest" picks the nearest pixel centre."""
    _check_batch(x)
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise InputError(f"resize size must be positive (H, W), got {size}")
    if method in ("bicubic", "bilinear"):
        return F.interpolate(x, size=size, mode=method, align_corners=False, antialias=antialias)
    if method == "area":
        return F.interpolate(x, size=size, mode="area")
    if method == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    raise InputError(f"unknown resize method {method!r}; expected one of {RESIZE_METHODS}")


def _check_scale(x: torch.Tensor, scale: int) -> tuple[int, int]:
    _check_batch(x)
    h, w = x.shape[-2:]
    if scale < 1 or h % scale or w % scale:
        raise InputError(f"image size {h} x {w} must be divisible by the scale {scale}")
    return h // scale, w // scale


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling by `scale` (H and W divisible by it), clamped to [0, 1]: the classic SR input."""
    return resize(hr, _check_scale(hr, scale), "bicubic").clamp(0, 1)


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscaling by `scale`, not clamped: the overshoot near edges is bicubic's own (clamp to show it)."""
    _check_batch(lr)
    h, w = lr.shape[-2:]
    return resize(lr, (h * scale, w * scale), "bicubic")


# ---- blur kernels -----------------------------------------------------------------------------------------------

def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size < 1 or size % 2 == 0:
        raise InputError(f"kernel size must be odd and positive, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    return torch.meshgrid(r, r, indexing="xy")  # x along columns, y along rows


def _quadratic(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """x^T Sigma^-1 x on the kernel grid, Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T."""
    if min(sigma_x, sigma_y) <= 0:
        raise InputError(f"kernel sigmas must be positive, got {sigma_x}, {sigma_y}")
    x, y = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y  # coordinates along the rotated axes
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(k: torch.Tensor) -> torch.Tensor:
    return (k / k.sum()).float()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> torch.Tensor:
    """A (size, size) Gaussian summing to 1, widest (`sigma_x`) along the direction `theta` (radians from the x axis,
    counter-clockwise as drawn with rows going down)."""
    return _normalised(torch.exp(-0.5 * _quadratic(size, sigma_x, sigma_y, theta)))


def generalized_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """Generalised Gaussian exp(-(x^T Sigma^-1 x / 2)^beta): beta < 1 heavier tails, beta > 1 flatter top."""
    return _normalised(torch.exp(-((0.5 * _quadratic(size, sigma_x, sigma_y, theta)) ** beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """Plateau-shaped kernel 1 / (1 + (x^T Sigma^-1 x)^beta): a flat top with slowly falling tails."""
    return _normalised(1 / (1 + _quadratic(size, sigma_x, sigma_y, theta) ** beta))


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass (2D sinc, Airy pattern) with cutoff `cutoff` in radians per pixel (pi = Nyquist), summing to
    1: its ringing mimics over-sharpening and ringing artefacts."""
    if not 0 < cutoff <= math.pi:
        raise InputError(f"sinc cutoff must be in (0, pi], got {cutoff}")
    x, y = _grid(size)
    r = torch.sqrt(x**2 + y**2).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        k = cutoff * j1(cutoff * r) / (2 * np.pi * r)
    k[r == 0] = cutoff**2 / (4 * np.pi)  # the limit at the centre
    return _normalised(torch.from_numpy(k))


def _pad_to(k: torch.Tensor, size: int) -> torch.Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


# ---- Real-ESRGAN ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PassConfig:
    """One pass of Real-ESRGAN's second-order degradation: blur, resize, noise (then JPEG). Noise sigmas in /255."""

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    beta_generalized: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_cutoff_small: tuple[float, float] = (math.pi / 3, math.pi)  # kernel sizes < 13
    sinc_cutoff_large: tuple[float, float] = (math.pi / 5, math.pi)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_methods: tuple[str, ...] = ("area", "bilinear", "bicubic")
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


@dataclass(frozen=True)
class RealESRGANConfig:
    """Every range of Real-ESRGAN's pipeline (the paper's defaults): two passes, then the final resize to the LR size
    with a sinc filter and JPEG in random order."""

    first: PassConfig = PassConfig()
    second: PassConfig = PassConfig(blur_prob=0.8, sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3),
                                    resize_range=(0.3, 1.2), noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = KERNEL_SIZES
    final_sinc_cutoff: tuple[float, float] = (math.pi / 3, math.pi)
    final_resize_methods: tuple[str, ...] = ("area", "bilinear", "bicubic")


def _beta(g: torch.Generator, lo: float, hi: float) -> float:
    """Half the draws below 1 and half above, as Real-ESRGAN samples the shape parameter."""
    return _uniform(g, lo, 1.0) if lo < 1 and _uniform(g, 0, 1) < 0.5 else _uniform(g, max(lo, 1.0), hi)


def random_kernel(generator: torch.Generator, cfg: PassConfig = PassConfig()) -> torch.Tensor:
    """A random blur kernel of one pass: type, odd size, sigmas, angle and shape drawn as the paper draws them."""
    g = generator
    size = int(_pick(g, cfg.kernel_sizes))
    if _uniform(g, 0, 1) < cfg.sinc_prob:
        k = sinc_kernel(size, _uniform(g, *(cfg.sinc_cutoff_small if size < 13 else cfg.sinc_cutoff_large)))
    else:
        kind = _pick(g, cfg.kernel_types, cfg.kernel_probs)
        sx = _uniform(g, *cfg.sigma)
        if kind.endswith("aniso"):
            sy, theta = _uniform(g, *cfg.sigma), _uniform(g, -math.pi, math.pi)
        else:
            sy, theta = sx, 0.0
        if kind.startswith("generalized"):
            k = generalized_kernel(size, sx, sy, theta, _beta(g, *cfg.beta_generalized))
        elif kind.startswith("plateau"):
            k = plateau_kernel(size, sx, sy, theta, _beta(g, *cfg.beta_plateau))
        else:
            k = gaussian_kernel(size, sx, sy, theta)
    return k


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of each image with its own kernel ((k, k) for all, or (B, k, k)), reflect-padded (edge
    replicated where an image is smaller than the kernel)."""
    _check_batch(x)
    b, c, h, w = x.shape
    k = kernel.to(x.dtype).expand(b, *kernel.shape[-2:])
    p = k.shape[-1] // 2
    mode = "reflect" if p < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode=mode)
    weight = k.repeat_interleave(c, dim=0)[:, None]  # (B*C, 1, k, k): one group per (image, channel)
    return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    return (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _gaussian_noise(x: torch.Tensor, sigma: float, gray: bool, g: torch.Generator) -> torch.Tensor:
    shape = (x.shape[0], 1, *x.shape[2:]) if gray else x.shape
    return x + sigma * torch.randn(shape, generator=g, dtype=x.dtype)


def _poisson_noise(x: torch.Tensor, scale: float, gray: bool, g: torch.Generator) -> torch.Tensor:
    """Shot noise as Real-ESRGAN makes it: counts = image x 2^ceil(log2(distinct 8-bit levels)), times `scale`."""
    src = _to_8bit(_grey(x) if gray else x)
    levels = 2 ** math.ceil(math.log2(max(len(torch.unique(src)), 2)))
    return x + scale * (torch.poisson(src * levels, generator=g) / levels - src)


def _resize_noise(x: torch.Tensor, cfg: PassConfig, base: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """The resize (by a factor relative to `base` (H, W)) and the noise of one pass, on one image (1, C, H, W)."""
    direction = _pick(g, ("up", "down", "keep"), cfg.resize_probs)
    lo, hi = cfg.resize_range
    factor = {"up": _uniform(g, 1.0, hi), "down": _uniform(g, lo, 1.0), "keep": 1.0}[direction]
    method = _pick(g, cfg.resize_methods)
    x = resize(x, (max(1, int(base[0] * factor)), max(1, int(base[1] * factor))), method, antialias=False)
    gray = _uniform(g, 0, 1) < cfg.gray_noise_prob
    if _uniform(g, 0, 1) < cfg.gaussian_noise_prob:
        return _gaussian_noise(x, _uniform(g, *cfg.noise_sigma) / 255, gray, g)
    return _poisson_noise(x, _uniform(g, *cfg.poisson_scale), gray, g)


def _quality(g: torch.Generator, lo: int, hi: int) -> int:
    return int(round(_uniform(g, lo, hi)))


def _realesrgan_one(x: torch.Tensor, scale: int, g: torch.Generator, cfg: RealESRGANConfig) -> torch.Tensor:
    """Everything after the first blur, on one image (1, C, H, W): image sizes part ways at the first resize."""
    h, w = x.shape[-2:]
    lr_size = (h // scale, w // scale)
    x = _resize_noise(x, cfg.first, (h, w), g)
    x = jpeg(x.clamp(0, 1), _quality(g, *cfg.first.jpeg_quality))
    if _uniform(g, 0, 1) < cfg.second.blur_prob:
        x = filter2d(x, random_kernel(g, cfg.second))
    x = _resize_noise(x, cfg.second, lr_size, g)
    sinc = None
    if _uniform(g, 0, 1) < cfg.final_sinc_prob:
        sinc = sinc_kernel(int(_pick(g, cfg.final_sinc_sizes)), _uniform(g, *cfg.final_sinc_cutoff))
    method = _pick(g, cfg.final_resize_methods)
    quality = _quality(g, *cfg.second.jpeg_quality)

    def resize_sinc(y: torch.Tensor) -> torch.Tensor:
        y = resize(y, lr_size, method, antialias=False)
        return y if sinc is None else filter2d(y, sinc)

    if _uniform(g, 0, 1) < 0.5:
        return _to_8bit(jpeg(resize_sinc(x).clamp(0, 1), quality))
    return _to_8bit(resize_sinc(jpeg(x.clamp(0, 1), quality)))


def realesrgan(hr: torch.Tensor, scale: int, generator: torch.Generator,
               cfg: RealESRGANConfig = RealESRGANConfig()) -> torch.Tensor:
    """Real-ESRGAN's second-order degradation to the LR size (B, C, H/scale, W/scale), 8-bit; each image of the batch
    gets its own kernels, resize factors, noise and JPEG qualities."""
    _check_scale(hr, scale)
    g, size = generator, max(cfg.first.kernel_sizes)
    identity = _pad_to(torch.ones(1, 1), size)
    kernels = [_pad_to(random_kernel(g, cfg.first), size) if _uniform(g, 0, 1) < cfg.first.blur_prob else identity
               for _ in range(hr.shape[0])]
    x = filter2d(hr, torch.stack(kernels))  # the first blur, batched: one grouped conv
    return torch.cat([_realesrgan_one(x[i:i + 1], scale, g, cfg) for i in range(hr.shape[0])])


# ---- JPEG, restoration, dispatch --------------------------------------------------------------------------------

def jpeg(x: torch.Tensor, quality: int | Sequence[int]) -> torch.Tensor:
    """Encode and decode every image with PIL's JPEG (4:2:0 chroma) at its quality (one int, or one per image)."""
    _check_batch(x)
    b, c = x.shape[:2]
    if c not in (1, 3):
        raise InputError(f"JPEG needs 1 or 3 channels, got {c}")
    qualities = [int(quality)] * b if np.ndim(quality) == 0 else [int(q) for q in quality]
    if len(qualities) != b or not all(1 <= q <= 100 for q in qualities):
        raise InputError(f"expected one JPEG quality in 1..100 per image ({b}), got {quality}")
    pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img, q in zip(pixels, qualities, strict=True):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if c == 1 else img).save(buf, format="JPEG", quality=q)
        dec = np.asarray(Image.open(buf), dtype=np.float32).reshape(img.shape)
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return (torch.stack(out) / 255).to(x.dtype)


def restoration(hr: torch.Tensor, task: str, generator: torch.Generator, level: float | None = None) -> torch.Tensor:
    """x1 degradation for `task`, 8-bit: "denoise" Gaussian noise sigma 5-50 /255, "deblur" Gaussian blur sigma 0.5-3
    px (kernel 21) + 1/255 noise, "jpeg" quality 10-60; drawn per image, or all at `level` (sigma /255, sigma px,
    quality)."""
    _check_batch(hr)
    if task not in TASKS:
        raise InputError(f"unknown restoration task {task!r}; expected one of {TASKS}")
    g, b = generator, hr.shape[0]
    lo, hi = {"denoise": DENOISE_SIGMA, "deblur": DEBLUR_SIGMA, "jpeg": JPEG_QUALITY}[task]
    levels = [float(level) if level is not None else _uniform(g, lo, hi) for _ in range(b)]
    if task == "jpeg":
        return jpeg(hr, [round(q) for q in levels])
    if task == "deblur":
        hr = filter2d(hr, torch.stack([gaussian_kernel(21, s, s) for s in levels]))
        levels = [DEBLUR_NOISE] * b
    sigma = hr.new_tensor(levels).view(b, 1, 1, 1) / 255
    return _to_8bit(hr + sigma * torch.randn(hr.shape, generator=g, dtype=hr.dtype))


def check_degradation(scale: int, kind: str) -> None:
    """Raise InputError unless `kind` goes with `scale`: DEGRADATIONS with x2/x4, TASKS with x1."""
    if kind in DEGRADATIONS:
        if scale not in SR_SCALES:
            raise InputError(f"degradation {kind!r} is for super-resolution: scale must be one of {SR_SCALES}, "
                             f"got {scale}")
    elif kind in TASKS:
        if scale != 1:
            raise InputError(f"restoration task {kind!r} needs scale 1, got {scale}")
    else:
        raise InputError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS} (scale {SR_SCALES}) "
                         f"or {TASKS} (scale 1)")


def degrade(hr: torch.Tensor, scale: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """The model input for `hr`: "bicubic" / "realesrgan" downscale by `scale` (2 or 4), a restoration task keeps
    the size (scale 1); always 8-bit."""
    check_degradation(scale, kind)
    if kind == "bicubic":
        return _to_8bit(bicubic_down(hr, scale))
    if kind == "realesrgan":
        return realesrgan(hr, scale, generator)
    return restoration(hr, kind, generator)
