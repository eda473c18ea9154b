"""Seeded data splits: every vertical's generated data is a function of a seed, and its train, validation and test
items own disjoint seed ranges, so settings are chosen on validation seeds and the test seeds stay untouched."""

from __future__ import annotations

from collections.abc import Mapping

from ditlab.core.errors import InputError


def split_seed(offsets: Mapping[str, int], size: int, split: str, i: int, what: str = "item") -> int:
    """The seed of item `i` of `split`: `offsets[split] + i`, with `i` in [0, size) so the ranges never meet."""
    if split not in offsets:
        raise InputError(f"unknown split {split!r}; expected one of {tuple(offsets)}")
    if not 0 <= i < size:
        raise InputError(f"{what} index must lie in [0, {size}), got {i}")
    return offsets[split] + i
