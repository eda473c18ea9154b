"""Classical baselines: FBP scaled right, the usual order FBP < SIRT <= TV on a fair CT problem, TV-CS for MRI."""

import numpy as np
import pytest
import torch

from ditlab.medical.acquisition import Acquisition, simulate
from ditlab.medical.baselines import (
    FILTERS,
    fbp,
    sirt,
    tune_lambda,
    tv_admm_3d,
    tv_cs,
    tv_pdhg_2d,
    zero_filled,
)
from ditlab.medical.data import make_phantom
from ditlab.medical.metrics import psnr
from ditlab.medical.operators import FanBeam, ParallelBeam, volume_to_slices

UNIT = (0.0, 1.0)  # reconstructions are in window units: PSNR over the full (-1000, 1000) HU window


@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize("op", [ParallelBeam(90, 48), FanBeam(120, 48)], ids=["parallel", "fan"])
def test_fbp_of_a_disk_has_the_disk_value(op, filter):
    yy, xx = np.mgrid[:48, :48] - 23.5
    r2 = xx ** 2 + yy ** 2
    disk = torch.from_numpy((r2 <= 15 ** 2).astype(np.float32))[None]
    rec = fbp(op.forward(disk), op, filter)[0].numpy()
    assert rec[r2 <= 11 ** 2].mean() == pytest.approx(1.0, abs=0.03)
    assert abs(rec[r2 >= 19 ** 2].mean()) < 0.05


@pytest.fixture(scope="module")
def ct_case():
    """One 64x64 textured slice, 30 views, 1% noise, simulated at 2x; a second phantom for validation."""
    torch.manual_seed(0)
    test, val = make_phantom((64, 64, 16), seed=0)[:, :, 6:7], make_phantom((64, 64, 16), seed=1)[:, :, 7:8]
    y, op = simulate(test, Acquisition("sparse-view", 30), noise=0.01, seed=0)
    return volume_to_slices(test), y, op, val


def test_ct_baselines_rank_as_expected(ct_case):
    ref, y, op, val = ct_case
    lam = tune_lambda(tv_pdhg_2d, [val], Acquisition("sparse-view", 30), lams=(3e-5, 1e-4, 3e-4),
                      method_kwargs={"iters": 100})
    scores = {"zero": psnr(torch.zeros_like(ref), ref, UNIT), "fbp": psnr(fbp(y, op, "hann"), ref, UNIT),
              "sirt": psnr(sirt(y, op, 100), ref, UNIT), "tv": psnr(tv_pdhg_2d(y, op, lam, 100), ref, UNIT)}
    assert scores["fbp"] < scores["sirt"] <= scores["tv"], scores
    assert scores["fbp"] > scores["zero"] + 10, scores


def test_tv_admm_3d_beats_fbp_on_a_stack():
    vol = make_phantom((32, 32, 8), seed=2)
    ref = volume_to_slices(vol)
    y, op = simulate(vol, Acquisition("sparse-view", 12), noise=0.01, seed=0)
    scores = {"fbp": psnr(fbp(y, op), ref, UNIT), "tv3d": psnr(tv_admm_3d(y, op, 3e-4, iters=30), ref, UNIT)}
    assert scores["tv3d"] > scores["fbp"] + 3, scores
    with pytest.raises(ValueError, match=">= 2 slices"):
        tv_admm_3d(y[:1], op, 1e-3)


def test_mri_tv_cs_beats_zero_filled():
    vol = make_phantom((64, 64, 16), seed=0)[:, :, 6:7]
    ref = volume_to_slices(vol)
    k, op = simulate(vol, Acquisition("mri", accel=4, mask="gaussian1d"), noise=0.01, seed=0)
    zf, cs = psnr(zero_filled(k, op), ref, UNIT), psnr(tv_cs(k, op, 3e-3, iters=150), ref, UNIT)
    assert cs > zf + 3, (zf, cs)


def test_baselines_check_their_operator():
    op = ParallelBeam(8, 16)
    with pytest.raises(TypeError, match="needs an MRI operator"):
        zero_filled(torch.zeros(1, 8, 16), op)
    with pytest.raises(ValueError, match="unknown filter"):
        fbp(torch.zeros(1, 8, 16), op, "shepp")
