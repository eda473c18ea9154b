"""Point-cloud generation metrics with PointFlow's definitions (as DiT-3D and LION report them), so our numbers sit
next to the papers': Chamfer distance (CD) and exact earth mover's distance (EMD) between clouds, and between a
set of generated samples S and a set of references R the minimum matching distance (MMD), coverage (COV), the
leave-one-out 1-nearest-neighbour accuracy (1-NNA) and the Jensen-Shannon divergence (JSD) of occupancy grids.

Conventions:

- A cloud is a numpy array (N, 3) of finite real numbers with N >= 1; it is used as float64. A set of clouds is an
  array (B, N, 3) or a sequence of (N_i, 3) arrays, B >= 1.
- CD(a, b) = mean over a of the *squared* distance to the nearest point of b + the same mean from b to a (the sum
  of the two means, not their average), as in PointFlow.
- EMD(a, b) = mean *Euclidean* (not squared) distance between matched points under the optimal bijection, solved
  exactly (`scipy.optimize.linear_sum_assignment`); a and b need equal point counts. The CUDA approximations most
  papers use (auction / approxmatch kernels) differ from this exact value by up to 10x, so compare EMD numbers
  only with numbers computed the same way; keep it affordable by choosing fewer points, not by approximating.
- MMD, COV and 1-NNA are fractions or distances as defined at `mmd_cov` and `one_nna`; COV, 1-NNA and JSD are
  returned as fractions in [0, 1] (multiply by 100 for the papers' percentages). 1-NNA is 0.5 for indistinguishable
  sets and 1.0 for separable ones.
- JSD is in base 2 (bits), so it lies in [0, 1], over a 28^3 grid spanning [-1, 1]^3; points outside the grid are
  clipped into the border cells (each point counts in its nearest cell, as in PointFlow), none is dropped.
- Normalisations: `normalise_global` (PointFlow: subtract a per-axis mean and divide by one scalar std, both
  computed over the reference set by `global_stats`) and `normalise_unit_box` (per shape: bounding-box centre at the
  origin and longest side 1, the canonical frame of `ditlab.vision3d.data`; LION's [-1, 1] box is twice this, which
  multiplies CD by 4 and EMD by 2).

    from ditlab.vision3d.metrics import evaluate_sets
    scores = evaluate_sets(generated, test_set, normalisation="unit_box")   # {"1-NNA-CD": 0.53, ..., "JSD": 0.01}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from ditlab.core.errors import InputError

DISTANCES = ("cd", "emd")
NORMALISATIONS = ("none", "unit_box", "global")
JSD_RESOLUTION = 28
JSD_BOUND = 1.0

Progress = Callable[[int, int], None]
"""Called as progress(done, total) with counts of cloud pairs, after each row of a distance matrix."""


# ---------------------------------------------------------------------------------------------------- validation


def _cloud(points: Any, what: str = "cloud") -> np.ndarray:
    """`points` as float64 (N, 3), N >= 1, finite; InputError naming `what` otherwise."""
    a = np.asarray(points)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{what}: expected a point cloud of real numbers (N, 3), got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 1:
        raise InputError(f"{what}: expected a point cloud of shape (N, 3) with N >= 1, got shape {a.shape}")
    a = a.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise InputError(f"{what}: {bad} non-finite coordinate(s) (NaN or Inf); expected finite values")
    return a


def _cloud_set(clouds: Any, what: str = "clouds") -> list[np.ndarray]:
    """A set of clouds, (B, N, 3) or a sequence of (N_i, 3), as a list of validated float64 clouds, B >= 1."""
    if isinstance(clouds, np.ndarray):
        if clouds.ndim != 3:
            raise InputError(f"{what}: expected a set of point clouds (B, N, 3) or a sequence of (N, 3) arrays, "
                             f"got an array of shape {clouds.shape}")
        items: Sequence[Any] = list(clouds)
    elif isinstance(clouds, Sequence) and not isinstance(clouds, str | bytes):
        items = clouds
    else:
        raise InputError(f"{what}: expected a set of point clouds (B, N, 3) or a sequence of (N, 3) arrays, "
                         f"got {type(clouds).__name__}")
    if len(items) == 0:
        raise InputError(f"{what}: expected at least one point cloud, got an empty set")
    return [_cloud(c, f"{what}[{i}]") for i, c in enumerate(items)]


def _check_distance(metric: str) -> str:
    if metric not in DISTANCES:
        raise InputError(f"unknown distance {metric!r}; expected one of {DISTANCES}")
    return metric


# ------------------------------------------------------------------------------------------ distances of clouds


def _chamfer(a: np.ndarray, tree_a: cKDTree, b: np.ndarray, tree_b: cKDTree) -> float:
    d_ab, _ = tree_b.query(a, k=1)
    d_ba, _ = tree_a.query(b, k=1)
    return float(np.mean(d_ab**2) + np.mean(d_ba**2))


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """CD(a, b) = mean_a min_b |x - y|^2 + mean_b min_a |x - y|^2: squared distances, the sum of the two means
    (PointFlow's convention). Symmetric, 0 for identical clouds; point counts may differ."""
    a, b = _cloud(a, "a"), _cloud(b, "b")
    return _chamfer(a, cKDTree(a), b, cKDTree(b))


def _emd(a: np.ndarray, b: np.ndarray) -> float:
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def earth_movers_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Exact EMD: the mean Euclidean distance between matched points under the optimal bijection of a onto b, from
    `scipy.optimize.linear_sum_assignment` on the full N x N cost matrix (O(N^3): about a millisecond at N = 128,
    a second at N = 2048). The popular CUDA approximations disagree with this value by up to 10x. a and b must
    have the same number of points."""
    a, b = _cloud(a, "a"), _cloud(b, "b")
    if len(a) != len(b):
        raise InputError(f"EMD needs clouds with equal point counts, got {len(a)} and {len(b)} points")
    return _emd(a, b)


def pairwise_distances(clouds_a: Any, clouds_b: Any = None, metric: str = "cd",
                       progress: Progress | None = None, workers: int = 1) -> np.ndarray:
    """Matrix (len(a), len(b)) float64 of CD or EMD (`metric` "cd" or "emd") between every cloud of `clouds_a` and
    every cloud of `clouds_b`. With `clouds_b` None, the symmetric matrix of `clouds_a` against itself (each pair
    computed once, 0 on the diagonal). EMD is exact and needs one point count across all clouds: choose the count
    to fit the time (see `earth_movers_distance`). `progress(done, total)` is called after each row (each block of
    rows with `workers` > 1: that many processes share the rows)."""
    _check_distance(metric)
    a = _cloud_set(clouds_a, "clouds_a")
    b = a if clouds_b is None else _cloud_set(clouds_b, "clouds_b")
    total = len(a) * (len(a) - 1) // 2 if clouds_b is None else len(a) * len(b)
    tick = _Ticker(progress, total)
    if workers <= 1 or len(a) < 4:
        return _matrix(a, b, clouds_b is None, metric, tick)
    return _matrix_parallel(a, b, clouds_b is None, metric, tick, workers)


def _rows(a: list[np.ndarray], b: list[np.ndarray], lo: int, hi: int, symmetric: bool, metric: str) -> np.ndarray:
    """Rows lo .. hi-1 of the matrix (for symmetric ones, only the entries right of the diagonal)."""
    out = np.zeros((hi - lo, len(b)))
    for i in range(lo, hi):
        start = i + 1 if symmetric else 0
        if start < len(b):
            out[i - lo, start:] = _matrix([a[i]], b[start:], False, metric, _Ticker(None, 0))[0]
    return out


def _matrix_parallel(a, b, symmetric: bool, metric: str, tick: _Ticker, workers: int) -> np.ndarray:
    """`_matrix` over `workers` forked processes (only numpy and scipy run in them, no threads of their own), rows
    split so that each block holds about the same number of pairs."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if metric == "emd":
        _check_emd_counts(a, b)
    n = len(a)
    weights = np.array([len(b) - i - 1 if symmetric else len(b) for i in range(n)], float)
    cuts = np.searchsorted(np.cumsum(weights), np.linspace(0, weights.sum(), 4 * workers + 1)[1:-1])
    bounds = [int(x) for x in np.unique(np.concatenate([[0], cuts, [n]]))]
    m = np.zeros((n, len(b)))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        jobs = {pool.submit(_rows, a, b, lo, hi, symmetric, metric): (lo, hi) 
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)}
        for job, (lo, hi) in jobs.items():
            m[lo:hi] = job.result()
            tick(int(weights[lo:hi].sum()))
    if symmetric:
        m = m + m.T
    return m


class _Ticker:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _check_emd_counts(*sets: list[np.ndarray]) -> None:
    counts = sorted({len(c) for s in sets for c in s})
    if len(counts) > 1:
        raise InputError(f"EMD needs one point count across all clouds, got counts {counts[:5]}"
                         f"{' ...' if len(counts) > 5 else ''}; resample the clouds to a common N")


def _matrix(a: list[np.ndarray], b: list[np.ndarray], symmetric: bool, metric: str, tick: _Ticker) -> np.ndarray:
    if metric == "emd":
        _check_emd_counts(a, b)
        def pair(i: int, j: int) -> float:
            return _emd(a[i], b[j])
    else:
        trees_a = [cKDTree(c) for c in a]
        trees_b = trees_a if symmetric else [cKDTree(c) for c in b]
        def pair(i: int, j: int) -> float:
            return _chamfer(a[i], trees_a[i], b[j], trees_b[j])
    m = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(i + 1 if symmetric else 0, len(b)):
            m[i, j] = pair(i, j)
            if symmetric:
                m[j, i] = m[i, j]
        tick(len(b) - i - 1 if symmetric else len(b))
    return m


@dataclass(frozen=True)
class SetDistances:
    """The three matrices the set metrics need, for one distance: samples x samples `ss`, references x references
    `rr` (both symmetric, 0 diagonal) and samples x references `sr`."""

    metric: str
    ss: np.ndarray
    rr: np.ndarray
    sr: np.ndarray


def set_distances(samples: Any, references: Any, metric: str = "cd",
                  progress: Progress | None = None) -> SetDistances:
    """S-S, R-R and S-R matrices of `metric` ("cd" or "emd") for generated `samples` and `references`.
    `progress(done, total)` counts cloud pairs across the three matrices."""
    _check_distance(metric)
    s, r = _cloud_set(samples, "samples"), _cloud_set(references, "references")
    if metric == "emd":
        _check_emd_counts(s, r)
    n_s, n_r = len(s), len(r)
    tick = _Ticker(progress, n_s * (n_s - 1) // 2 + n_r * (n_r - 1) // 2 + n_s * n_r)
    return SetDistances(metric, _matrix(s, s, True, metric, tick), _matrix(r, r, True, metric, tick),
                        _matrix(s, r, False, metric, tick))


# --------------------------------------------------------------------------------------------- set metrics


def _sr(sr: np.ndarray) -> np.ndarray:
    m = np.asarray(sr, dtype=np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise InputError(f"expected a samples x references distance matrix (S, R) with S, R >= 1, got shape {m.shape}")
    return m


def mmd_cov(sr: np.ndarray) -> tuple[float, float]:
    """(MMD, COV) from the samples x references matrix `sr`. MMD = mean over references of the distance to the
    nearest sample (in the distance's units: squared for CD). COV = share of references that are the nearest
    reference of at least one sample, a fraction in [0, 1]."""
    m = _sr(sr)
    return float(m.min(axis=0).mean()), float(len(np.unique(m.argmin(axis=1))) / m.shape[1])


def _nna_correct(ss: np.ndarray, rr: np.ndarray, sr: np.ndarray) -> np.ndarray:
    """Per item of S then R: whether its nearest other item (self excluded) has its own label."""
    n_s, n_r = sr.shape
    if ss.shape != (n_s, n_s) or rr.shape != (n_r, n_r):
        raise InputError(f"distance matrices do not fit: ss {ss.shape}, rr {rr.shape}, sr {sr.shape}; expected "
                         f"({n_s}, {n_s}), ({n_r}, {n_r}), ({n_s}, {n_r})")
    m = np.block([[ss, sr], [sr.T, rr]]).astype(np.float64)
    np.fill_diagonal(m, np.inf)
    is_sample = np.arange(n_s + n_r) < n_s
    return is_sample[m.argmin(axis=1)] == is_sample


def one_nna(ss: np.ndarray, rr: np.ndarray, sr: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy over S u R: each cloud is classified as sample or reference by its nearest other
    cloud (itself excluded, by inf on the diagonal), using the S-S, R-R and S-R matrices. A fraction in [0, 1]:
    0.5 when the sets are indistinguishable, 1.0 when they are separable (below 0.5 is possible by chance)."""
    return float(_nna_correct(np.asarray(ss), np.asarray(rr), _sr(sr)).mean())


def scores_from_distances(d: SetDistances) -> dict[str, float]:
    """{"1-NNA-X", "COV-X", "MMD-X"} for the distance X of `d` (upper case)."""
    mmd, cov = mmd_cov(d.sr)
    x = d.metric.upper()
    return {f"1-NNA-{x}": one_nna(d.ss, d.rr, d.sr), f"COV-{x}": cov, f"MMD-{x}": mmd}


# ------------------------------------------------------------------------------------------------------ JSD


def occupancy(clouds: Any, resolution: int = JSD_RESOLUTION, bound: float = JSD_BOUND) -> np.ndarray:
    """Point counts (resolution^3,) over a grid of cubic cells spanning [-bound, bound]^3, summed over the set;
    points outside are clipped into the border cells (the nearest cell), none is dropped."""
    if resolution < 1 or not bound > 0:
        raise InputError(f"expected resolution >= 1 and bound > 0, got resolution {resolution} and bound {bound}")
    counts = np.zeros(resolution**3, dtype=np.int64)
    for c in _cloud_set(clouds):
        cell = np.clip(np.floor((c + bound) / (2 * bound) * resolution), 0, resolution - 1).astype(np.int64)
        flat = (cell[:, 0] * resolution + cell[:, 1]) * resolution + cell[:, 2]
        counts += np.bincount(flat, minlength=resolution**3)
    return counts


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def jsd(samples: Any, references: Any, resolution: int = JSD_RESOLUTION, bound: float = JSD_BOUND) -> float:
    """Jensen-Shannon divergence in base 2 (a fraction in [0, 1]) between the point-occupancy distributions of two
    sets on a resolution^3 grid over [-bound, bound]^3 (see `occupancy`); 0 for identical sets."""
    return _jsd(occupancy(samples, resolution, bound).astype(np.float64),
                occupancy(references, resolution, bound).astype(np.float64))


# --------------------------------------------------------------------------------------------- normalisation


def global_stats(references: Any, per_axis_std: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """PointFlow's global normalisation statistics over all points of the reference set: the per-axis mean (3,)
    and the std over all coordinates, a scalar as an array () (or per axis (3,) with `per_axis_std`)."""
    pts = np.concatenate(_cloud_set(references, "references"))
    mean = pts.mean(axis=0)
    std = pts.std(axis=0) if per_axis_std else np.asarray((pts - mean).std())
    if np.any(std <= 0):
        raise InputError("references: all points coincide (std 0); expected a reference set with some extent")
    return mean, std


def normalise_global(clouds: Any, mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    """(cloud - mean) / std for every cloud of the set, with `mean` (3,) and `std` scalar or (3,) from
    `global_stats`. Applied to both samples and references it keeps their relative scale."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if mean.shape != (3,) or std.shape not in ((), (1,), (3,)) or not np.all(np.isfinite(mean)) \
            or not np.all(std > 0) or not np.all(np.isfinite(std)):
        raise InputError(f"expected a finite mean of shape (3,) and a positive finite std (scalar or (3,)), got mean "
                         f"shape {mean.shape} and std {std}")
    return [(c - mean) / std for c in _cloud_set(clouds)]


def normalise_unit_box(cloud: Any) -> np.ndarray:
    """One cloud with its bounding-box centre moved to the origin and scaled so that its longest side is 1, so it
    lies in [-0.5, 0.5]^3 (the canonical frame of `ditlab.vision3d.data`)."""
    c = _cloud(cloud)
    lo, hi = c.min(axis=0), c.max(axis=0)
    side = float((hi - lo).max())
    if side <= 0:
        raise InputError("cloud: all points coincide (bounding box of size 0); expected a cloud with some extent")
    return (c - (lo + hi) / 2) / side


def normalise_sets(samples: list[np.ndarray], references: list[np.ndarray],
                   normalisation: str | tuple[np.ndarray, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Samples and references under `normalisation` (see `evaluate_sets`)."""
    samples, references = _cloud_set(samples, "samples"), _cloud_set(references, "references")
    if isinstance(normalisation, tuple):
        mean, std = normalisation
        return normalise_global(samples, mean, std), normalise_global(references, mean, std)
    if normalisation == "none":
        return samples, references
    if normalisation == "unit_box":
        return [normalise_unit_box(c) for c in samples], [normalise_unit_box(c) for c in references]
    if normalisation == "global":
        mean, std = global_stats(references)
        return normalise_global(samples, mean, std), normalise_global(references, mean, std)
    raise InputError(f"unknown normalisation {normalisation!r}; expected one of {NORMALISATIONS} or (mean, std)")


# --------------------------------------------------------------------------------------------- the protocol


def evaluate_sets(samples: Any, references: Any, *, normalisation: str | tuple[np.ndarray, np.ndarray],
                  metrics: Sequence[str] = DISTANCES, jsd_resolution: int = JSD_RESOLUTION,
                  jsd_bound: float = JSD_BOUND, n_boot: int = 0, seed: int = 0, level: float = 0.95,
                  progress: Progress | None = None) -> dict[str, Any]:
    """The reported protocol: as many generated `samples` as `references`, normalised by `normalisation` ("none",
    "unit_box" per shape, "global" with `global_stats` of the references, or an explicit (mean, std)), then
    1-NNA-X, COV-X and MMD-X for each distance X in `metrics` ("cd", "emd") and JSD.

    JSD is computed on the clouds as given, before normalisation (as PointFlow does), on the grid of `occupancy`.
    The result also holds "n_samples" and "n_references"; with `n_boot` > 0 it adds "ci": {metric: (low, high)}
    from `bootstrap_ci` (JSD has no interval). `progress(done, total)` counts cloud pairs, across the distances."""
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in DISTANCES]
    if unknown or len(metrics) == 0:
        raise InputError(f"unknown or no distances {list(metrics)}; expected some of {DISTANCES}")
    s, r = _cloud_set(samples, "samples"), _cloud_set(references, "references")
    if len(s) != len(r):
        raise InputError(f"the protocol compares as many generated samples as references; got {len(s)} samples and "
                         f"{len(r)} references")
    result: dict[str, Any] = {}
    ns, nr = normalise_sets(s, r, normalisation)
    pairs_each = len(s) * (len(s) - 1) + len(s) ** 2
    total = pairs_each * len(metrics)
    distances: dict[str, SetDistances] = {}
    for k, m in enumerate(metrics):
        offset = k * pairs_each
        sub = None if progress is None else (lambda done, _t, o=offset: progress(o + done, total))
        distances[m] = set_distances(ns, nr, m, sub)
        result.update(scores_from_distances(distances[m]))
    result["JSD"] = jsd(s, r, jsd_resolution, jsd_bound)
    result["n_samples"], result["n_references"] = len(s), len(r)
    if n_boot > 0:
        result["ci"] = bootstrap_ci(distances, n_boot=n_boot, seed=seed, level=level)
    return result


def bootstrap_ci(distances: SetDistances | Mapping[str, SetDistances], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals {metric: (low, high)} at `level` for 1-NNA, COV and MMD of each distance,
    from the precomputed matrices: no distance is recomputed.

    Each of these metrics is a mean of per-item terms computed on the full sets: MMD and COV average over the
    references (distance to the nearest sample; whether some sample has it as nearest reference), 1-NNA over the
    samples and references (whether the item's nearest neighbour shares its label). Each round resamples those
    items with replacement (the samples and the references separately for 1-NNA) and averages their terms.
    Nearest neighbours are deliberately not searched again within a resample: a resample holds only ~63% distinct
    clouds, which biases nearest-neighbour statistics (COV down, MMD up) so the interval would miss the estimate.
    The interval thus says how much the number depends on which items were drawn, given the sets; it is narrower
    than the spread over fully independent redraws of both sets."""
    if n_boot < 1 or not 0 < level < 1:
        raise InputError(f"expected n_boot >= 1 and 0 < level < 1, got n_boot {n_boot} and level {level}")
    items = {distances.metric: distances} if isinstance(distances, SetDistances) else dict(distances)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[float, float]] = {}
    q = [(1 - level) / 2, (1 + level) / 2]
    for d in items.values():
        x = d.metric.upper()
        sr = _sr(d.sr)
        n_s, n_r = sr.shape
        correct = _nna_correct(np.asarray(d.ss), np.asarray(d.rr), sr).astype(np.float64)
        covered = np.zeros(n_r)
        covered[np.unique(sr.argmin(axis=1))] = 1.0
        nearest = sr.min(axis=0)
        i_s = rng.integers(0, n_s, size=(n_boot, n_s))
        i_r = rng.integers(0, n_r, size=(n_boot, n_r))
        nna = (correct[:n_s][i_s].sum(axis=1) + correct[n_s:][i_r].sum(axis=1)) / (n_s + n_r)
        for name, values in ((f"1-NNA-{x}", nna), (f"COV-{x}", covered[i_r].mean(axis=1)),
                             (f"MMD-{x}", nearest[i_r].mean(axis=1))):
            lo, hi = np.quantile(values, q)
            out[name] = (float(lo), float(hi))
    return out


# ------------------------------------------------------------------------------------------------------ LiDAR

BEV_EXTENT = 50.0
BEV_CELL = 0.5


def bev_occupancy(points: Any, extent: float = BEV_EXTENT, cell: float = BEV_CELL) -> np.ndarray:
    """(n, n) bool bird's-eye occupancy of a scan (points (N, 3) in metres, sensor at the origin, z up): the cells of
    `cell` metres over x, y in [-extent, extent) holding at least one point (LiDM's BEV: 0.5 m cells, +-50 m)."""
    p = _cloud(points, "scan")
    n = int(round(2 * extent / cell))
    ij = np.floor((p[:, :2] + extent) / cell).astype(np.int64)
    keep = np.all((ij >= 0) & (ij < n), axis=1)
    grid = np.zeros((n, n), bool)
    grid[ij[keep, 0], ij[keep, 1]] = True
    return grid


def _cells(grid: np.ndarray) -> np.ndarray:
    """The occupied cells of a BEV grid as 2D points in [0, 1] (cell centres over the grid's side)."""
    n = grid.shape[0]
    return (np.argwhere(grid) + 0.5) / n


def bev_mmd(samples: Any, references: Any, extent: float = BEV_EXTENT, cell: float = BEV_CELL) -> float:
    """LiDAR BEV MMD: the mean over references of the Chamfer distance (squared, sum of both means, coordinates in
    grid units over [0, 1]) from its binarised BEV occupancy to the nearest sample's."""
    s = [_cells(bev_occupancy(c, extent, cell)) for c in _cloud_set(samples, "samples")]
    r = [_cells(bev_occupancy(c, extent, cell)) for c in _cloud_set(references, "references")]
    if any(len(c) == 0 for c in s + r):
        raise InputError(f"a scan has no point within +-{extent} m; expected scans around the sensor")
    trees = [cKDTree(c) for c in s]
    sr = np.array([[_chamfer(a, ta, b, cKDTree(b)) for b in r] for a, ta in zip(s, trees, strict=True)])
    return float(sr.min(axis=0).mean())


def bev_jsd(samples: Any, references: Any, extent: float = BEV_EXTENT, cell: float = BEV_CELL) -> float:
    """LiDAR BEV JSD (base 2): between the mean binarised BEV occupancies of the two sets, as distributions."""
    def mean_grid(clouds, what):
        return np.mean([bev_occupancy(c, extent, cell) for c in _cloud_set(clouds, what)], axis=0).ravel()

    p, q = mean_grid(samples, "samples"), mean_grid(references, "references")
    if p.sum() == 0 or q.sum() == 0:
        raise InputError(f"no point within +-{extent} m in one of the sets; expected scans around the sensor")
    return _jsd(p, q)
