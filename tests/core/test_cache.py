"""Feature caches: switched off they change nothing; switched on they skip blocks, stay close, reset, and
keep the CFG branches apart."""

import pytest
import torch

from ditlab.core import accel
from ditlab.core.accel import FORA, CachePolicy, DeltaDiT, FirstBlockCache, NoCache, RegionAdaptive, TaylorSeer
from ditlab.core.diffusion import FlowMatching, VPDiffusion, sample
from ditlab.core.errors import InputError
from ditlab.core.hooks import HookConflict
from ditlab.core.models import DiT

LABELS = {"class_labels": torch.tensor([0, 1])}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(smooth: bool = False) -> DiT:
    """A 4-block DiT with random non-zero weights. `smooth` keeps only the low timestep frequencies, so its
    features change smoothly from step to step, as a trained model's do (random weights read the high
    frequencies, which flip sign between consecutive steps)."""
    torch.manual_seed(0)
    m = DiT(token_kind="2d", in_channels=1, depth=4, hidden_size=32, num_heads=2, num_classes=2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if smooth:
            w = m.t_embedder.mlp[0].weight  # columns: 128 cos then 128 sin, frequencies falling
            low = (torch.arange(w.shape[1]) % (w.shape[1] // 2) >= 96).float()
            w.mul_(low)
    return m.eval()


def draw(m: DiT, cache: CachePolicy | None = None, path=None, sampler: str = "euler", steps: int = 20,
         guidance: float = 2.0) -> torch.Tensor:
    return sample(m, path or FlowMatching(), (2, 1, 8, 8), sampler=sampler, steps=steps, guidance_scale=guidance,
                  model_kwargs=LABELS, generator=torch.Generator().manual_seed(1), cache=cache)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


OFF = [NoCache(), FORA(interval=1), DeltaDiT(interval=1), TaylorSeer(interval=1), FirstBlockCache(max_skip=0)]
SAMPLERS = [(FlowMatching(), "euler", 6), (FlowMatching(), "heun", 11), (VPDiffusion(), "ddim", 6)]


@pytest.mark.parametrize("path,sampler,calls", SAMPLERS, ids=[s for _, s, _ in SAMPLERS])
@pytest.mark.parametrize("policy", OFF, ids=repr)
def test_switched_off_is_bitwise_identical(policy, path, sampler, calls):
    m = tiny()
    ref = draw(m, path=path, sampler=sampler, steps=6)
    torch.testing.assert_close(draw(m, policy, path=path, sampler=sampler, steps=6), ref, rtol=1e-5, atol=1e-6)
    assert policy.total_calls == policy.stats["calls"] == policy.stats["full_calls"] == calls
    assert policy.nfe_equivalent() == calls


SKIPPING = [FORA(interval=3), DeltaDiT(interval=2), DeltaDiT(interval=3, front=1, boundary=0.3),
            TaylorSeer(interval=4, order=2), TaylorSeer(interval=3, order=3, warmup=0), FirstBlockCache(threshold=0.1)]


@pytest.mark.parametrize("policy", SKIPPING, ids=repr)
def test_skipping_saves_blocks_and_stays_close(policy):
    m = tiny(smooth=True)
    ref = draw(m)
    out = draw(m, policy)
    s = policy.stats
    assert s["calls"] == 20 and s["full_calls"] < 20 and s["blocks_computed"] < s["blocks_total"] == 80
    assert policy.nfe_equivalent() < s["calls"]
    assert torch.isfinite(out).all() and 0 < rel_err(out, ref) < 1e-2
    torch.testing.assert_close(draw(m, policy), out, rtol=1e-5, atol=1e-6)  # state resets on every attach
    assert "run_blocks" not in vars(m)


def test_taylorseer_forecasts_smooth_features_better_than_reuse():
    m = tiny(smooth=True)
    ref = draw(m)
    fora, taylor = FORA(interval=4), TaylorSeer(interval=4, order=2)
    err_fora, err_taylor = rel_err(draw(m, fora), ref), rel_err(draw(m, taylor), ref)
    assert fora.stats == taylor.stats  # same compute
    assert err_taylor < 0.3 * err_fora


def test_model_is_restored_after_attach_and_after_errors():
    m = tiny()
    x = torch.randn(2, 1, 8, 8)
    ref = m(x, 500.0)
    policy = FORA(interval=2)
    with policy.attach(m, total_calls=3):
        assert "run_blocks" in vars(m)
        with pytest.raises(HookConflict, match=r"'feature-cache' is already installed \(FORA\(interval=2"):
            with FORA().attach(m, 1):
                pass
        with pytest.raises(HookConflict, match="already attached"):
            policy.attach(m, 3)
        torch.testing.assert_close(m(x, 500.0), ref, rtol=1e-5, atol=1e-6)
    assert "run_blocks" not in vars(m)
    with pytest.raises(KeyError):
        with policy.attach(m, total_calls=3):
            raise KeyError("boom")
    assert "run_blocks" not in vars(m)
    torch.testing.assert_close(m(x, 500.0), ref, rtol=1e-5, atol=1e-6)
    with policy.attach(m, total_calls=1):  # the policy is free again
        m(x, 500.0)
    assert policy.stats["calls"] == 1


@pytest.mark.parametrize("policy", [FORA(interval=3), DeltaDiT(interval=2, boundary=0.3), TaylorSeer(interval=3),
                                    FirstBlockCache(threshold=1.0)], ids=repr)
def test_context_tokens_pass_through_cached_blocks(policy):
    """MM-DiT: the context stream is updated by the blocks too; Δ-DiT carries its residual across the split."""
    torch.manual_seed(0)
    m = DiT(token_kind="1d", in_channels=2, depth=4, hidden_size=32, num_heads=2, patch_size=2, context_dim=8)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = dict(steps=8, model_kwargs={"context": torch.randn(2, 3, 8)}, generator=torch.Generator().manual_seed(0))
    ref = sample(m.eval(), FlowMatching(), (2, 2, 8), **kw)
    out = sample(m, FlowMatching(), (2, 2, 8), cache=policy, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.isfinite(out).all() and rel_err(out, ref) < 0.05
    assert policy.stats["blocks_computed"] < policy.stats["blocks_total"]


def test_changed_batch_or_token_count_recomputes():
    m = tiny()
    policy = TaylorSeer(interval=100, order=1)
    with policy.attach(m, total_calls=5):
        for shape in [(2, 1, 8, 8), (3, 1, 8, 8), (3, 1, 8, 12), (3, 1, 8, 12)]:
            out = m(torch.randn(*shape), 500.0)
            assert out.shape == shape
    assert policy.stats["full_calls"] == 3  # only the last call reuses


def test_first_block_cache_decides_per_row():
    """Row 0 is unchanged, row 1 changes by c: the batch-wide change is about c / 2, the per-row one c."""
    m = tiny()
    x = torch.randn(2, 1, 8, 8)
    x2 = torch.stack([x[0], x[1] + 0.3 * torch.randn_like(x[1])])

    def first_residual(x):
        tokens, grid, _ = m.embed_tokens(x)
        c = m.embed_condition(500.0, 2)
        return m.blocks[0](tokens, c, None, grid, None, None, c)[0] - tokens

    r1, r2 = first_residual(x), first_residual(x2)
    per_row = (r2 - r1).flatten(1).abs().mean(1) / r1.flatten(1).abs().mean(1)
    batch_wide = ((r2 - r1).abs().mean() / r1.abs().mean()).item()
    assert per_row[0] == 0 and batch_wide < 0.75 * per_row[1]
    for scale, full in [(0.75, 2), (1.5, 1)]:
        policy = FirstBlockCache(threshold=scale * per_row[1].item())
        with policy.attach(m, total_calls=2):
            m(x, 500.0)
            m(x2, 500.0)
        assert policy.stats["full_calls"] == full


def test_guided_and_unguided_runs_keep_their_own_caches():
    """A CFG run batches cond + uncond rows (2B); each row's residual is cached and forecast on its own."""
    m = tiny(smooth=True)
    for guidance in (1.0, 2.0):
        policy = TaylorSeer(interval=2, order=1)
        out = draw(m, policy, guidance=guidance)
        assert torch.isfinite(out).all() and rel_err(out, draw(m, guidance=guidance)) < 1e-3
        assert policy.stats["full_calls"] == 11


@pytest.mark.parametrize("make,match", [
    (lambda: FORA(interval=0), r"interval must be an integer >= 1"),
    (lambda: FORA(warmup=-1), r"warmup must be an integer >= 0"),
    (lambda: DeltaDiT(interval=1.5), r"interval must be an integer >= 1"),
    (lambda: DeltaDiT(boundary=1.0), r"boundary must lie in \(0, 1\)"),
    (lambda: DeltaDiT(front=0), r"front must be an integer >= 1"),
    (lambda: TaylorSeer(order=4), r"order must be 1, 2 or 3"),
    (lambda: TaylorSeer(order=0), r"order must be 1, 2 or 3"),
    (lambda: FirstBlockCache(threshold=0), r"threshold must be > 0"),
    (lambda: FirstBlockCache(max_skip=-1), r"max_skip must be an integer >= 0"),
])
def test_invalid_parameters_name_the_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_invalid_attach_and_cache_arguments():
    m = tiny()
    with pytest.raises(ValueError, match=r"front must lie in \[1, 3\]"):
        with DeltaDiT(front=4).attach(m, 10):
            pass
    with pytest.raises(ValueError, match="total_calls must be an integer >= 1"):
        FORA().attach(m, 0)
    with pytest.raises(TypeError, match="need a ditlab DiT"):
        FORA().attach(torch.nn.Linear(2, 2), 10)
    with pytest.raises(TypeError, match="cache must be a CachePolicy"):
        draw(m, cache="fora")
    assert "run_blocks" not in vars(m)


def test_named_policies_carry_the_tuned_settings_and_take_overrides():
    assert set(accel.POLICIES) >= {"none", "fora", "taylorseer", "delta-dit", "first-block", "ras"}
    assert all(isinstance(accel.policy(name), CachePolicy) for name in accel.POLICIES)
    assert repr(accel.policy("taylorseer")) == repr(TaylorSeer(interval=4, order=2))
    assert isinstance(accel.policy("none"), NoCache)
    ras = accel.policy("ras", cooldown=0)
    assert isinstance(ras, RegionAdaptive) and ras.ratio == 0.4 and ras.cooldown == 0
    assert accel.policy("taylorseer") is not accel.policy("taylorseer")  # a fresh instance each time: one per model
    m = tiny(smooth=True)
    out, fast = draw(m, accel.policy("taylorseer")), accel.policy("taylorseer")
    torch.testing.assert_close(draw(m, fast), out, rtol=1e-5, atol=1e-6)
    assert fast.stats["full_calls"] < fast.stats["calls"]


@pytest.mark.parametrize("name, kw, match", [
    ("taylor", {}, r"unknown cache policy 'taylor'; expected one of \['none', 'fora', 'taylorseer'"),
    ("fora", {"order": 2}, r"policy 'fora' \(FORA\) has no setting \['order'\]; its settings: \['interval'"),
    ("fora", {"interval": 0}, "interval must be an integer >= 1"),
])
def test_named_policy_errors_name_what_is_expected(name, kw, match):
    with pytest.raises(InputError, match=match):
        accel.policy(name, **kw)
