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
  (1.57x) and 0.76 dB at 0.35 (1.71x), timed before the token-row caches below. The price is one pass over
  every block's K/V per call.
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
calls. Layout: every per-token cache (each block's keys and values, their slopes, the output and its slope) is
a buffer of token rows (B * T, C), allocated on the first dense calls of a run and then updated in place, so a
sparse call allocates nothing of the caches' size but the output it returns. A block keeps K and V side by side,
rows [K | V] (B * T, 2 * hidden_size): its new keys and values arrive as views of qkv's (B, T, 3, H, Dh) output,
where they already are token rows side by side (after RoPE or qk-norm they are copied). A sparse call reads and
writes only the computed rows (flat indices b * T + token; `index_select`, `index_copy_`) and, with forecast=2,
makes one pass over each block's cache (`addcmul` of cache, slope and age into a buffer that every block
shares), whose (B, H, T, Dh) views attention takes as they are. Memory: K and V of every block for the whole
batch (2 x depth x B x T x hidden_size values; with forecast=2 twice that, plus one block's worth).
`scripts/ras_speed.py` (shapes64, ratio 0.4, batch 4, fp32 on 1 thread) measured this bookkeeping at 7% of
a RAS run, where (B, H, T, Dh) caches with gathers, scatters and fresh tensors per call took 20%: the run
is 1.24x faster, 2.23x faster than uncached sampling (before: 1.81x).
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


def _kv_rows(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Keys and values (B, H, n, Dh) -> token rows [K | V] (B * n, 2 * H * Dh). Where both are still views of
    qkv's output (B, n, 3, H, Dh) (no RoPE, no qk-norm), K and V lie side by side in each token's row and this is
    a view of them; else a copy."""
    b, h, n, dh = k.shape
    c = h * dh
    if (k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr() and k.stride() == v.stride()
            == (n * 3 * c, dh, 3 * c, 1) and v.storage_offset() == k.storage_offset() + c):
        return k.as_strided((b * n, 2 * c), (3 * c, 1))
    return torch.cat([t.transpose(1, 2).flatten(2) for t in (k, v)], dim=2).flatten(0, 1)


def _kv_heads(rows: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows [K | V] (B * T, 2 * H * Dh) -> K and V as the (B, H, T, Dh) views attention takes, with B, H, Dh
    those of `like`."""
    b, h, _, dh = like.shape
    k, v = rows.chunk(2, dim=1)
    return k.view(b, -1, h, dh).transpose(1, 2), v.view(b, -1, h, dh).transpose(1, 2)


def _empty_rows(x: torch.Tensor) -> torch.Tensor:
    """A new cache of token rows shaped like x (B * T, C): contiguous whatever x's strides, uninitialised."""
    return x.new_empty(x.shape)


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
        state.kv = [None] * self.depth  # per block, K and V of all tokens, token rows [K | V] (B * T, 2 * D)
        state.kv_slope = [None] * self.depth  # forecast=2, from the 2nd dense call: per block, their change per call
        state.kv_now = None  # forecast=2: the current call's K and V rows, one buffer for every block
        state.out = None  # (B, T, prod(patch) * C_out), the final layer's last output
        state.out_slope = None  # like out: each token's output change per call between its last two computations
        state.age = None  # (B, T) calls since each token's last computation (0: computed by the current call),
        # i.e. the consecutive calls it was skipped
        state.active = None  # (B, k) tokens computed by the current call; None: all
        state.rows = None  # (B * k,) their rows b * T + token in the token-row caches
        state.since = None  # (rows computed, 1) calls between those rows' previous and current computation

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
        score = focus.clamp_min(1e-12).log() + self.starvation * state.age  # age: calls skipped
        return score.topk(active, dim=1).indices.sort(dim=1).values

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        b, total, _ = tokens.shape
        active = max(1, math.ceil(self.ratio * total - 1e-9))
        rope = call.rope
        if self._dense(state, call.index, active, total):
            active, state.active = total, None
            if state.age is None:
                state.age = tokens.new_zeros(b, total, dtype=torch.float32)
            else:  # every token is computed, one call after the ages of the previous call
                state.since = state.age.view(-1, 1) + 1
                state.age.zero_()
        else:
            idx = state.active = self._select(state, active)
            rows = state.rows = (idx + total * torch.arange(b, device=idx.device)[:, None]).flatten()
            tokens = tokens.reshape(b * total, -1).index_select(0, rows).view(b, active, -1)
            if rope is not None:
                rope = tuple(r[idx] for r in rope)  # (B, k, Dh/2)
            age = state.age.view(-1)
            age.add_(1)  # one call on: a computed token's age is now its `since`, then 0
            state.since = age.index_select(0, rows)[:, None]
            age.index_fill_(0, rows, 0)
        for i, block in enumerate(call.blocks):
            kv = functools.partial(self._keys_values, state, i)
            tokens, ctx = block(tokens, call.c, rope, call.grid, call.key_mask, ctx, call.c, kv=kv)
        call.computed = self.depth * active / total
        stats = state.stats
        stats["tokens_computed"] += b * active
        stats["tokens_total"] += b * total
        stats["token_fraction"] = stats["tokens_computed"] / stats["tokens_total"]
        stats["max_skipped"] = max(stats["max_skipped"], int(state.age.max()))
        return tokens

    @staticmethod
    def _refill(state: CacheState, cache: torch.Tensor, slope: torch.Tensor | None, new: torch.Tensor) -> None:
        """A dense call's update of a per-token cache of token rows (B * T, C), in place: the new rows and, into
        `slope`, each token's change per call since its previous computation."""
        if slope is not None:
            torch.sub(new, cache, out=slope).div_(state.since)
        cache.copy_(new)

    @staticmethod
    def _advance(state: CacheState, cache: torch.Tensor, slope: torch.Tensor | None, new: torch.Tensor) -> None:
        """A sparse call's update of a per-token cache of token rows (B * T, C), in place: the computed rows
        (`state.rows`) get their new values `new` (B * k, C) and, with a slope, their new change per call."""
        rows, new = state.rows, new.to(cache.dtype)
        if slope is not None:
            old = cache.index_select(0, rows)
            slope.index_copy_(0, rows, torch.sub(new, old, out=old).div_(state.since))
        cache.index_copy_(0, rows, new)

    @staticmethod
    def _forecast(state: CacheState, cache: torch.Tensor, slope: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Every token's value now, after `_advance`: its cached value extrapolated along its slope for its age,
        which is 0 for the computed tokens (their new value). One pass over the cache, into `out` if given."""
        return torch.addcmul(cache, slope, state.age.view(-1, 1).to(cache.dtype), out=out)

    def _keys_values(self, state: CacheState, i: int, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense call: `_refill` the block's [K | V] rows (with `forecast=2`, from the second dense call on, their
        slopes too) and pass k, v on. Sparse call: `_advance` the cache with the computed tokens' rows and return
        all tokens' K and V (with `forecast=2` the skipped tokens' forecast), (B, H, T, Dh) views of token rows,
        which attention takes as they are (a contiguous copy would cost as much as it saves)."""
        new = _kv_rows(k, v)
        cache, slope = state.kv[i], state.kv_slope[i]
        if state.active is None:
            if cache is None:
                cache = state.kv[i] = _empty_rows(new)
            elif self.forecast == 2 and slope is None:
                slope = state.kv_slope[i] = _empty_rows(new)
                if state.kv_now is None:  # a block's K and V are dead once its attention has run: one buffer serves all
                    state.kv_now = _empty_rows(new)
            self._refill(state, cache, slope, new)
            return k, v
        self._advance(state, cache, slope, new)
        return _kv_heads(cache if slope is None else self._forecast(state, cache, slope, state.kv_now), k)

    def _final_layer(self, forward, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """In place of the final layer: the active tokens' output goes into the cached output of all tokens
        (with a forecast, the skipped ones are extrapolated). The caller gets its own tensor: the cache changes
        in place."""
        state = self.state()
        out = forward(x, c)  # (B, T or k, prod(patch) * C_out)
        if state.out is None:
            state.out = out.clone()
            return out
        cache, new = state.out.flatten(0, 1), out.flatten(0, 1)  # token rows
        if state.active is None:
            if state.out_slope is None:
                state.out_slope = torch.empty_like(state.out)
            self._refill(state, cache, state.out_slope.flatten(0, 1), new)
            return out
        slope = None if state.out_slope is None else state.out_slope.flatten(0, 1)
        self._advance(state, cache, slope, new)
        if self.forecast and slope is not None:
            return self._forecast(state, cache, slope).view_as(state.out)
        return state.out.clone()
