"""Region-Adaptive Sampling (RAS; Liu et al. 2025, "Region-Adaptive Sampling for Diffusion Transformers").

A DiT's focus moves slowly from one sampling step to the next, and most of an image changes little per
step. After a few full ("dense") warm-up calls, each call of the network therefore runs the transformer
only on a fraction `ratio` of the tokens, those in the model's focus; every other token keeps a cached
output (noise / velocity prediction).

- Focus metric (RAS's): the standard deviation of the current prediction over each token's patch
  (pixels x channels), times exp(`starvation` x the number of consecutive calls the token was skipped),
  so no region is left stale for long. Each batch row picks its own tokens (the same number per row, so
  the batch stays one tensor); the conditional and unconditional rows of a CFG batch are separate rows.
- Attention: the active tokens attend to all tokens. Keys and values of the skipped tokens come from a
  per-block cache of each token's K/V from its computations; active tokens refresh their entries. RoPE
  angles and sin-cos positions are those of each token's position.
- Skipped tokens (`forecast`): 0 reuses a token's last output and K/V, as in the paper; 1 extrapolates its
  output linearly in the call index from its last two computations (a per-token first-order TaylorSeer);
  2 (default) extrapolates its keys and values the same way, so the active tokens attend to up-to-date
  context. In `ditlab core benchmark --accel` (1024-token shapes64, 50 Euler steps, 8 samples, 2 CPU threads)
  the paper's reuse at ratio 0.5 loses 6.9 dB (1.67x); the defaults lose none at ratio 0.5 (1.35x) or 0.4
  (1.57x) and 0.76 dB at 0.35 (1.71x). The price is a pass over every block's K/V per call.
- `metric="change"` ranks tokens by how fast their output changed between their last two computations
  (per call), in place of the spread of the prediction.
- Dense calls: the first `warmup`, every `dense_every`-th after them, the last `cooldown`, and the first after
  a change of input shape; they recompute everything and refill the caches. The last calls set the sample's
  fine detail, which the forecast gets least right: on shapes64, 2 dense final calls at ratio 0.35 cut the
  PSNR loss over 8 samples from 2.1 to 0.8 dB, where a dense call every 10th made it worse (4.4 dB).
  The defaults (`starvation` 2, `forecast` 2, `cooldown` 2) are this project's; the paper's behaviour is
  `RegionAdaptive(ratio, forecast=0, starvation=0.5, cooldown=0)`.

Cost: a sparse call costs about `ratio` of a dense one in the projections and MLPs, and `ratio` of the
attention too (ratio x T queries against T keys); `nfe_equivalent()` sums computed / total tokens over
calls. Memory: K and V of every block for the whole batch (2 x depth x B x T x hidden_size values; twice
that with forecast=2).
RAS runs each block with a key/value hook (`DiTBlock.forward(..., kv=...)`) that completes the keys and
values from its cache, and wraps `final_layer.forward` as well as `run_blocks` (one hook, "feature-cache");
its state is kept per context like every cache's. The changing token subsets make `compile_blocks`
recompile, so leave it off; inference only (caches are updated in place).

    with RegionAdaptive(ratio=0.5).attach(model, total_calls=50): ...   # or sample(..., cache=...)
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ditlab.core import hooks
from ditlab.core.accel.cache import CachePolicy, CacheState, Call, check_int
from ditlab.core.errors import InputError


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` (B, k) of every sample of x (B, T, C) -> (B, k, C)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def _per_token(x: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """(B, T) -> a view that broadcasts against an `ndim`-dim tensor whose tokens lie along `dim`."""
    return x.reshape(x.shape[0], *[1] * (dim - 1), x.shape[1], *[1] * (ndim - dim - 1))


def _slope(new: torch.Tensor, old: torch.Tensor, calls: torch.Tensor, dim: int) -> torch.Tensor:
    """Change per call of each token between two computations `calls` (B, T or B, k) calls apart."""
    return (new - old) / _per_token(calls.clamp_min(1).to(new.dtype), dim, new.ndim)


METRICS = ("std", "change")


class RegionAdaptive(CachePolicy):
    """RAS: after `warmup` dense calls, recompute only the `ratio` fraction of tokens in focus per call.

    `ratio` in (0, 1] (1 makes every call dense); `dense_every` > 0 makes every `dense_every`-th call after
    the warm-up dense; `starvation` >= 0 is the growth rate of a skipped token's priority per skipped
    call (0: pure metric, tokens in flat regions may never be recomputed). `stats` adds to the common
    counters `tokens_computed`, `tokens_total`, `token_fraction` and `max_skipped` (the most consecutive
    calls any token went without being computed). `forecast` 0 reuses a skipped token's last output and
    keys/values, 1 extrapolates its output from its last two computations, 2 its keys and values too;
    `metric` "std" (RAS's) or "change" ranks the tokens; the last `cooldown` calls are dense. For 2d and 3d
    token models without window attention.
    """

    def __init__(self, ratio: float = 0.5, warmup: int = 4, dense_every: int = 0, starvation: float = 2.0,
                 forecast: int = 2, metric: str = "std", cooldown: int = 2):
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise InputError(f"ratio must lie in (0, 1] (the fraction of tokens recomputed per call), got {ratio!r}")
        if isinstance(starvation, bool) or not isinstance(starvation, int | float) or not starvation >= 0:
            raise InputError(f"starvation must be a number >= 0, got {starvation!r}")
        if isinstance(forecast, bool) or forecast not in (0, 1, 2):
            raise InputError(f"forecast must be 0 (reuse a skipped token's last output), 1 (extrapolate it "
                             f"linearly from its last two) or 2 (its keys and values too), got {forecast!r}")
        if metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
        self.ratio, self.starvation = float(ratio), float(starvation)
        self.warmup = check_int("warmup", warmup, 0)
        self.dense_every = check_int("dense_every", dense_every, 0)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.forecast, self.metric = forecast, metric

    def prepare(self, model: nn.Module) -> None:
        cfg = getattr(model, "cfg", None)
        kind = getattr(cfg, "token_kind", None)
        if kind not in ("2d", "3d"):
            raise InputError(f"region-adaptive sampling needs a 2d or 3d token model (image or volume patches), "
                             f"got token_kind {kind!r}")
        windowed = [i for i, block in enumerate(model.blocks) if block.window is not None]
        if windowed:
            raise InputError(f"region-adaptive sampling cannot use window attention (blocks {windowed} attend in "
                             f"windows of {cfg.window} tokens, which need all their tokens); use global attention")
        self._channels = cfg.output_channels
        self._pred_channels = cfg.output_channels // 2 if cfg.learn_sigma else cfg.output_channels

    def patches(self, model: nn.Module) -> list[hooks.Patch]:
        """The trunk, like every cache policy, and the final layer, whose output RAS completes."""
        return [*super().patches(model), hooks.wrap(model.final_layer, "forward", self._final_layer)]

    def new_state(self) -> CacheState:
        state = super().new_state()
        state.stats.update(tokens_computed=0, tokens_total=0, token_fraction=0.0, max_skipped=0)
        return state

    @property
    def stats(self) -> dict[str, float]:
        """The common counters plus tokens_computed, tokens_total, token_fraction and max_skipped, over all
        contexts."""
        stats = super().stats
        stats["token_fraction"] = stats["tokens_computed"] / stats["tokens_total"] if stats["tokens_total"] else 0.0
        stats["max_skipped"] = max((s.stats["max_skipped"] for s in self.states.values()), default=0)
        return stats

    def reset(self, state: CacheState) -> None:
        state.kv = [None] * self.depth  # per block, (K, V) of all tokens
        state.kv_slope = [None] * self.depth  # forecast=2: per block, their change per call
        state.out = None  # (B, T, prod(patch) * C_out), the final layer's last output
        state.out_slope = None  # like out: each token's output change per call between its last two computations
        state.skipped = None  # (B, T) consecutive calls each token was not computed
        state.active = None  # (B, k) tokens computed by the current call; None: all
        state.at = None  # (B, T) call index of each token's last computation
        state.age = None  # (B, T) sparse call: calls since each token's last computation
        state.index = 0  # the current call's index

    def _dense(self, state: CacheState, index: int, active: int, total: int) -> bool:
        after = index - self.warmup
        return (state.out is None or active == total or after < 0 or index >= self.total_calls - self.cooldown
                or (self.dense_every > 0 and (after + 1) % self.dense_every == 0))

    def _select(self, state: CacheState, active: int) -> torch.Tensor:
        """Per batch row, the `active` tokens of highest focus score, in token order: (B, k)."""
        pred = state.out.unflatten(-1, (-1, self._channels))[..., : self._pred_channels]
        if self.metric == "change" and state.out_slope is not None:
            slope = state.out_slope.unflatten(-1, (-1, self._channels))[..., : self._pred_channels]
            focus = slope.flatten(2).float().abs().mean(dim=-1)  # change per call
        else:
            focus = pred.flatten(2).float().std(dim=-1)  # (B, T)
        score = focus.clamp_min(1e-12).log() + self.starvation * state.skipped
        return score.topk(active, dim=1).indices.sort(dim=1).values

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        b, total, _ = tokens.shape
        active = max(1, math.ceil(self.ratio * total - 1e-9))
        rope = call.rope
        state.index = call.index
        if self._dense(state, call.index, active, total):
            active, state.active = total, None
            state.skipped = torch.zeros(b, total, dtype=torch.long, device=tokens.device)
        else:
            idx = state.active = self._select(state, active)
            tokens = _gather_tokens(tokens, idx)
            if rope is not None:
                rope = tuple(r[idx] for r in rope)  # (B, k, Dh/2)
            state.skipped += 1
            state.skipped.scatter_(1, idx, 0)
            state.age = (call.index - state.at).float()  # the same for every block and the final layer
        for i, block in enumerate(call.blocks):
            kv = functools.partial(self._keys_values, state, i)
            tokens, ctx = block(tokens, call.c, rope, call.grid, call.key_mask, ctx, call.c, kv=kv)
        call.computed = self.depth * active / total
        stats = state.stats
        stats["tokens_computed"] += b * active
        stats["tokens_total"] += b * total
        stats["token_fraction"] = stats["tokens_computed"] / stats["tokens_total"]
        stats["max_skipped"] = max(stats["max_skipped"], int(state.skipped.max()))
        return tokens

    @staticmethod
    def _advance(state: CacheState, cache: torch.Tensor, slope: torch.Tensor | None, new: torch.Tensor,
                 dim: int) -> torch.Tensor:
        """A sparse call's update of a per-token cache (tokens along `dim`), in place: the computed tokens get
        their new values and, with a slope, their new change per call. Returns every token's value now: the
        new one where computed, else the cached one extrapolated along its slope (without one, the cache)."""
        idx = _per_token(state.active, dim, new.ndim).expand(new.shape)
        new = new.to(cache.dtype)
        if slope is None:
            cache.scatter_(dim, idx, new)
            return cache
        now = torch.addcmul(cache, slope, _per_token(state.age.to(cache.dtype), dim, cache.ndim))
        now.scatter_(dim, idx, new)
        slope.scatter_(dim, idx, _slope(new, cache.gather(dim, idx), state.age.gather(1, state.active), dim))
        cache.scatter_(dim, idx, new)
        return now

    def _keys_values(self, state: CacheState, i: int, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense call: store K and V (B, H, T, Dh), contiguous for the scatters to come; with `forecast=2` also
        their change per call since each token's previous computation. Sparse call: `_advance` the cache
        (with `forecast=2` the skipped tokens' rows are extrapolated) and return all tokens' K and V."""
        if state.active is None:
            k, v = k.contiguous(), v.contiguous()
            if self.forecast == 2 and state.at is not None:
                calls = state.index - state.at
                state.kv_slope[i] = tuple(_slope(a, b, calls, 2) for a, b in zip((k, v), state.kv[i], strict=True))
            state.kv[i] = k, v
            return k, v
        slopes = (state.kv_slope[i] if self.forecast == 2 else None) or (None, None)
        k, v = (self._advance(state, cache, slope, new, 2)
                for cache, slope, new in zip(state.kv[i], slopes, (k, v), strict=True))
        return k, v

    def _final_layer(self, forward, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """In place of the final layer: the active tokens' output goes into the cached output of all tokens
        (with a forecast, the skipped ones are extrapolated). The caller gets its own tensor: the cache changes
        in place."""
        state = self.state()
        out, n = forward(x, c), state.index
        if state.active is None:
            if state.out is not None and state.out.shape == out.shape:
                state.out_slope = _slope(out, state.out, n - state.at, 1)
            state.out, state.at = out.clone(), torch.full(out.shape[:2], n, dtype=torch.long, device=out.device)
            return out
        slope = state.out_slope
        now = self._advance(state, state.out, slope, out, 1)
        state.at.scatter_(1, state.active, n)
        return now if self.forecast and slope is not None else state.out.clone()
