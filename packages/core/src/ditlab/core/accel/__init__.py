"""Acceleration: training-free feature caches for sampling."""

from ditlab.core.accel.cache import FORA, CachePolicy, DeltaDiT, FirstBlockCache, NoCache, TaylorSeer

__all__ = ["CachePolicy", "NoCache", "FORA", "DeltaDiT", "TaylorSeer", "FirstBlockCache"]
