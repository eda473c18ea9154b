"""Training-free feature caches for sampling a DiT: skip transformer blocks on some network calls.

A policy is a hook (`ditlab.core.hooks`) that wraps `model.run_blocks` (the trunk: tokens (B, T, D) ->
(B, T, D)) while attached. On a full call it runs the blocks and remembers residuals (block output minus
block input); on the other calls it adds a remembered or forecast residual to the current input instead of
running (some of) the blocks. Residuals beat raw outputs because the current input carries the new noisy
sample into the reused part.

- `FORA`: interval reuse of the whole trunk's residual.
- `DeltaDiT`: Δ-DiT; early in sampling reuse the rear blocks' residual (front blocks shape outlines and are
  recomputed), late reuse the front blocks' residual (rear blocks refine details and are recomputed).
- `TaylorSeer`: forecast the trunk residual with a Taylor series in the call index from finite differences.
- `FirstBlockCache`: always run block 0; reuse the other blocks' residual while block 0's residual has
  changed less than a threshold since the last full call (FBCache / TeaCache style).

Every cached tensor is indexed by batch row, so the conditional and unconditional halves of a CFG batch
keep separate caches; a decision to skip is taken from per-row statistics (skip only if every row agrees).
State is kept per context (`ditlab.core.hooks.context`): a caller that runs independent streams of calls
through the model (chunks of a batch, one after the other at every step) gives each its own context, and
each keeps its own cache and call index. `attach` resets all state; within a context, a call whose tokens or
context tokens differ in shape, dtype or device from the previous call's runs fully and starts a new cache.

    with TaylorSeer(interval=4, order=2).attach(model, total_calls=50): ...   # or sample(..., cache=...)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math

import torch
from torch import nn

from ditlab.core import hooks
from ditlab.core.errors import InputError


def check_int(name: str, value, low: int) -> int:
    """`value` if it is an integer >= `low` (a bool is not), else an InputError naming `name` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _scheduled(index: int, interval: int, warmup: int) -> bool:
    """Scheduled full calls: 0 .. warmup - 1, then warmup, warmup + interval, ..."""
    return index < warmup or (index - warmup) % interval == 0


def _sub(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else a - b


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else a + b


class Call:
    """One network call seen by the trunk: its index in its context, its conditioning and a runner over a
    range of blocks."""

    def __init__(self, index: int, blocks: nn.ModuleList, c, rope, grid, key_mask):
        self.index, self.blocks = index, blocks
        self.c, self.rope, self.grid, self.key_mask = c, rope, grid, key_mask
        self.computed = 0

    def run(self, start: int, stop: int, tokens: torch.Tensor, ctx: torch.Tensor | None):
        """blocks[start:stop] exactly as `DiT.run_blocks` calls them -> (tokens, ctx)."""
        for block in self.blocks[start:stop]:
            tokens, ctx = block(tokens, self.c, self.rope, self.grid, self.key_mask, ctx, self.c)
        self.computed += stop - start
        return tokens, ctx


class CacheState:
    """One context's cache: its counters (`stats`), the layout of its last call, and the cached features,
    which the policy's `reset` sets as attributes."""

    def __init__(self, stats: dict[str, float]):
        self.stats = stats
        self.layout: list | None = None


class CachePolicy(hooks.Hook):
    """Base class: `attach(model, total_calls)` installs the cache on one model for one sampling run, as the
    hook "feature-cache" (one cache per model; not next to sequence parallelism, whose token shards would
    take different skip decisions)."""

    name = "feature-cache"
    conflicts = ("sequence-parallel",)

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.total_calls = 0, 0

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def attach(self, model: nn.Module, total_calls: int) -> contextlib.AbstractContextManager:
        """Wrap `model.run_blocks` until the context exits (also on errors), with all state reset.
        `total_calls` is how many model calls the sampler makes in each context (`ditlab.core.hooks.context`):
        whoever counts the calls attaches."""
        blocks, run_blocks = getattr(model, "blocks", None), getattr(model, "run_blocks", None)
        if not isinstance(blocks, nn.ModuleList) or not callable(run_blocks):
            raise TypeError(f"feature caches need a ditlab DiT (with .blocks and .run_blocks), "
                            f"got {type(model).__name__}")
        check_int("total_calls", total_calls, 1)
        if self.registry is not None:
            raise hooks.HookConflict(f"{self!r} is already attached to a model; use one policy instance per model")
        self.depth, self.total_calls = len(blocks), total_calls
        self.prepare(model)
        return hooks.attached(model, self)

    def prepare(self, model: nn.Module) -> None:
        """Check the settings against `model` and derive what depends on it; called by `attach`."""

    def patches(self, model: nn.Module) -> list[hooks.Patch]:
        return [hooks.wrap(model, "run_blocks", functools.partial(self._trunk, model.blocks))]

    def _trunk(self, blocks: nn.ModuleList, run_blocks, tokens, c, rope=None, grid=(), key_mask=None,
               ctx=None) -> torch.Tensor:
        """In place of `run_blocks` (not called: `step` runs the blocks itself), one call in the current context;
        a new layout of the inputs starts that context's cache over."""
        state = self.state()
        layout = [(t.shape, t.dtype, t.device) for t in (tokens, ctx) if t is not None]
        if layout != state.layout:
            self.reset(state)
            state.layout = layout
        stats = state.stats
        call = Call(stats["calls"], blocks, c, rope, grid, key_mask)
        out = self.step(state, call, tokens, ctx)
        stats["calls"] += 1
        stats["full_calls"] += call.computed == self.depth
        stats["blocks_computed"] += call.computed
        stats["blocks_total"] += self.depth
        return out

    def new_state(self) -> CacheState:
        return CacheState({"calls": 0, "full_calls": 0, "blocks_computed": 0, "blocks_total": 0})

    @property
    def context_stats(self) -> dict[str, dict[str, float]]:
        """Context name -> that context's counters, for the last run."""
        return {name: dict(state.stats) for name, state in self.states.items()}

    @property
    def stats(self) -> dict[str, float]:
        """The counters of the last run summed over its contexts: calls, full_calls (calls that ran every
        block), blocks_computed, blocks_total."""
        total = self.new_state().stats
        for state in self.states.values():
            for key, value in state.stats.items():
                total[key] += value
        return total

    def nfe_equivalent(self, context: str | None = None) -> float:
        """Full-network evaluations actually spent in the last run, blocks computed / depth: summed over its
        contexts, or those of one `context`."""
        if context is not None and context not in self.states:
            raise InputError(f"no call of the last run was in context {context!r}; its contexts: {list(self.states)}")
        stats = self.stats if context is None else self.context_stats[context]
        return stats["blocks_computed"] / self.depth if self.depth else 0.0

    def reset(self, state: CacheState) -> None:
        """Forget every cached feature of one context (on its first call, and when its call's shapes change)."""

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """The trunk for one call of the context of `state`: run, reuse or forecast blocks; returns (B, T, D)."""
        return call.run(0, self.depth, tokens, ctx)[0]


class NoCache(CachePolicy):
    """Every call runs every block; outputs are bitwise identical to sampling without a cache. It only
    counts calls, so it gives the baseline row of a benchmark."""


class FORA(CachePolicy):
    """Interval reuse (FORA): run the trunk fully on the first `warmup` calls and then every `interval`-th
    call; in between add the trunk residual of the last full call to the current input."""

    def __init__(self, interval: int = 3, warmup: int = 1):
        super().__init__()
        self.interval, self.warmup = check_int("interval", interval, 1), check_int("warmup", warmup, 0)

    def reset(self, state: CacheState) -> None:
        state.residual = None

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        if state.residual is None or _scheduled(call.index, self.interval, self.warmup):
            out = call.run(0, self.depth, tokens, ctx)[0]
            state.residual = out - tokens
            return out
        return tokens + state.residual


class DeltaDiT(CachePolicy):
    """Δ-DiT: blocks split at `front` (default depth // 2). Every `interval`-th call is full and stores the
    residuals (Δ) of both halves. On the other calls, during the first `boundary` fraction of calls the front
    blocks run and the rear blocks' Δ is added; afterwards the front blocks' Δ is added to the input (context
    tokens too) and the rear blocks run."""

    def __init__(self, interval: int = 2, front: int | None = None, boundary: float = 0.5):
        super().__init__()
        self.interval = check_int("interval", interval, 1)
        self.front = None if front is None else check_int("front", front, 1)
        if not 0.0 < boundary < 1.0:
            raise InputError(f"boundary must lie in (0, 1) (a fraction of the sampler's calls), got {boundary!r}")
        self.boundary = float(boundary)

    def prepare(self, model: nn.Module) -> None:
        front = self.depth // 2 if self.front is None else self.front
        if not 1 <= front <= self.depth - 1:
            raise InputError(f"front must lie in [1, {self.depth - 1}] for a model of depth {self.depth}, got {front}")
        self._split = front

    def reset(self, state: CacheState) -> None:
        state.front_delta = state.front_ctx_delta = state.rear_delta = None

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        f = self._split
        if state.rear_delta is None or call.index % self.interval == 0:
            mid, mid_ctx = call.run(0, f, tokens, ctx)
            out = call.run(f, self.depth, mid, mid_ctx)[0]
            state.front_delta, state.front_ctx_delta = mid - tokens, _sub(mid_ctx, ctx)
            state.rear_delta = out - mid
            return out
        if call.index < self.boundary * self.total_calls:
            return call.run(0, f, tokens, ctx)[0] + state.rear_delta
        mid, mid_ctx = tokens + state.front_delta, _add(ctx, state.front_ctx_delta)
        return call.run(f, self.depth, mid, mid_ctx)[0]


class TaylorSeer(CachePolicy):
    """TaylorSeer on the trunk residual R (output - input of all blocks, i.e. the sum of every block's gated
    attention and MLP outputs, the features the paper forecasts per module). Full calls: the first `warmup`,
    then every `interval`-th; each stores R and its backward differences up to `order`, each divided by the
    distance in calls to the previous full call (Δ^{i+1} = (Δ^i_new - Δ^i_old) / d). Other calls use
    R(k) ≈ Σ_i Δ^i / i! · (k - k_full)^i. The order grows as full calls accumulate."""

    def __init__(self, interval: int = 4, order: int = 2, warmup: int = 1):
        super().__init__()
        self.interval, self.warmup = check_int("interval", interval, 1), check_int("warmup", warmup, 0)
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise InputError(f"order must be 1, 2 or 3 (the Taylor order), got {order!r}")
        self.order = order

    def reset(self, state: CacheState) -> None:
        state.diffs = []  # Δ^0 R = R, Δ^1 R, ... at the last full call
        state.last = 0  # the index of that call

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        if not state.diffs or _scheduled(call.index, self.interval, self.warmup):
            out = call.run(0, self.depth, tokens, ctx)[0]
            diffs = [out - tokens]
            if state.diffs:
                d = call.index - state.last
                for old in state.diffs[: self.order]:
                    diffs.append((diffs[-1] - old) / d)
            state.diffs, state.last = diffs, call.index
            return out
        m = call.index - state.last
        forecast = tokens + state.diffs[0]
        for i, diff in enumerate(state.diffs[1:], start=1):
            forecast = forecast.add(diff, alpha=m**i / math.factorial(i))
        return forecast


class FirstBlockCache(CachePolicy):
    """First-block residual cache: block 0 always runs. If, in every batch row, the relative L1 change of
    block 0's residual since the last full call (mean |r0 - r0_full| / mean |r0_full|) is below `threshold`,
    the residual of blocks 1.. stored at that call is added; otherwise they run and the cache is refreshed.
    `max_skip` bounds consecutive reuses (0 never reuses)."""

    def __init__(self, threshold: float = 0.05, max_skip: int | None = None):
        super().__init__()
        if not threshold > 0:
            raise InputError(f"threshold must be > 0 (a relative L1 change, e.g. 0.05), got {threshold!r}")
        self.threshold = float(threshold)
        self.max_skip = None if max_skip is None else check_int("max_skip", max_skip, 0)

    def reset(self, state: CacheState) -> None:
        state.first = None  # block 0's residual at the last full call
        state.rest = None  # blocks 1..'s residual at the last full call
        state.skips = 0

    @staticmethod
    def change(first: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-row relative L1 change of block 0's residual `first` from `ref` (the last full call's), (B,)."""
        ref = ref.flatten(1)
        return (first.flatten(1) - ref).abs().mean(1) / ref.abs().mean(1).clamp_min(1e-12)

    def step(self, state: CacheState, call: Call, tokens: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        h, h_ctx = call.run(0, 1, tokens, ctx)
        first = h - tokens
        reuse = (state.first is not None
                 and (self.max_skip is None or state.skips < self.max_skip)
                 and bool((self.change(first, state.first) < self.threshold).all()))
        if reuse:
            state.skips += 1
            return h + state.rest
        out = call.run(1, self.depth, h, h_ctx)[0]
        state.first, state.rest, state.skips = first, out - h, 0
        return out
