"""The safeguard: a DiT result less consistent with the measurements than the noise allows is backed off, and the
verdict says so; a consistent one is left alone."""

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.medical.baselines import tv_pdhg_2d
from ditlab.medical.data import make_phantom
from ditlab.medical.reconstruct import Acquisition, Verdict, defaults, reconstruct, simulate_volume


class StubPrior:
    """A prior whose clean estimate is a fixed image (a bright disc for `bad` slices, else the truth): what a prior
    that does not know the anatomy does, taken to the extreme."""

    def __init__(self, truth: torch.Tensor, bad: set[int]):
        self.truth, self.bad, self.calls = truth, bad, 0
        n, h, w = truth.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.disc = ((yy ** 2 + xx ** 2) < 0.3).float() * 0.9
        self.rows: list[int] | None = None

    def x0(self, x_t, t):
        self.calls += 1
        rows = self.rows if self.rows is not None and len(self.rows) == len(x_t) else list(range(len(x_t)))
        return torch.stack([self.disc if i in self.bad else self.truth[i] for i in rows])

    @staticmethod
    def to_path(x_unit, t, noise):
        return (1 - t) * (2 * x_unit - 1) + t * noise


@pytest.fixture(scope="module")
def case():
    vol = make_phantom((64, 64, 8), seed=4)[:, :, 2:6]
    meas = simulate_volume(vol, Acquisition("sparse-view", 8), noise=0.01, seed=0)
    truth = torch.from_numpy(np.ascontiguousarray(np.moveaxis((vol + 1000) / 2000, 2, 0))).float()
    return meas, truth


def settings(**kw):
    # tiny runs; cg_iters=0 keeps the stub's estimate as it is (no data step to repair it)
    return defaults("sparse-view").replace(steps=3, samples=1, cg_iters=0, tv_weight=0.0, tv_iters=40, init_iters=40,
                                           slab=8, **kw)


def test_a_consistent_result_passes_untouched(case):
    meas, truth = case
    s = settings()
    res = reconstruct(meas.y, meas.operator, "dds", s, prior=StubPrior(truth, set()), noise=meas.noise)
    bare = reconstruct(meas.y, meas.operator, "dds", s.replace(safeguard=False), prior=StubPrior(truth, set()))
    assert res.safeguard.status == "passed" and res.safeguard.backed_off == 0
    assert res.safeguard.slices == 4
    assert torch.allclose(res.slices, bare.slices)
    assert bare.safeguard.status == "off"
    assert "passed on all 4 slices" in res.safeguard.message


def test_inconsistent_slices_are_backed_off_to_tv_and_the_verdict_says_so(case):
    meas, truth = case
    s = settings()
    prior = StubPrior(truth, bad={1, 3})
    res = reconstruct(meas.y, meas.operator, "dds", s, prior=prior, noise=meas.noise)
    g = res.safeguard
    assert g.status == "backed off"
    assert g.backed_off == 2 and g.classical == 2  # a later start cannot fix a prior this wrong
    assert g.residual > g.bound
    tv = tv_pdhg_2d(meas.y[[1, 3]], meas.operator, s.tv_lambda, s.tv_iters).clamp(0, 1)
    assert torch.allclose(res.slices[[1, 3]], tv, atol=1e-5)  # the TV method's own solution
    bare = reconstruct(meas.y, meas.operator, "dds", s.replace(safeguard=False), prior=StubPrior(truth, {1, 3}))
    assert torch.allclose(res.slices[[0, 2]], bare.slices[[0, 2]])  # the consistent slices are the prior's
    assert "BACKED OFF on 2 of 4 slices" in g.message and "replaced by the TV solution" in g.message
    assert res.nfe == 3  # the retry's network calls are not counted as the method's NFE


def test_unknown_noise_falls_back_on_the_classical_residual(case):
    meas, truth = case
    res = reconstruct(meas.y, meas.operator, "dds", settings(), prior=StubPrior(truth, {0}), noise=None)
    assert res.safeguard.noise == 0.0
    assert res.safeguard.classical >= 1  # the disc is far less consistent than TV
    assert "noise 0" in res.safeguard.message or "BACKED OFF" in res.safeguard.message


def test_classical_methods_have_no_verdict(case):
    meas, _ = case
    res = reconstruct(meas.y, meas.operator, "tv", settings(), noise=meas.noise)
    assert res.safeguard == Verdict("off")
    assert res.safeguard.message == "safeguard: not applied"


def test_tau_below_one_is_refused():
    with pytest.raises(InputError, match="tau must be >= 1"):
        settings(tau=0.5).check()


def test_blend_mixes_the_dit_solution_with_tv(case):
    meas, truth = case
    s = settings(safeguard=False)
    dit = reconstruct(meas.y, meas.operator, "dds", s, prior=StubPrior(truth, set())).slices
    half = reconstruct(meas.y, meas.operator, "dds", s.replace(blend=0.5), prior=StubPrior(truth, set())).slices
    tv = tv_pdhg_2d(meas.y, meas.operator, s.tv_lambda, s.init_iters).clamp(0, 1)  # the DiT's own TV start
    assert torch.allclose(half, 0.5 * dit + 0.5 * tv, atol=1e-5)
    assert not torch.allclose(half, dit, atol=1e-3)
    with pytest.raises(InputError, match="blend must lie in"):
        s.replace(blend=0.0).check()
