"""Metrics as the field defines them: PSNR and SSIM on a stated window, per plane, 3D SSIM, data residual."""

import numpy as np
import pytest
import torch

from ditlab.core.metrics import PSNR_CAP
from ditlab.medical.metrics import data_residual, per_plane, psnr, ssim, ssim3d
from ditlab.medical.operators import ParallelBeam


def test_psnr_uses_the_window_width_as_peak():
    ref = np.zeros((8, 8, 4), np.float32)
    assert psnr(ref + 20, ref) == pytest.approx(10 * np.log10(2000 ** 2 / 20 ** 2))  # 40 dB
    assert psnr(ref + 20, ref, window=(-100, 100)) == pytest.approx(10 * np.log10(200 ** 2 / 20 ** 2))
    assert psnr(ref, ref) == PSNR_CAP  # identical: capped, as every PSNR of the project
    # both images are clipped to the window first: differences above it vanish
    assert psnr(np.full((4, 4), 3000.0), np.full((4, 4), 1500.0)) == PSNR_CAP
    assert psnr(torch.zeros(4, 4), torch.full((4, 4), 0.1), window=(0, 1)) == pytest.approx(20.0)


def test_ssim_known_cases():
    rng = np.random.default_rng(0)
    img = rng.uniform(-500, 500, (32, 32))
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img + rng.normal(0, 100, img.shape), img) < 0.9
    # flat images: only the luminance term, (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 L)^2
    a, b, c1 = 0.5, 0.6, 0.01 ** 2
    assert ssim(np.full((16, 16), a), np.full((16, 16), b), window=(0, 1)) == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    with pytest.raises(ValueError, match="2D images"):
        ssim(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(np.zeros((16, 8)), np.zeros((16, 8)))


def test_per_plane_reports_each_plane():
    rng = np.random.default_rng(1)
    ref = rng.uniform(-900, 900, (16, 14, 12)).astype(np.float32)
    out = per_plane(ref + 20, ref)
    assert set(out) == {"axial", "coronal", "sagittal"}
    assert all(v == pytest.approx(40.0, abs=1e-3) for v in out.values())
    noisy = ref.copy()
    noisy[:, :, 0] += 100  # one axial slice wrong: every coronal and sagittal slice sees it, one axial slice does
    out = per_plane(noisy, ref, psnr)
    # 11 of 12 axial slices are exact (capped at 100 dB) and one is wrong: a finite mean far above the other planes
    assert out["axial"] == pytest.approx((11 * PSNR_CAP + psnr(noisy[:, :, 0], ref[:, :, 0])) / 12)
    assert out["axial"] > out["coronal"] + 40
    assert out["coronal"] == pytest.approx(out["sagittal"])
    s = per_plane(noisy, ref, ssim)
    assert s["axial"] == pytest.approx(1 - (1 - ssim(noisy[:, :, 0], ref[:, :, 0])) / 12)
    with pytest.raises(ValueError, match="two volumes"):
        per_plane(ref[:, :, 0], ref[:, :, 0])


def test_ssim3d_through_monai():
    rng = np.random.default_rng(2)
    ref = rng.uniform(-1000, 1000, (16, 16, 12)).astype(np.float32)
    assert ssim3d(ref, ref) == pytest.approx(1.0, abs=1e-5)
    assert ssim3d(ref + rng.normal(0, 300, ref.shape), ref) < 0.95
    with pytest.raises(ValueError, match=">= 11"):
        ssim3d(ref[:, :, :8], ref[:, :, :8])


def test_data_residual():
    op = ParallelBeam(10, 16)
    x = torch.rand(2, 16, 16)
    y = op.forward(x)
    assert data_residual(x, op, y) < 1e-6
    assert data_residual(torch.zeros_like(x), op, y) == pytest.approx(1.0)
