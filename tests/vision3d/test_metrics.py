import itertools

import numpy as np
import pytest

from ditlab.core.errors import InputError
from ditlab.vision3d.metrics import (
    bootstrap_ci,
    chamfer_distance,
    earth_movers_distance,
    evaluate_sets,
    global_stats,
    jsd,
    mmd_cov,
    normalise_global,
    normalise_unit_box,
    one_nna,
    pairwise_distances,
    set_distances,
)


def _sphere(rng, n, axes=(1.0, 1.0, 1.0)):
    p = rng.normal(size=(n, 3))
    return 0.5 * p / np.linalg.norm(p, axis=1, keepdims=True) * np.asarray(axes)


def _cube(rng, n, axes=(1.0, 1.0, 1.0)):
    p = rng.uniform(-0.5, 0.5, size=(n, 3))
    face = rng.integers(0, 3, size=n)
    p[np.arange(n), face] = rng.choice([-0.5, 0.5], size=n)
    return p * np.asarray(axes)


def _ellipsoids(rng, count, n):
    return np.stack([_sphere(rng, n, rng.uniform(0.4, 1.0, size=3)) for _ in range(count)])


def _greedy_matching_cost(a, b):
    """Repeatedly match the globally closest remaining pair: not optimal in general."""
    cost = np.linalg.norm(a[:, None] - b[None], axis=2)
    left, right, total = set(range(len(a))), set(range(len(b))), 0.0
    while left:
        i, j = min(((i, j) for i in left for j in right), key=lambda ij: cost[ij])
        total += cost[i, j]
        left.remove(i)
        right.remove(j)
    return total / len(a)


def test_a_cloud_against_itself_is_zero_and_cd_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = _sphere(rng, 200), _cube(rng, 150)
    assert chamfer_distance(a, a) == 0 and earth_movers_distance(a, a) == 0
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a)) and chamfer_distance(a, b) > 0
    # squared distances, sum of the two means: a -> b: 1; b -> a: (1 + 9) / 2
    assert chamfer_distance([[0, 0, 0]], [[1, 0, 0], [3, 0, 0]]) == pytest.approx(6.0)


def test_emd_is_the_exact_optimal_matching():
    a = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    b = a[[2, 0, 1]] + [0, 0, 0.1]  # a permuted and shifted: the optimal matching moves every point by 0.1
    assert earth_movers_distance(a, b) == pytest.approx(0.1)
    # greedy (closest pair first: 2 -> 1.1, then 0 -> 3) costs 1.95; the optimum (0 -> 1.1, 2 -> 3) costs 1.05
    a, b = np.array([[0, 0, 0], [2, 0, 0]], dtype=float), np.array([[1.1, 0, 0], [3, 0, 0]])
    assert _greedy_matching_cost(a, b) == pytest.approx(1.95)
    assert earth_movers_distance(a, b) == pytest.approx(1.05)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    brute = min(np.linalg.norm(a - b[list(p)], axis=1).mean() for p in itertools.permutations(range(6)))
    assert earth_movers_distance(a, b) == pytest.approx(brute)
    assert earth_movers_distance(a, b) <= _greedy_matching_cost(a, b) + 1e-12


def test_pairwise_matrices_agree_with_single_distances_and_report_progress():
    rng = np.random.default_rng(2)
    s, r = _ellipsoids(rng, 4, 64), _ellipsoids(rng, 3, 64)
    calls = []
    m = pairwise_distances(s, r, "emd", progress=lambda done, total: calls.append((done, total)))
    assert m.shape == (4, 3) and m[2, 1] == pytest.approx(earth_movers_distance(s[2], r[1]))
    assert calls[-1] == (12, 12) and len(calls) == 4
    sym = pairwise_distances(s, metric="cd")
    assert np.allclose(sym, sym.T) and np.all(np.diag(sym) == 0)
    assert sym[0, 3] == pytest.approx(chamfer_distance(s[0], s[3]))


def test_one_nna_mmd_cov_on_hand_made_matrices():
    ss, rr = np.array([[0, 1], [1, 0.0]]), np.array([[0, 1], [1, 0.0]])
    far = np.full((2, 2), 5.0)
    assert one_nna(ss, rr, far) == 1.0  # every cloud's nearest other is in its own set
    near = np.array([[0.5, 2], [2, 0.5]])
    assert one_nna(ss, rr, near) == 0.0
    assert mmd_cov(np.array([[1.0, 3.0], [2.0, 4.0]])) == (2.0, 0.5)  # column minima 1 and 3; both pick reference 0


def test_same_distribution_is_indistinguishable_and_covered():
    rng = np.random.default_rng(3)
    s, r = _ellipsoids(rng, 32, 256), _ellipsoids(rng, 32, 256)
    scores = evaluate_sets(s, r, normalisation="none", metrics=("cd",))
    # 64 items: the standard error of an accuracy near 0.5 is about 0.06
    assert abs(scores["1-NNA-CD"] - 0.5) < 0.2
    assert scores["COV-CD"] >= 0.4 and scores["MMD-CD"] > 0
    # 8192 points over ~1000 occupied cells: sampling noise alone gives a JSD near 0.1
    assert scores["JSD"] < 0.2 and scores["n_samples"] == scores["n_references"] == 32


def test_different_classes_are_separated_by_both_distances():
    rng = np.random.default_rng(4)
    spheres = np.stack([_sphere(rng, 128, rng.uniform(0.8, 1.0, 3)) for _ in range(16)])
    cubes = np.stack([_cube(rng, 128, rng.uniform(0.8, 1.0, 3)) for _ in range(16)])
    calls = []
    scores = evaluate_sets(spheres, cubes, normalisation="unit_box", progress=lambda d, t: calls.append((d, t)))
    assert scores["1-NNA-CD"] >= 0.95 and scores["1-NNA-EMD"] >= 0.95
    assert scores["JSD"] > 0.3
    assert calls[-1][0] == calls[-1][1] == 2 * (16 * 15 + 16 * 16)
    assert set(scores) >= {"1-NNA-CD", "COV-CD", "MMD-CD", "1-NNA-EMD", "COV-EMD", "MMD-EMD", "JSD"}
    assert all(0 <= scores[k] <= 1 for k in ("1-NNA-CD", "COV-CD", "1-NNA-EMD", "COV-EMD", "JSD"))


def test_jsd_is_zero_for_identical_sets_and_clips_outside_points():
    rng = np.random.default_rng(5)
    s = _ellipsoids(rng, 4, 128)
    assert jsd(s, s) == 0
    assert jsd(s * 10, s * 10) == 0  # outside the grid: clipped to the border cells, not dropped (no 0 / 0)
    assert 0 < jsd(s, s * 10) <= 1


def test_normalisations():
    rng = np.random.default_rng(6)
    c = rng.normal(size=(100, 3)) * [3, 1, 0.5] + [5, -2, 1]
    u = normalise_unit_box(c)
    side = u.max(0) - u.min(0)
    assert side.max() == pytest.approx(1) and np.allclose((u.max(0) + u.min(0)) / 2, 0)
    assert u.min() >= -0.5 - 1e-12 and u.max() <= 0.5 + 1e-12
    refs = rng.normal(size=(8, 64, 3)) * 0.3 + [1, 2, 3]
    mean, std = global_stats(refs)
    pts = np.concatenate(normalise_global(refs, mean, std))
    assert np.allclose(pts.mean(0), 0) and pts.std() == pytest.approx(1)
    mean, std = global_stats(refs, per_axis_std=True)
    assert np.allclose(np.concatenate(normalise_global(refs, mean, std)).std(0), 1)


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_clouds():
    rng = np.random.default_rng(7)
    widths = []
    for count in (8, 32):
        d = set_distances(_ellipsoids(rng, count, 128), _ellipsoids(rng, count, 128), "cd")
        ci = bootstrap_ci(d, n_boot=500, seed=0)
        assert ci == bootstrap_ci(d, n_boot=500, seed=0)
        mmd, cov = mmd_cov(d.sr)
        for name, value in (("1-NNA-CD", one_nna(d.ss, d.rr, d.sr)), ("COV-CD", cov), ("MMD-CD", mmd)):
            lo, hi = ci[name]
            assert lo <= value <= hi
        widths.append(ci["MMD-CD"][1] - ci["MMD-CD"][0])
    assert widths[1] < widths[0]
    scores = evaluate_sets(d_s := _ellipsoids(rng, 8, 64), d_s, normalisation="global", metrics=("cd",), n_boot=50)
    assert scores["MMD-CD"] == 0 and scores["ci"]["MMD-CD"] == (0.0, 0.0) and scores["1-NNA-CD"] <= 0.5


@pytest.mark.parametrize("call, message", [
    (lambda: chamfer_distance(np.zeros((0, 3)), np.zeros((4, 3))),
     r"a: .*shape \(N, 3\) with N >= 1, got shape \(0, 3\)"),
    (lambda: chamfer_distance([[0, 0, np.nan]], [[0, 0, 0]]), "a: 1 non-finite coordinate"),
    (lambda: chamfer_distance(np.zeros((4, 3)), [[0, 0, np.inf]]), "b: 1 non-finite"),
    (lambda: earth_movers_distance(np.zeros((4, 2)), np.zeros((4, 2))), r"got shape \(4, 2\)"),
    (lambda: earth_movers_distance(np.zeros((4, 3)), np.zeros((5, 3))), "equal point counts, got 4 and 5"),
    (lambda: pairwise_distances([np.zeros((4, 3)), np.zeros((5, 3))], metric="emd"), r"counts \[4, 5\]"),
    (lambda: pairwise_distances(np.zeros((4, 3))), r"clouds_a: expected a set .* got an array of shape \(4, 3\)"),
    (lambda: pairwise_distances([], metric="cd"), "clouds_a: expected at least one point cloud"),
    (lambda: pairwise_distances(np.zeros((2, 4, 3)), metric="hausdorff"), "unknown distance 'hausdorff'"),
    (lambda: evaluate_sets(np.ones((3, 4, 3)), np.ones((2, 4, 3)), normalisation="none"),
     "as many generated samples as references; got 3 samples and 2 references"),
    (lambda: evaluate_sets([np.ones((4, 3)), [[0, 0, np.nan]]], np.ones((2, 4, 3)), normalisation="none"),
     r"samples\[1\]: 1 non-finite"),
    (lambda: evaluate_sets(np.ones((2, 4, 3)), np.ones((2, 4, 3)), normalisation="sphere"),
     "unknown normalisation 'sphere'"),
    (lambda: normalise_unit_box(np.ones((4, 3))), "all points coincide"),
    (lambda: global_stats(np.ones((2, 4, 3))), "all points coincide"),
    (lambda: bootstrap_ci(set_distances(np.ones((2, 4, 3)), np.ones((2, 4, 3))), level=95), "0 < level < 1"),
])
def test_bad_inputs_are_refused_with_a_helpful_message(call, message):
    with pytest.raises(InputError, match=message):
        call()
