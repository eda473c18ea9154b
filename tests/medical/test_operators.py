"""CT and MRI operators: exact adjoints, agreement with skimage's Radon transform, geometry, masks, simulation."""

import numpy as np
import pytest
import torch
from skimage.transform import radon

from ditlab.medical.acquisition import Acquisition, simulate
from ditlab.medical.data import make_phantom
from ditlab.medical.operators import (
    MASK_KINDS,
    MAX_VIEWS,
    MRI,
    FanBeam,
    ParallelBeam,
    gradient,
    gradient_adjoint,
    mri_mask,
    volume_to_slices,
)


def _dot_gap(op, x: torch.Tensor, y: torch.Tensor) -> float:
    lhs = (op.forward(x) * y.conj()).real.sum()
    rhs = (x * op.adjoint(y)).sum()
    return float((lhs - rhs).abs() / lhs.abs())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [lambda: ParallelBeam(12, 24), lambda: ParallelBeam(7, 25, angles=(10, 100)),
                                  lambda: FanBeam(10, 24), lambda: FanBeam(9, 24, source_distance=30,
                                                                           detector_distance=10, det_count=41)],
                         ids=["parallel", "limited", "fan", "fan-custom"])
def test_ct_adjoint_is_the_transpose(make, dtype):
    op = make()
    x = torch.rand(3, op.size, op.size, dtype=dtype)
    y = torch.randn(3, *op.shape, dtype=dtype)
    assert _dot_gap(op, x, y) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mri_adjoint_is_the_transpose(dtype):
    op = MRI(mri_mask((16, 20), 3, "random2d", seed=1))
    x = torch.rand(2, 16, 20, dtype=dtype)
    y = torch.complex(torch.randn(2, 16, 20, dtype=dtype), torch.randn(2, 16, 20, dtype=dtype))
    assert _dot_gap(op, x, y) < 1e-5


def test_parallel_beam_matches_skimage_radon():
    n = 65  # odd: skimage's rotation centre (n // 2) is then the image centre, as here
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = np.exp(-((xx - 10) ** 2 + (yy + 5) ** 2) / 40) + 0.5 * np.exp(-((xx + 8) ** 2 / 20 + (yy - 12) ** 2 / 80))
    op = ParallelBeam(12, n, det_count=97)
    ref = radon(img, theta=op.angles_deg, circle=False)  # (det, angles), its detector spans the diagonal
    centre = ref.shape[0] // 2  # skimage's detector centre; ours is cell (97 - 1) / 2 = 48
    ours = op.forward(torch.from_numpy(img)[None])[0].numpy().T[48 - centre: 48 - centre + ref.shape[0]]
    scale = (ours * ref).sum() / (ours * ours).sum()
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
    assert np.linalg.norm(scale * ours - ref) / np.linalg.norm(ref) < 0.01
    assert abs(scale - 1) < 0.01


def test_limited_angle_covers_only_its_range():
    limited = ParallelBeam(45, 32, angles=(0, 90))
    assert limited.angles_deg.min() >= 0 and limited.angles_deg.max() < 90
    full = ParallelBeam(90, 32)  # every 2 degrees over [0, 180): its first half are the limited views
    x = torch.rand(1, 32, 32)
    assert torch.allclose(limited.forward(x), full.forward(x)[:, :45], atol=1e-5)


def test_geometry_errors_are_clear():
    with pytest.raises(ValueError, match=r"n_views must be an integer in \[2, 720\]"):
        ParallelBeam(1, 32)
    with pytest.raises(ValueError, match="angles must be"):
        ParallelBeam(8, 32, angles=(90, 0))
    with pytest.raises(ValueError, match="source_distance"):
        FanBeam(8, 32, source_distance=10)
    with pytest.raises(ValueError, match=r"expected images \(B, 32, 32\)"):
        ParallelBeam(8, 32).forward(torch.zeros(1, 16, 16))


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("accel", [4, 8])
def test_mri_mask_acceleration_and_centre(kind, accel):
    mask = mri_mask((64, 48), accel, kind, center_fraction=0.08, seed=3).numpy()
    if kind.endswith("1d"):
        columns = mask.any(axis=0)
        assert (mask == columns[None]).all()  # whole phase-encode lines
        assert columns.sum() == round(48 / accel)
        assert columns[24 - 2:24 + 2].all()  # round(0.08 * 48) = 4 central lines
    else:
        assert mask.sum() == round(64 * 48 / accel)
        assert mask[32 - 2:32 + 3, 24 - 2:24 + 2].all()  # 5 x 4 central points
    assert MRI(mask).acceleration == pytest.approx(mask.size / mask.sum())


def test_mri_mask_errors():
    with pytest.raises(ValueError, match="acceleration must be >= 1"):
        mri_mask((32, 32), 0.5)
    with pytest.raises(ValueError, match="unknown mask kind"):
        mri_mask((32, 32), 4, "spiral")
    with pytest.raises(ValueError, match="center_fraction"):
        mri_mask((32, 32), 8, center_fraction=0.5)


def test_simulation_adds_noise_and_avoids_the_inverse_crime():
    vol = make_phantom((32, 32, 8), seed=0)[:, :, 3:5]
    x = volume_to_slices(vol)
    clean_1x = ParallelBeam(20, 32).forward(x)
    clean, op = simulate(vol, Acquisition("sparse-view", 20), noise=0.0)
    noisy, _ = simulate(vol, Acquisition("sparse-view", 20), noise=0.01, seed=1)
    gap = float((clean - clean_1x).norm() / clean_1x.norm())
    assert 1e-4 < gap < 0.03  # a different discretisation of the same object
    assert float((noisy - clean).norm() / clean.norm()) == pytest.approx(0.01, rel=0.1)
    assert op.size == 32 and noisy.shape == (2, 20, 32)
    fan, fan_op = simulate(vol, Acquisition("sparse-view", 20, geometry="fan"), noise=0.0)
    fan_1x = fan_op.forward(x)
    assert 1e-4 < float((fan - fan_1x).norm() / fan_1x.norm()) < 0.03
    k, mri = simulate(vol, Acquisition("mri", accel=4), noise=0.0)
    k_1x = mri.forward(x)
    assert 1e-4 < float((k - k_1x).norm() / k_1x.norm()) < 0.1  # bicubic upsampling damps the finest frequencies


def test_simulate_rejects_bad_volumes():
    ct = Acquisition("sparse-view", 8)
    with pytest.raises(ValueError, match="expected a volume"):
        simulate(np.zeros((32, 32)), ct)
    vol = np.zeros((16, 16, 2), np.float32)
    vol[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        simulate(vol, ct)
    with pytest.raises(ValueError, match="unknown task"):
        Acquisition("pet")
    with pytest.raises(ValueError, match=r"views must be an integer in \[2, 720\]"):
        Acquisition("sparse-view", 1)
    with pytest.raises(ValueError, match="acceleration must be >= 1"):
        Acquisition("mri", accel=0.5)


def test_view_count_is_capped_before_anything_is_allocated():
    with pytest.raises(ValueError, match=rf"views must be an integer in \[2, {MAX_VIEWS}\], got 100000"):
        Acquisition("sparse-view", 100000)
    with pytest.raises(ValueError, match=r"n_views must be an integer in \[2, 720\]"):
        ParallelBeam(100000, 64)
    op = ParallelBeam(MAX_VIEWS, 1024)  # allowed views, but a grid too fine for one operator's ray samples
    with pytest.raises(ValueError, match="ray samples"):
        op.forward(torch.zeros(1, 1024, 1024))


@pytest.mark.parametrize("make", [lambda s: ParallelBeam(9, 32, image_shape=s),
                                  lambda s: FanBeam(9, 32, image_shape=s)])
def test_non_square_slices_are_padded_with_air_and_cropped_back(make):
    op, square = make((32, 20)), make(None)
    assert op.image_shape == (32, 20) and op.offset == (0, 6)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 32, 20, generator=gen), torch.randn(2, *op.shape, generator=gen)
    assert _dot_gap(op, x, y) < 1e-5  # still an exact adjoint pair
    padded = torch.zeros(2, 32, 32)
    padded[:, :, 6:26] = x
    assert torch.allclose(op.forward(x), square.forward(padded), atol=1e-5)  # the slice sits mid-square in air
    assert op.adjoint(y).shape == (2, 32, 20)
    fine = op.refine(2)
    assert fine.image_shape == (64, 40) and fine.offset == (0, 12)


def test_gradient_adjoint_is_the_transpose():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    dims, w = (0, 1, 2), (2.0, 1.0, 0.5)
    g = torch.randn(3, 3, 5, 6, generator=gen, dtype=torch.float64)
    assert float((gradient(x, dims, w) * g).sum()) == pytest.approx(float((x * gradient_adjoint(g, dims, w)).sum()))
