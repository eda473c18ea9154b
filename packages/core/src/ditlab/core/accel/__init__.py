"""Acceleration: training-free feature caches, region-adaptive sampling, precision, compile, quantization.

Any policy turns on with one argument: `sample(..., cache=policy("taylorseer"))`, or built by hand,
`cache=TaylorSeer(interval=3, order=2)` or `cache=RegionAdaptive(ratio=0.5)`; `optimize(model,
precision="bf16", compile=True)` handles the rest. Policies are hooks (`ditlab.core.hooks`) with their
state per hook context.
"""

import inspect

from ditlab.core.accel.cache import FORA, CachePolicy, DeltaDiT, FirstBlockCache, NoCache, TaylorSeer
from ditlab.core.accel.precision import autocast, bf16_supported, compile_blocks, optimize, quantize
from ditlab.core.accel.ras import RegionAdaptive
from ditlab.core.errors import InputError

# name -> (policy, settings): the settings `ditlab core benchmark --accel` found best (BENCHMARKS.md, "Core
# acceleration", 50 Euler steps, CFG 2; PSNR loss against the uncached sample's distance to the reference).
_TUNED: dict[str, tuple[type[CachePolicy], dict]] = {
    "none": (NoCache, {}),
    # shapes32: no FORA row stays within 0.5 dB; interval 2 loses least (3.50 dB at 1.98x)
    "fora": (FORA, {"interval": 2}),
    # shapes32: G1's best within 0.5 dB, 3.51x at -2.12 dB (interval 4, order 1: 3.49x at 0.27 dB)
    "taylorseer": (TaylorSeer, {"interval": 4, "order": 2}),
    # shapes32: the one Δ-DiT row, 1.18x at 2.78 dB
    "delta-dit": (DeltaDiT, {"interval": 2}),
    # shapes32: threshold 0.05 loses least (2.07 dB at 1.66x; 0.1: 7.39 dB)
    "first-block": (FirstBlockCache, {"threshold": 0.05}),
    # shapes64 (1024 tokens, RAS re-run): the best within 0.5 dB, 1.57x at -0.15 dB (ratio 0.35: 0.76 dB)
    "ras": (RegionAdaptive, {"ratio": 0.4}),
}
POLICIES: tuple[str, ...] = tuple(_TUNED)


def policy(name: str, **overrides) -> CachePolicy:
    """A new cache policy by name (one of `POLICIES`) with its tuned settings, any of them replaced by
    `overrides`: `policy("taylorseer")`, `policy("ras", ratio=0.5)`."""
    if name not in _TUNED:
        raise InputError(f"unknown cache policy {name!r}; expected one of {list(POLICIES)}")
    cls, settings = _TUNED[name]
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise InputError(f"policy {name!r} ({cls.__name__}) has no setting {unknown}; its settings: {accepted}")
    return cls(**{**settings, **overrides})


__all__ = ["CachePolicy", "NoCache", "FORA", "DeltaDiT", "TaylorSeer", "FirstBlockCache", "RegionAdaptive",
           "POLICIES", "policy", "autocast", "bf16_supported", "compile_blocks", "optimize", "quantize"]
