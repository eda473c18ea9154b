"""The classical baselines: PIL upscaling, TV / wavelet denoising, Richardson-Lucy, JPEG deblocking, and the
tables the benchmark loops over."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ditlab.core.errors import InputError
from ditlab.imaging.baselines import (
    RESTORE_BASELINES,
    SR_BASELINES,
    deblur_richardson_lucy,
    dejpeg,
    denoise_tv,
    denoise_wavelet,
    gaussian_psf,
    noise_sigma,
    upscale,
)


def _psnr(a, b):
    return 10 * np.log10(1 / np.mean((np.asarray(a, np.float64) - b) ** 2))


def _smooth(h=64, w=64, seed=0):
    """A smooth RGB image in [0.1, 0.9], float32: random low-frequency sinusoids per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [sum(np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy) + rng.uniform(0, 6))
                 for _ in range(3)) for _ in range(3)]
    return (0.5 + 0.4 * np.stack(chans, -1) / 3).astype(np.float32)


def _shapes(h=64, w=64):
    """A piecewise-smooth RGB image: the smooth field with a few flat discs and squares on it (edges to keep)."""
    img = _smooth(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - h / 3) ** 2 + (xx - w / 3) ** 2 < (h / 6) ** 2] = (0.9, 0.2, 0.2)
    img[h // 2:h // 2 + h // 4, w // 2:w // 2 + w // 3] = (0.1, 0.3, 0.8)
    return img


def _noisy(img, sigma=25 / 255, seed=1):
    return np.clip(img + np.random.default_rng(seed).normal(0, sigma, img.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("method", ["bicubic", "lanczos", "nearest"])
def test_upscale_keeps_a_constant_and_the_layout(method):
    for shape in [(10, 7, 3), (10, 7), (10, 7, 1)]:
        img = np.full(shape, 0.3, np.float32)
        out = upscale(img, 3, method)
        assert out.shape == (30, 21, *shape[2:]) and out.dtype == np.float32
        np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_nearest_repeats_pixels_and_bicubic_clips():
    img = np.random.default_rng(0).uniform(0, 1, (6, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(upscale(img, 2, "nearest"), img.repeat(2, 0).repeat(2, 1))
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)  # bicubic overshoots on it: clipped to [0, 1]
    out = upscale(checker, 4)
    assert out.min() == 0.0 and out.max() == 1.0


def test_lanczos_is_close_to_bicubic_on_smooth_input():
    img = _smooth(32, 32)
    assert _psnr(upscale(img, 4, "lanczos"), upscale(img, 4, "bicubic")) > 50


def test_bicubic_undoes_a_bicubic_downscale_of_a_smooth_image():
    hr = _smooth(128, 128)
    lr = np.stack([np.asarray(Image.fromarray(hr[..., c]).resize((32, 32), Image.Resampling.BICUBIC))
                   for c in range(3)], -1)
    sr = upscale(lr, 4)
    assert _psnr(sr[4:-4, 4:-4], hr[4:-4, 4:-4]) > 50
    assert _psnr(sr[4:-4, 4:-4], hr[4:-4, 4:-4]) > _psnr(upscale(lr, 4, "nearest")[4:-4, 4:-4], hr[4:-4, 4:-4]) + 20


def test_upscale_rejects_bad_scales_and_methods_naming_the_valid_ones():
    img = np.zeros((4, 4, 3), np.float32)
    for scale in (0, -2, 2.5, True):
        with pytest.raises(InputError, match="positive integer"):
            upscale(img, scale)
    with pytest.raises(InputError, match="bicubic, lanczos, nearest"):
        upscale(img, 2, "bilinear")
    with pytest.raises(InputError, match=r"\(4,\)"):
        upscale(np.zeros(4), 2)


@pytest.mark.parametrize("denoise", [denoise_tv, denoise_wavelet])
def test_denoisers_gain_psnr_on_a_noisy_smooth_image(denoise):
    clean = _shapes(96, 96)
    noisy = _noisy(clean)
    assert noise_sigma(noisy) == pytest.approx(25 / 255, rel=0.2)
    before = _psnr(noisy, clean)
    assert _psnr(denoise(noisy), clean) > before + 6
    grey = noisy[..., 1]
    out = denoise(grey)
    assert out.shape == grey.shape and _psnr(out, clean[..., 1]) > before + 4


def test_tv_leaves_a_clean_flat_image_alone_and_wavelet_takes_a_given_sigma():
    flat = np.full((32, 32, 3), 0.4, np.float32)
    np.testing.assert_allclose(denoise_tv(flat), flat, atol=1e-6)
    noisy = _noisy(_smooth())
    assert _psnr(denoise_wavelet(noisy, sigma=25 / 255), _smooth()) > _psnr(noisy, _smooth()) + 4


def test_richardson_lucy_gains_psnr_with_the_right_psf():
    sharp = _shapes(96, 96)
    psf = gaussian_psf(1.5, 21)
    assert psf.shape == (21, 21) and psf.sum() == pytest.approx(1.0)
    blurred = np.stack([ndimage.convolve(sharp[..., c], psf, mode="reflect") for c in range(3)], -1)
    before = _psnr(blurred, sharp)
    assert _psnr(deblur_richardson_lucy(blurred, psf), sharp) > before + 1.5
    assert _psnr(deblur_richardson_lucy(blurred), sharp) > before + 1.5  # the default is this PSF
    with pytest.raises(InputError, match="summing to 1"):
        deblur_richardson_lucy(blurred, psf * 2)
    with pytest.raises(InputError, match="odd size"):
        gaussian_psf(1.5, 20)


def test_dejpeg_gains_psnr_on_a_jpeg():
    clean = _shapes(96, 96)
    buf = io.BytesIO()
    Image.fromarray((clean * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=20)
    jpeg = np.asarray(Image.open(buf), np.float32) / 255
    assert _psnr(dejpeg(jpeg), clean) > _psnr(jpeg, clean) + 0.1  # a light touch: +0.2 dB here


def test_every_baseline_keeps_layout_range_and_input():
    rng = np.random.default_rng(5)
    for shape in [(24, 20, 3), (24, 20), (24, 20, 1)]:
        img = rng.uniform(0, 1, shape).astype(np.float32)
        kept = img.copy()
        for name, fn in SR_BASELINES.items():
            out = fn(img, 2)
            assert out.shape == (48, 40, *shape[2:]) and out.dtype == np.float32, name
            assert 0 <= out.min() and out.max() <= 1, name
        for task, methods in RESTORE_BASELINES.items():
            for name, fn in methods.items():
                out = fn(img)
                assert out.shape == shape and out.dtype == np.float32, (task, name)
                assert 0 <= out.min() and out.max() <= 1, (task, name)
        np.testing.assert_array_equal(img, kept)
