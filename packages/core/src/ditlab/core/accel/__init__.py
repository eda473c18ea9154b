"""Acceleration: training-free feature caches, region-adaptive sampling, precision, compile, quantization.

Any policy turns on with one argument: `sample(..., cache=TaylorSeer(interval=3, order=2))` or
`cache=RegionAdaptive(ratio=0.5)`; `optimize(model, precision="bf16", compile=True)` handles the rest.
"""

from ditlab.core.accel.cache import FORA, CachePolicy, DeltaDiT, FirstBlockCache, NoCache, TaylorSeer
from ditlab.core.accel.precision import autocast, bf16_supported, compile_blocks, optimize, quantize
from ditlab.core.accel.ras import RegionAdaptive

__all__ = ["CachePolicy", "NoCache", "FORA", "DeltaDiT", "TaylorSeer", "FirstBlockCache", "RegionAdaptive",
           "autocast", "bf16_supported", "compile_blocks", "optimize", "quantize"]
