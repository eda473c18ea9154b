"""Region-adaptive sampling: exact where it should be, cheaper after warm-up, no token starved, bad input
and unsupported models refused, the model restored."""

import functools
import math

import pytest
import torch

from ditlab.core.accel.ras import RegionAdaptive
from ditlab.core.diffusion import FlowMatching, sample
from ditlab.core.models import DiT

LABELS = {"class_labels": torch.tensor([0, 1])}


def tiny(**overrides) -> DiT:
    """A 2-block DiT over 1-channel images with random non-zero weights."""
    torch.manual_seed(0)
    kw = {"token_kind": "2d", "in_channels": 1, "depth": 2, "hidden_size": 32, "num_heads": 2, "num_classes": 2}
    m = DiT(**{**kw, **overrides})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def draw(m: DiT, policy: RegionAdaptive | None = None, steps: int = 12) -> torch.Tensor:
    def run():
        return sample(m, FlowMatching(), (2, 1, 16, 16), steps=steps, guidance_scale=2.0, model_kwargs=LABELS,
                      generator=torch.Generator().manual_seed(1))

    if policy is None:
        return run()
    with policy.attach(m, total_calls=steps):
        return run()


def test_ratio_one_is_identical():
    m = tiny(pos_embed="rope")
    ref = draw(m)
    policy = RegionAdaptive(ratio=1.0)
    torch.testing.assert_close(draw(m, policy), ref, atol=1e-6, rtol=0)
    assert policy.stats["full_calls"] == 12 and policy.nfe_equivalent() == 12


CASES = {
    "2d-sincos": ({}, (2, 1, 16, 16), {"class_labels": torch.tensor([0, 1])}),
    "2d-rope-context": ({"pos_embed": "rope", "context_dim": 8, "num_classes": 0}, (2, 1, 16, 16),
                        {"context": torch.randn(2, 3, 8)}),
    "3d-rope": ({"token_kind": "3d", "pos_embed": "rope", "hidden_size": 48}, (2, 1, 4, 8, 8), {}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@torch.no_grad()
def test_sparse_call_with_unchanged_input_repeats_the_dense_output(case):
    """Cached K/V and outputs of the skipped tokens equal fresh ones when the input did not change, so a sparse
    call must reproduce the dense call exactly: this checks the gathers, scatters and per-token positions."""
    overrides, shape, kwargs = case
    m = tiny(**overrides)
    x, t = torch.randn(shape), torch.tensor([300.0, 800.0])
    policy = RegionAdaptive(ratio=0.3, warmup=1, cooldown=0)
    with policy.attach(m, total_calls=3):
        dense = m(x, t, **kwargs)
        sparse = m(x, t, **kwargs)
        assert policy.stats["full_calls"] == 1 and 0.6 < policy.stats["token_fraction"] < 0.7
        torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
        kwargs = {k: v[:1] for k, v in kwargs.items()}
        m(x[:1], t[:1], **kwargs)  # a new batch size starts over with a dense call
        assert policy.stats["full_calls"] == 2


def test_half_ratio_computes_half_the_tokens_and_stays_close():
    m = tiny()
    ref = draw(m, steps=12)
    policy = RegionAdaptive(ratio=0.5, warmup=4, cooldown=0)
    out = draw(m, policy, steps=12)
    assert policy.stats["full_calls"] == 4
    assert policy.stats["token_fraction"] == pytest.approx((4 + 8 * 0.5) / 12)
    assert policy.nfe_equivalent() == pytest.approx(4 + 8 * 0.5)
    assert torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < 0.05


def test_dense_every_schedules_full_calls():
    policy = RegionAdaptive(ratio=0.5, warmup=2, cooldown=0, dense_every=3)
    draw(tiny(), policy, steps=12)
    assert policy.stats["full_calls"] == 2 + 3  # calls 0, 1, then 4, 7, 10


def test_cooldown_makes_the_last_calls_dense():
    m = tiny()
    policy = RegionAdaptive(ratio=0.5, warmup=2, cooldown=3)
    out = draw(m, policy, steps=12)
    assert policy.stats["full_calls"] == 2 + 3  # calls 0, 1, then 9, 10, 11
    assert policy.stats["token_fraction"] == pytest.approx((5 + 7 * 0.5) / 12)
    all_dense = RegionAdaptive(ratio=0.5, warmup=2, cooldown=10)  # warm-up and cool-down cover every call
    torch.testing.assert_close(draw(m, all_dense, steps=12), draw(m), rtol=0, atol=1e-6)
    assert not torch.allclose(out, draw(m), atol=1e-5)
    with pytest.raises(ValueError, match="cooldown"):
        RegionAdaptive(cooldown=-1)


def test_starvation_bounds_how_long_a_token_waits():
    m = tiny()
    starved, fed = RegionAdaptive(ratio=0.25, warmup=1, starvation=0.0), RegionAdaptive(ratio=0.25, warmup=1)
    draw(m, starved, steps=24)
    draw(m, fed, steps=24)
    assert fed.stats["max_skipped"] <= 10 < starved.stats["max_skipped"]


@pytest.mark.parametrize("ratio", [0, -1, 1.5, float("nan")])
def test_invalid_ratio_names_the_range(ratio):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        RegionAdaptive(ratio=ratio)


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="2d or 3d"):
        RegionAdaptive().attach(tiny(token_kind="1d"), 10)
    with pytest.raises(ValueError, match="window attention"):
        RegionAdaptive().attach(tiny(window_size=4), 10)


def test_model_restored_after_exit_and_after_an_error():
    m = tiny()
    policy = RegionAdaptive(ratio=0.5, warmup=1)
    with pytest.raises(KeyError):
        with policy.attach(m, total_calls=4):
            assert "run_blocks" in vars(m) and "forward" in vars(m.final_layer)
            raise KeyError("boom")
    assert "run_blocks" not in vars(m) and "forward" not in vars(m.final_layer)
    ref = draw(m, steps=4)
    draw(m, policy, steps=4)
    assert "run_blocks" not in vars(m) and "forward" not in vars(m.final_layer)
    torch.testing.assert_close(draw(m, steps=4), ref, atol=0, rtol=0)


@torch.no_grad()
def test_forecast_extrapolates_skipped_tokens_linearly():
    """A skipped token's forecast continues the line through its last two outputs; the computed tokens differ."""
    m = tiny()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([500.0, 500.0])
    policy = RegionAdaptive(ratio=0.25, warmup=2, cooldown=0, forecast=1)
    with policy.attach(m, total_calls=3):
        a, b = m(x, t, **LABELS), m(x + 0.1, t, **LABELS)
        c = m(x + 0.2, t, **LABELS)
        active = policy.state().active
    tokens = torch.zeros(2, (16 // 2) ** 2, 4 * m.cfg.output_channels)
    tokens.scatter_(1, active[..., None].expand(-1, -1, tokens.shape[-1]), 1.0)
    computed = m.x_embedder.unpatchify(tokens, (8, 8), m.cfg.output_channels).bool()
    assert computed.float().mean() == pytest.approx(0.25, abs=0.02)
    line = 2 * b - a
    torch.testing.assert_close(c[~computed], line[~computed], atol=1e-5, rtol=1e-5)
    assert (c[computed] - line[computed]).abs().max() > 1e-3


def test_forecast_and_change_metric_stay_close_to_dense():
    m = tiny()
    ref = draw(m, steps=12)
    for kw in ({"forecast": 1}, {"forecast": 2}, {"metric": "change"}, {"forecast": 1, "metric": "change"}):
        policy = RegionAdaptive(ratio=0.5, warmup=4, cooldown=0, **kw)
        out = draw(m, policy, steps=12)
        assert policy.nfe_equivalent() == pytest.approx(4 + 8 * 0.5)
        assert ((out - ref).norm() / ref.norm()).item() < 0.05, kw


@pytest.mark.parametrize("kw, match", [({"forecast": 3}, "forecast must be 0"), ({"forecast": True}, "forecast"),
                                       ({"metric": "mean"}, "metric must be one of")])
def test_invalid_forecast_or_metric(kw, match):
    with pytest.raises(ValueError, match=match):
        RegionAdaptive(**kw)


@torch.no_grad()
def test_key_value_forecast_is_exact_for_an_unchanged_input():
    """forecast=2 extrapolates the skipped tokens' keys and values from their last two computations; with
    an input that does not change, both equal the fresh ones, so the sparse call repeats the dense one."""
    m = tiny(pos_embed="rope")
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([300.0, 800.0])
    policy = RegionAdaptive(ratio=0.3, warmup=2, cooldown=0, forecast=2)
    with policy.attach(m, total_calls=4):
        dense = m(x, t, **LABELS)
        m(x, t, **LABELS)
        sparse = m(x, t, **LABELS)
        assert policy.state().kv_slope[0] is not None and policy.stats["full_calls"] == 2
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


class MaskedRAS(RegionAdaptive):
    """RAS's math without its bookkeeping, as a reference: every call computes every token, and a mask (B, T) of
    the tokens RegionAdaptive picks says whose keys, values and outputs are fresh; every other token continues
    the line through its last two computations (keys and values with forecast=2, outputs with forecast >= 1) or
    keeps its last one. Lines start at the second dense call and move only where fresh."""

    def reset(self, state):
        super().reset(state)
        state.lines = {}  # what -> (last value, change per call or None, (B, T) call of the last computation)

    def step(self, state, call, tokens, ctx):
        b, total, _ = tokens.shape
        active = max(1, math.ceil(self.ratio * total - 1e-9))
        state.index = call.index
        if self._dense(state, call.index, active, total):
            state.mask, state.age = torch.ones(b, total, dtype=torch.bool), torch.zeros(b, total)
        else:
            state.mask = torch.zeros(b, total, dtype=torch.bool).scatter_(1, self._select(state, active), True)
            state.age = (state.age + 1) * ~state.mask  # what _select reads as the calls each token was skipped
        for i, block in enumerate(call.blocks):
            kv = functools.partial(self._keys_values, state, i)
            tokens, ctx = block(tokens, call.c, call.rope, call.grid, call.key_mask, ctx, call.c, kv=kv)
        call.computed = self.depth
        return tokens

    def _line(self, state, what, fresh, spread, sloped, forecast):
        """`fresh` where the mask is set, else the forecast (or last) value; `spread` puts a (B, T) tensor along
        fresh's token dimension."""
        n, mask = state.index, spread(state.mask)
        if what not in state.lines:
            state.lines[what] = fresh, None, torch.full(state.mask.shape, n)
            return fresh
        last, slope, at = state.lines[what]
        calls = spread(n - at).float()
        now = last + slope * calls if forecast and slope is not None else last
        if sloped and (slope is not None or state.mask.all()):
            slope = torch.where(mask, (fresh - last) / calls, 0 if slope is None else slope)
        state.lines[what] = torch.where(mask, fresh, last), slope, torch.where(state.mask, n, at)
        return torch.where(mask, fresh, now)

    def _keys_values(self, state, i, k, v):
        def spread(x):
            return x[:, None, :, None]

        two = self.forecast == 2
        return self._line(state, ("k", i), k, spread, two, two), self._line(state, ("v", i), v, spread, two, two)

    def _final_layer(self, forward, x, c):
        state = self.state()
        out = self._line(state, "out", forward(x, c), lambda x: x[..., None], True, self.forecast >= 1)
        state.out, state.out_slope = state.lines["out"][:2]
        return out


@pytest.mark.parametrize("kw", [{}, {"forecast": 1}, {"forecast": 0, "starvation": 0.5}, {"metric": "change"}],
                         ids=["forecast2", "forecast1", "reuse", "change"])
@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_samples_match_the_masked_reference(kw, pos):
    """The gathers, token-row caches and in-place updates compute what the plain masked math does."""
    m = tiny(pos_embed=pos)
    settings = {"ratio": 0.3, "warmup": 2, "cooldown": 2, "dense_every": 5, **kw}
    ref = draw(m, MaskedRAS(**settings), steps=12)
    policy = RegionAdaptive(**settings)
    out = draw(m, policy, steps=12)
    assert policy.stats["full_calls"] == 5  # calls 0, 1 (warm-up), 6 (dense_every), 10, 11 (cool-down)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("forecast", [0, 2])
def test_sparse_calls_reuse_the_cache_buffers(forecast):
    """Every per-token cache is allocated once per run and updated in place: the buffers' addresses are those
    of the first sparse call until the end, the dense cool-down calls included."""
    m = tiny()
    policy = RegionAdaptive(ratio=0.3, warmup=2, cooldown=2, forecast=forecast)
    seen = []

    def buffers(i, t, x, x0):
        state = policy.state()
        cached = [*state.kv, *state.kv_slope, state.kv_now, state.out, state.out_slope, state.age]
        seen.append([t.data_ptr() for t in cached if t is not None])

    with policy.attach(m, total_calls=12):
        sample(m, FlowMatching(), (2, 1, 16, 16), steps=12, guidance_scale=2.0, model_kwargs=LABELS,
               generator=torch.Generator().manual_seed(1), callback=buffers)
    assert policy.stats["full_calls"] == 4
    kv = 2 * (2 if forecast == 2 else 1) + (forecast == 2)  # 2 blocks' [K | V] rows (+ slopes), (+ the forecast)
    assert len(seen[2]) == kv + 3  # and the output, its slope, the ages
    assert all(ptrs == seen[2] for ptrs in seen[2:])
