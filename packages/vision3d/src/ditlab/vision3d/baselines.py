"""The classical baselines LiDAR completion and densification are compared with (the learned baseline, the
PointNet-style point diffusion network, is `models.PointNetDiffusion`): nearest-neighbour filling of a missing
azimuth sector, nearest-beam filling and linear interpolation between beams. They work on range images (depth
(H, W), 0 = no return), like RangeDiT.
"""

from __future__ import annotations

import numpy as np


def nn_fill_columns(depth: np.ndarray, known_cols: np.ndarray) -> np.ndarray:
    """Nearest-neighbour filling: every unknown column takes the nearest known column's values (azimuth wraps)."""
    w = depth.shape[1]
    known = np.flatnonzero(known_cols)
    d = np.abs(np.arange(w)[:, None] - known[None])
    nearest = known[np.minimum(d, w - d).argmin(axis=1)]
    return depth[:, nearest]


def fill_rows(depth: np.ndarray, keep_every: int, linear: bool) -> np.ndarray:
    """Fill the rows between every `keep_every`-th row: the nearest kept row, or (linear) the interpolation of the
    kept rows above and below where both have a return (else the nearest)."""
    h = depth.shape[0]
    kept = np.arange(0, h, keep_every)
    out = depth.copy()
    for v in range(h):
        if v % keep_every == 0:
            continue
        lo = kept[kept < v].max()
        hi = kept[kept > v].min() if (kept > v).any() else lo
        near = depth[lo] if v - lo <= hi - v else depth[hi]
        if linear and hi != lo:
            a = (v - lo) / (hi - lo)
            both = (depth[lo] > 0) & (depth[hi] > 0)
            out[v] = np.where(both, (1 - a) * depth[lo] + a * depth[hi], near)
        else:
            out[v] = near
    return out
