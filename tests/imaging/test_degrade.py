import dataclasses
import math

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.imaging import degrade as d
from ditlab.imaging.data import procedural_image


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.stack([procedural_image(i, (size, size)) for i in range(n)])).permute(0, 3, 1, 2)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _is_8bit(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x * 255, (x * 255).round(), atol=1e-4)) and x.min() >= 0 and x.max() <= 1


# ---- resizing -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", d.RESIZE_METHODS)
def test_resize_shapes_and_constants(method):
    x = torch.full((2, 3, 24, 32), 0.3)
    for size in ((12, 16), (48, 40)):
        y = d.resize(x, size, method)
        assert y.shape == (2, 3, *size)
        assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-5)


def test_resize_unknown_method():
    with pytest.raises(InputError, match="bicubic"):
        d.resize(torch.zeros(1, 3, 8, 8), (4, 4), "lanczos")


def test_bicubic_down_constant_and_smooth_and_divisibility():
    const = torch.full((1, 3, 32, 32), 0.6)
    assert torch.allclose(d.bicubic_down(const, 4), torch.full((1, 3, 8, 8), 0.6), atol=1e-6)
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    smooth = (0.5 + 0.3 * torch.sin(x / 9) * torch.cos(y / 11)).expand(1, 3, 64, 64)
    box = torch.nn.functional.avg_pool2d(smooth, 4)  # block means
    down = d.bicubic_down(smooth, 4)
    assert (down - box)[..., 2:-2, 2:-2].abs().max() < 0.01
    with pytest.raises(InputError, match="divisible"):
        d.bicubic_down(torch.zeros(1, 3, 30, 32), 4)


def test_bicubic_up_shape_and_round_trip():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    smooth = (0.5 + 0.3 * torch.sin(x / 9) * torch.cos(y / 11)).expand(2, 3, 64, 64)
    up = d.bicubic_up(d.bicubic_down(smooth, 2), 2)
    assert up.shape == smooth.shape
    assert _psnr(up[..., 4:-4, 4:-4], smooth[..., 4:-4, 4:-4]) > 35


# ---- kernels ------------------------------------------------------------------------------------------------------

def _moments(k: torch.Tensor) -> tuple[float, float, float]:
    r = torch.arange(k.shape[0], dtype=torch.float32) - k.shape[0] // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return float((k * x * x).sum()), float((k * y * y).sum()), float((k * x * y).sum())


@pytest.mark.parametrize("make", [
    lambda: d.gaussian_kernel(21, 2.0, 2.0),
    lambda: d.gaussian_kernel(15, 2.5, 0.7, 0.6),
    lambda: d.generalized_kernel(21, 1.5, 1.5, 0.0, 0.6),
    lambda: d.generalized_kernel(21, 2.0, 1.0, 1.0, 3.0),
    lambda: d.plateau_kernel(21, 1.5, 1.5, 0.0, 1.5),
    lambda: d.sinc_kernel(21, math.pi / 3),
])
def test_kernels_sum_to_one_and_point_symmetric(make):
    k = make()
    assert k.dtype == torch.float32 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert abs(float(k.sum()) - 1) < 1e-5
    assert torch.allclose(k, k.flip(0, 1), atol=1e-7)  # k(x) = k(-x) for every type


def test_isotropic_kernels_are_isotropic():
    for k in (d.gaussian_kernel(21, 2.0, 2.0), d.plateau_kernel(21, 1.2, 1.2, 0.0, 1.5), d.sinc_kernel(21, 1.0)):
        assert torch.allclose(k, k.T, atol=1e-7) and torch.allclose(k, k.flip(1), atol=1e-7)


def test_anisotropic_kernel_follows_theta():
    vx, vy, cxy = _moments(d.gaussian_kernel(21, 3.0, 1.0, 0.0))
    assert vx > 5 * vy and abs(cxy) < 1e-4  # long axis along x
    vx, vy, _ = _moments(d.gaussian_kernel(21, 3.0, 1.0, math.pi / 2))
    assert vy > 5 * vx
    vx, vy, cxy = _moments(d.gaussian_kernel(21, 3.0, 1.0, math.pi / 4))
    assert abs(vx - vy) < 1e-3 and cxy > 3  # along the diagonal x = y (rows go down)
    _, _, cxy = _moments(d.plateau_kernel(21, 3.0, 1.0, -math.pi / 4, 1.5))
    assert cxy < -0.5


def test_generalized_kernel_with_beta_one_is_gaussian():
    assert torch.allclose(d.generalized_kernel(21, 2.0, 1.0, 0.3, 1.0), d.gaussian_kernel(21, 2.0, 1.0, 0.3), atol=1e-7)


@pytest.mark.parametrize("cutoff", [math.pi / 4, math.pi / 3, math.pi / 2])
def test_sinc_kernel_cutoff(cutoff):
    response = np.abs(np.fft.fft2(d.sinc_kernel(21, cutoff).numpy(), s=(128, 128)))
    f = np.fft.fftfreq(128)
    omega = 2 * np.pi * np.hypot(f[:, None], f[None])
    assert response[omega < 0.5 * cutoff].mean() > 0.9
    assert response[(omega > 1.3 * cutoff) & (omega < math.pi)].mean() < 0.08


def test_kernel_bad_arguments():
    with pytest.raises(InputError, match="odd"):
        d.gaussian_kernel(20, 1.0, 1.0)
    with pytest.raises(InputError, match="cutoff"):
        d.sinc_kernel(21, 4.0)


def test_random_kernel_seeded_and_valid():
    cfg = d.PassConfig()
    ks = [d.random_kernel(_gen(s), cfg) for s in range(30)]
    assert all(abs(float(k.sum()) - 1) < 1e-5 and k.shape[0] in d.KERNEL_SIZES for k in ks)
    assert torch.allclose(d.random_kernel(_gen(3), cfg), ks[3], atol=1e-7)
    assert len({k.shape[0] for k in ks}) > 3  # sizes vary
    assert any(not torch.allclose(k, k.T, atol=1e-6) for k in ks)  # some anisotropic ones


def test_filter2d_per_image_kernels():
    x = torch.rand(2, 3, 32, 32, generator=_gen())
    delta = torch.zeros(21, 21)
    delta[10, 10] = 1
    blur = d.gaussian_kernel(21, 2.0, 2.0)
    y = d.filter2d(x, torch.stack([delta, blur]))
    assert torch.allclose(y[0], x[0], atol=1e-6)
    assert y[1].std() < 0.5 * x[1].std()
    assert torch.allclose(d.filter2d(torch.full((1, 3, 8, 8), 0.4), blur), torch.full((1, 3, 8, 8), 0.4), atol=1e-5)


# ---- Real-ESRGAN --------------------------------------------------------------------------------------------------

def test_realesrgan_shape_range_quantised_and_seeded():
    hr = _batch(4, 64)
    lr = d.realesrgan(hr, 4, _gen(1))
    assert lr.shape == (4, 3, 16, 16) and lr.dtype == torch.float32
    assert _is_8bit(lr)
    assert torch.allclose(lr, d.realesrgan(hr, 4, _gen(1)), atol=1e-6)
    assert not torch.equal(lr, d.realesrgan(hr, 4, _gen(2)))
    assert d.realesrgan(hr, 2, _gen(1)).shape == (4, 3, 32, 32)
    assert d.realesrgan(hr[:, :1], 4, _gen(1)).shape == (4, 1, 16, 16)  # grey works too


def test_realesrgan_each_image_its_own_parameters():
    hr = _batch(1, 64).expand(3, -1, -1, -1)
    lr = d.realesrgan(hr, 4, _gen(5))
    assert not torch.equal(lr[0], lr[1]) and not torch.equal(lr[1], lr[2])


def test_realesrgan_degrades_more_than_bicubic():
    hr = _batch(8, 64)
    bic = d.degrade(hr, 4, "bicubic", _gen())
    real = d.realesrgan(hr, 4, _gen(3))
    p_bic = np.mean([_psnr(d.bicubic_up(bic[i:i + 1], 4).clamp(0, 1), hr[i:i + 1]) for i in range(8)])
    p_real = np.mean([_psnr(d.bicubic_up(real[i:i + 1], 4).clamp(0, 1), hr[i:i + 1]) for i in range(8)])
    assert p_real < p_bic - 1.0


def test_config_is_frozen_with_paper_defaults():
    cfg = d.RealESRGANConfig()
    assert cfg.first.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and cfg.first.sigma == (0.2, 3.0)
    assert cfg.second.blur_prob == 0.8 and cfg.second.resize_probs == (0.3, 0.4, 0.3)
    assert cfg.second.noise_sigma == (1.0, 25.0) and cfg.final_sinc_prob == 0.8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.final_sinc_prob = 0.0


def test_config_changes_the_pipeline():
    mild = d.PassConfig(sigma=(0.2, 0.3), sinc_prob=0.0, resize_probs=(0, 0, 1), noise_sigma=(1, 1),
                        gaussian_noise_prob=1.0, jpeg_quality=(95, 95), resize_methods=("area",))
    cfg = d.RealESRGANConfig(first=mild, second=dataclasses.replace(mild, blur_prob=0.0), final_sinc_prob=0.0,
                             final_resize_methods=("area",))
    hr = _batch(4, 64)
    bic = d.degrade(hr, 4, "bicubic", _gen())
    assert _psnr(d.realesrgan(hr, 4, _gen(3), cfg), bic) > _psnr(d.realesrgan(hr, 4, _gen(3)), bic) + 3


# ---- JPEG, restoration, dispatch ----------------------------------------------------------------------------------

def test_jpeg_quality_per_image():
    hr = _batch(2, 64)
    out = d.jpeg(hr, [10, 95])
    assert out.shape == hr.shape and _is_8bit(out)
    assert _psnr(out[1], hr[1]) > _psnr(out[0], hr[0]) + 3
    with pytest.raises(InputError, match="quality"):
        d.jpeg(hr, [50])


def test_denoise_level_matches():
    hr = torch.full((2, 3, 64, 64), 0.5)
    for level in (10.0, 30.0):
        out = d.restoration(hr, "denoise", _gen(), level=level)
        assert _is_8bit(out)
        assert abs(float((out - hr).std()) * 255 - level) < 0.05 * level
    drawn = d.restoration(hr, "denoise", _gen())
    stds = [float((drawn[i] - hr[i]).std()) * 255 for i in range(2)]
    assert all(4 < s < 52 for s in stds) and abs(stds[0] - stds[1]) > 0.1  # a sigma per image, in [5, 50]


def test_deblur_and_jpeg_tasks():
    hr = _batch(2, 64)
    blurred = d.restoration(hr, "deblur", _gen())
    grad = lambda x: float((x[..., 1:] - x[..., :-1]).abs().mean())  # noqa: E731
    assert _is_8bit(blurred) and grad(blurred) < 0.8 * grad(hr)
    jp = d.restoration(hr, "jpeg", _gen())
    assert jp.shape == hr.shape and _is_8bit(jp) and (jp - hr).abs().mean() > 1e-3
    assert torch.allclose(jp, d.restoration(hr, "jpeg", _gen()), atol=1e-6)
    with pytest.raises(InputError, match="denoise"):
        d.restoration(hr, "sharpen", _gen())


def test_degrade_dispatch_and_shapes():
    hr = _batch(2, 64)
    assert d.degrade(hr, 2, "bicubic", _gen()).shape == (2, 3, 32, 32)
    assert _is_8bit(d.degrade(hr, 4, "bicubic", _gen()))
    assert d.degrade(hr, 4, "realesrgan", _gen()).shape == (2, 3, 16, 16)
    for task in d.TASKS:
        assert d.degrade(hr, 1, task, _gen()).shape == hr.shape


@pytest.mark.parametrize("scale, kind, names", [
    (1, "bicubic", ["(2, 4)"]),
    (3, "realesrgan", ["(2, 4)"]),
    (2, "denoise", ["scale 1"]),
    (4, "blur", ["bicubic", "realesrgan", "denoise", "deblur", "jpeg"]),
])
def test_degrade_bad_combinations(scale, kind, names):
    with pytest.raises(InputError) as err:
        d.degrade(torch.zeros(1, 3, 24, 24), scale, kind, _gen())
    assert all(n in str(err.value) for n in names)


def test_bad_batch_shape():
    with pytest.raises(InputError, match="B, C, H, W"):
        d.bicubic_down(torch.zeros(3, 8, 8), 2)
