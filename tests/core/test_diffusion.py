"""Paths, losses, samplers, guidance and the per-step hooks."""

import pytest
import torch

from ditlab.core.diffusion import FlowMatching, VPDiffusion, diffusion_loss, masked_mean, sample
from ditlab.core.models import DiT

PATHS = [FlowMatching(), FlowMatching(t_sampling="logit_normal"), VPDiffusion(),
         VPDiffusion(prediction_type="v_prediction"), VPDiffusion(prediction_type="sample")]


def model(**kw) -> DiT:
    m = DiT(token_kind="2d", in_channels=1, depth=2, hidden_size=32, num_heads=2, num_classes=2, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.kind}-{p.prediction_type}")
def test_target_round_trips_to_x0(path):
    x0, eps = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = path.sample_t(4, torch.Generator().manual_seed(0)).clamp(min=0.05) if path.kind == "flow" else \
        torch.tensor([10, 200, 600, 990])
    x_t = path.interpolate(x0, eps, t)
    target = path.target(x0, eps, t)
    assert torch.allclose(path.x0_from_output(x_t, t, target), x0, atol=1e-4)
    assert torch.allclose(path.output_from_x0(x_t, t, x0), target, atol=1e-3)


def test_flow_conventions():
    path = FlowMatching()
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(path.interpolate(x0, eps, torch.zeros(2)), x0)
    assert torch.equal(path.interpolate(x0, eps, torch.ones(2)), eps)
    t = FlowMatching(t_sampling="logit_normal").sample_t(10000, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.02


def test_masked_loss():
    err = torch.tensor([[1.0, 3.0], [5.0, 7.0]]).reshape(2, 2, 1)
    assert masked_mean(err, torch.tensor([[1, 0], [1, 0]])).item() == 3.0
    with pytest.raises(ValueError, match="does not fit"):
        masked_mean(err, torch.ones(3, 2))


def test_loss_backprops_for_each_path():
    m = model().train()
    x0 = torch.randn(4, 1, 8, 8)
    for path in PATHS:
        m.zero_grad()
        loss = diffusion_loss(m, path, x0, {"class_labels": torch.tensor([0, 1, 0, 1])},
                              generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert loss.item() > 0 and m.final_layer.linear.weight.grad.abs().sum() > 0


SAMPLERS = [(FlowMatching(), "euler"), (FlowMatching(), "heun"), (VPDiffusion(), "ddim"),
            (VPDiffusion(), "ddpm"), (VPDiffusion(), "dpmsolver++"), (VPDiffusion(), "unipc"),
            (VPDiffusion(), "deis")]


@pytest.mark.parametrize("path,sampler", SAMPLERS, ids=[s for _, s in SAMPLERS])
def test_samplers_are_seeded_and_guided(path, sampler):
    m = model()
    kw = dict(sampler=sampler, steps=4, model_kwargs={"class_labels": torch.tensor([0, 1])})
    a = sample(m, path, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3), guidance_scale=3.0, **kw)
    b = sample(m, path, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3), guidance_scale=3.0, **kw)
    c = sample(m, path, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3), guidance_scale=1.0, **kw)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # seeded: the same draw (to rounding, on any CPU)
    assert torch.isfinite(a).all()
    assert not torch.allclose(a, c)


def test_guidance_formula_matches_manual_cfg():
    m = model()
    path = FlowMatching()
    x = torch.randn(1, 1, 8, 8)
    out = sample(m, path, (1, 1, 8, 8), x_T=x, steps=1, guidance_scale=2.5,
                 model_kwargs={"class_labels": torch.tensor([1])})
    t = torch.tensor([1000.0])
    with torch.no_grad():
        vc, vu = m(x, t, torch.tensor([1])), m(x, t, torch.tensor([2]))
    assert torch.allclose(out, x - (vu + 2.5 * (vc - vu)), atol=1e-5)


def test_flow_euler_is_exact_on_a_straight_path():
    """A model that predicts the true velocity toward a fixed x0 lands on it in one Euler step."""
    target = torch.randn(1, 1, 8, 8)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t):
            s = (t / 1000).reshape(-1, 1, 1, 1)
            return (x - target) / s.clamp_min(1e-6)

    out = sample(Oracle(), FlowMatching(), (1, 1, 8, 8), steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5)


@pytest.mark.parametrize("path,sampler", [(FlowMatching(), "euler"), (VPDiffusion(), "ddim")])
def test_hooks_rewrite_state(path, sampler):
    m = model()
    seen = []
    fixed = torch.full((1, 1, 8, 8), 0.25)

    def x0_hook(i, t, x, x0):
        return fixed  # e.g. a data-consistency projection

    def callback(i, t, x, x0):
        seen.append(i)
        assert torch.equal(x0, fixed)
        return x

    out = sample(m, path, (1, 1, 8, 8), sampler=sampler, steps=5, x0_hook=x0_hook, callback=callback,
                 generator=torch.Generator().manual_seed(0))
    assert seen == list(range(5))
    assert torch.allclose(out, fixed, atol=1e-4)


def test_callback_can_replace_state():
    m = model()
    out = sample(m, FlowMatching(), (1, 1, 8, 8), steps=3, callback=lambda i, t, x, x0: torch.zeros_like(x),
                 generator=torch.Generator().manual_seed(0))
    assert out.abs().max() == 0


def test_bad_sampler_arguments():
    m = model()
    with pytest.raises(ValueError, match="does not fit a flow path"):
        sample(m, FlowMatching(), (1, 1, 8, 8), sampler="ddim")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(m, FlowMatching(), (1, 1, 8, 8), steps=0)
    with pytest.raises(ValueError, match="uncond_kwargs"):
        sample(m, FlowMatching(), (1, 1, 8, 8), guidance_scale=2.0, model_kwargs={})
    with pytest.raises(ValueError, match="prediction_type"):
        VPDiffusion(prediction_type="score")
