"""The solvers on tiny volumes, the slice prior's plumbing, acquisitions, settings and measurement files."""

import numpy as np
import pytest
import torch

from ditlab.core.accel import TaylorSeer
from ditlab.medical.baselines import fbp
from ditlab.medical.data import make_phantom
from ditlab.medical.io import VolumeError, load_measurement, save_measurement
from ditlab.medical.metrics import psnr
from ditlab.medical.models import TILE, SlicePrior, prior_model
from ditlab.medical.operators import slices_to_volume
from ditlab.medical.reconstruct import (
    DIT_METHODS,
    METHODS,
    Acquisition,
    Settings,
    defaults,
    evaluate,
    reconstruct,
    reconstruct_volume,
    simulate_volume,
)


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    model = prior_model(hidden=32, depth=2, heads=1).eval()
    with torch.no_grad():  # adaLN-Zero starts with a zero output: give every weight a value, so it matters
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def make_prior(model, **kw):
    return SlicePrior(model, batch=4, generator=torch.Generator().manual_seed(0), precision="fp32", **kw)


@pytest.fixture(scope="module")
def case():
    vol = make_phantom((32, 32, 8), seed=3)[:, :, 2:6]
    return vol, simulate_volume(vol, Acquisition("sparse-view", 8), noise=0.01, seed=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reconstructs_a_tiny_volume(case, tiny_prior, method):
    vol, meas = case
    s = defaults("sparse-view").replace(steps=3, samples=1, tv_iters=30, sirt_iters=20, tv3d_iters=10, slab=3,
                                        safeguard=False)  # an untrained prior would be backed off (more calls)
    prior = make_prior(tiny_prior)
    rec, res = reconstruct_volume(meas, method, s, prior=prior)
    assert rec.data.shape == vol.shape
    assert np.isfinite(rec.data).all()
    assert np.allclose(rec.affine, meas.affine)
    assert res.nfe == (3 if method in DIT_METHODS else 0)
    if method in DIT_METHODS:
        assert prior.calls == 3 * 2  # two slabs (3 + 1 slices), three steps each


def test_dds_data_step_fits_the_measurements(case, tiny_prior):
    """DDS's CG steps pull the untrained prior's guess to the data: the residual drops with more CG steps."""
    _, meas = case
    residual = {}
    for cg in (0, 10):
        s = defaults("sparse-view").replace(steps=2, samples=1, cg_iters=cg, t_start=1.0, safeguard=False)
        rec, res = reconstruct_volume(meas, "dds", s, prior=make_prior(tiny_prior))
        residual[cg] = evaluate(rec.data, rec.data, meas, res)["residual"]
    assert residual[10] < 0.5 * residual[0]


def test_dds_with_tv_data_step_and_warm_start_beats_fbp(case, tiny_prior):
    """Started from TV at a low noise level with a TV data step, even an untrained prior cannot spoil it."""
    vol, meas = case
    s = defaults("sparse-view").replace(steps=4, samples=1, t_start=0.1, tv_weight=3e-4, tv_inplane=1.0, tv_iters=60)
    rec, _ = reconstruct_volume(meas, "dds", s, prior=make_prior(tiny_prior))
    assert psnr(rec.data, vol) > psnr(slices_to_volume(fbp(meas.y, meas.operator)), vol) + 3


@pytest.mark.parametrize("method", DIT_METHODS)
def test_cache_reuses_features_per_chunk_of_a_slab_larger_than_a_chunk(tiny_prior, method):
    """6 slices run as chunks of 4 and 2 per step: each chunk keeps its own cache (before contexts, the changing
    shape reset the cache on every call and it never skipped anything). Fewer block evaluations, close result."""
    vol = make_phantom((32, 32, 8), seed=3)[:, :, 1:7]
    meas = simulate_volume(vol, Acquisition("sparse-view", 8), noise=0.01, seed=0)
    s = defaults("sparse-view").replace(steps=8, samples=1, slab=6, tv_iters=30, init_iters=30,
                                        safeguard=False)  # the cache, not the safeguard, is under test
    plain, ref = reconstruct_volume(meas, method, s, prior=make_prior(tiny_prior))
    policy = TaylorSeer(interval=2, order=1)
    cached, res = reconstruct_volume(meas, method, s, prior=make_prior(tiny_prior), cache=policy)
    assert res.nfe == ref.nfe == 8 and ref.nfe_equivalent == 8
    assert sorted(policy.context_stats) == ["chunk-0", "chunk-1"]
    assert all(c["calls"] == 8 and c["full_calls"] < 8 for c in policy.context_stats.values())
    assert res.nfe_equivalent < 0.7 * res.nfe  # the cache skipped blocks in both chunks
    assert np.isfinite(cached.data).all() and not np.allclose(plain.data, cached.data)
    assert abs(psnr(cached.data, vol) - psnr(plain.data, vol)) < 1.0


def test_mri_methods(tiny_prior):
    vol = make_phantom((32, 32, 8), seed=4)[:, :, 3:5]
    meas = simulate_volume(vol, Acquisition("mri", accel=4), seed=0)
    zf, _ = reconstruct_volume(meas, "tv", defaults("mri").replace(tv_iters=1))
    tv, _ = reconstruct_volume(meas, "tv", defaults("mri").replace(tv_iters=100))
    assert psnr(tv.data, vol) > psnr(zf.data, vol)
    s = defaults("mri").replace(steps=2, samples=1)
    rec, res = reconstruct_volume(meas, "dds", s, prior=make_prior(tiny_prior))
    assert rec.data.shape == vol.shape and res.nfe == 2
    with pytest.raises(ValueError, match="fbp is a CT method"):
        reconstruct_volume(meas, "fbp")


def test_slice_prior_pads_odd_sizes_and_keeps_units(tiny_prior):
    prior = make_prior(tiny_prior)
    x = torch.rand(3, 40, 72)
    assert prior.velocity(x, 0.5).shape == (3, 40, 72)
    # at t = 0 Tweedie's estimate is the input itself, in [0, 1] units
    assert torch.allclose(prior.x0(SlicePrior.to_path(x, 0.0, torch.randn_like(x)), 0.0), x, atol=1e-6)
    assert prior.calls == 2


def test_window_shift_is_the_only_randomness(tiny_prior):
    x = torch.randn(2, TILE * 2, TILE * 2)
    a, b = make_prior(tiny_prior, shift_windows=False), make_prior(tiny_prior, shift_windows=False)
    torch.testing.assert_close(a.velocity(x, 0.3), b.velocity(x, 0.3), rtol=1e-5, atol=1e-6)
    shifted = make_prior(tiny_prior)
    outs = [shifted.velocity(x, 0.3) for _ in range(3)]
    assert not all(torch.allclose(outs[0], o, atol=1e-4) for o in outs[1:])


def test_dps_backpropagates_through_the_prior(case, tiny_prior):
    _, meas = case
    prior = make_prior(tiny_prior)
    v = prior.velocity(torch.randn(1, 32, 32, requires_grad=True), 0.5, grad=True)
    assert v.requires_grad
    rec, res = reconstruct_volume(meas, "dps", defaults("sparse-view").replace(steps=2, samples=1), prior=prior)
    assert np.isfinite(rec.data).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "ct"}, "unknown task"),
    ({"views": 1}, r"views must be an integer in \[2, 720\]"),
    ({"views": 2.5}, r"views must be an integer in \[2, 720\]"),
    ({"task": "mri", "accel": 0.5}, "acceleration must be >= 1"),
    ({"task": "limited-angle", "angles": (90, 0)}, "angles must be"),
    ({"geometry": "cone"}, "unknown geometry"),
])
def test_bad_acquisitions(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Acquisition(**kwargs)


def test_limited_angle_defaults_to_0_90():
    acq = Acquisition("limited-angle", 30)
    assert acq.angles == (0.0, 90.0)
    assert acq.operator((32, 32)).angles_deg.max() < 90


@pytest.mark.parametrize(("kw", "message"), [
    ({"steps": 0}, "steps must be >= 1"), ({"t_start": 0.0}, "t_start"), ({"eta": 2.0}, "eta"),
    ({"init": "magic"}, "init must be"), ({"slab": 0}, "slab and batch"),
])
def test_bad_settings(case, kw, message):
    _, meas = case
    with pytest.raises(ValueError, match=message):
        reconstruct(meas.y, meas.operator, "tv", Settings().replace(**kw))


def test_unknown_method_and_setting(case):
    _, meas = case
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        reconstruct(meas.y, meas.operator, "magic")
    with pytest.raises(ValueError, match="unknown settings"):
        Settings().replace(stepz=3)


def test_non_square_ct_is_reconstructed_at_its_own_shape():
    vol = make_phantom((40, 40, 8), seed=3)[:, 4:36, 3:5]  # 40 x 32 axial slices
    meas = simulate_volume(vol, Acquisition("sparse-view", 16))
    rec, _ = reconstruct_volume(meas, "tv", defaults("sparse-view"))
    fbp_rec, _ = reconstruct_volume(meas, "fbp", defaults("sparse-view"))
    assert rec.data.shape == vol.shape == fbp_rec.data.shape
    assert evaluate(rec.data, vol)["psnr"] > evaluate(fbp_rec.data, vol)["psnr"] > 18


def test_measurement_file_round_trip(tmp_path, case):
    _, meas = case
    path = save_measurement(meas, tmp_path / "m.npz")
    back = load_measurement(path)
    assert torch.equal(back.y, meas.y)
    assert back.acquisition == meas.acquisition
    assert back.shape == meas.shape and np.allclose(back.affine, meas.affine)


def test_mri_measurement_round_trip_keeps_complex_data(tmp_path):
    vol = make_phantom((32, 32, 8), seed=0)[:, :, :2]
    meas = simulate_volume(vol, Acquisition("mri", accel=4, mask="random1d"), seed=5)
    back = load_measurement(save_measurement(meas, tmp_path / "k.npz"))
    assert back.y.is_complex() and torch.equal(back.y, meas.y)
    assert torch.equal(back.operator.mask, meas.operator.mask)  # random masks are rebuilt from the seed


def test_bad_measurement_files(tmp_path, case):
    _, meas = case
    with pytest.raises(VolumeError, match=r"written as \.npz"):
        save_measurement(meas, tmp_path / "m.txt")
    assert not (tmp_path / "m.txt").exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(VolumeError, match="not a readable ditlab measurement"):
        load_measurement(tmp_path / "junk.npz")
    raw = save_measurement(meas, tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match="not a readable"):
        load_measurement(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", y=np.zeros(3))
    with pytest.raises(VolumeError, match="not a readable"):
        load_measurement(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        load_measurement(tmp_path / "missing.npz")


def test_averaged_samples_count_their_nfe_and_average(case, tiny_prior):
    _, meas = case
    s = defaults("sparse-view").replace(steps=2, samples=1, t_start=1.0, eta=0.85, cg_iters=0, safeguard=False)
    one = [reconstruct_volume(meas, "dds", s, prior=make_prior(tiny_prior), seed=k)[0].data for k in (1, 2)]
    avg, res = reconstruct_volume(meas, "dds", s.replace(samples=2), prior=make_prior(tiny_prior), seed=1)
    assert res.nfe == 4
    # the average of two draws lies closer to each draw's mean than the draws lie to each other
    assert np.abs(avg.data - (one[0] + one[1]) / 2).mean() < np.abs(one[0] - one[1]).mean()
    with pytest.raises(ValueError, match="samples must be >= 1"):
        reconstruct(meas.y, meas.operator, "dds", s.replace(samples=0))
