"""`ditlab vision3d benchmark`: PointDiT (DiT-3D) against the same-budget PointNet diffusion baseline on held-out
shapes, RangeDiT against its baselines on held-out scans, and generation speed, on core's harness.

Shapes: per class, as many generated clouds as test shapes (100 per class, quick 16; test seeds, never trained on
or used to choose anything), 2048 points, seed 0, each network at its validated default steps and guidance. Metrics
(`metrics.evaluate_sets`, PointFlow's definitions): 1-NNA, COV and MMD with Chamfer distance on the full clouds,
with exact EMD (Hungarian, `scipy.optimize.linear_sum_assignment`) on seeded 256-point subsets of them (exact EMD on
2048 points costs ~1 s a pair), and JSD on a 28^3 grid; under both normalisations: PointFlow's global one (the
references' per-axis mean and one std) and a per-shape unit box. 1-NNA and COV are in %. A third row per class,
"real shapes (validation split)", scores held-out real shapes the same way: what a perfect generator would get
with this many samples. Intervals: 95% bootstrap over clouds, for 1-NNA-CD.
LiDAR (`scenes`, test seeds; the "suburban" style is the out-of-distribution set: a street layout, houses and
vegetation the network never saw). Generation: 32 scans (quick 8) of RangeDiT and of the PointNet baseline
against 32 test scans, BEV MMD and JSD (`metrics.bev_mmd` / `bev_jsd`, LiDM's: binarised occupancy, 0.5 m cells,
+-50 m) on `LIDAR_POINTS` points drawn from every scan (the baseline's size, so the sets compare alike), and for
RangeDiT on whole scans too; "real scans (held-out)" scores another 32 test scans the same way. Completion: a 90 deg
sector of each of 16 test scans (quick 4) regenerated around the rest, Chamfer distance (m^2) of the sector's
points to the truth, against nearest-neighbour filling (each missing pixel takes its row's nearest known column);
densification 16 -> 64 beams the same way, against nearest-beam filling and linear interpolation between beams.
Speed: 100 chairs of 2048 points at the default steps and precision, after the network is loaded and prepared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ditlab.core.bench import Recorder, Report, select_parts
from ditlab.vision3d.baselines import fill_rows, nn_fill_columns
from ditlab.vision3d.data import CLASSES, cached_dataset
from ditlab.vision3d.io import from_range_image
from ditlab.vision3d.metrics import (
    SetDistances,
    bev_jsd,
    bev_mmd,
    bootstrap_ci,
    chamfer_distance,
    global_stats,
    jsd,
    normalise_sets,
    pairwise_distances,
    scores_from_distances,
)
from ditlab.vision3d.pipeline import WEIGHTS, LidarGenerator, ShapeGenerator, load_model, sector_columns
from ditlab.vision3d.scenes import cached_scans

PARTS = ("shapes", "lidar", "speed")
LIDAR_POINTS = 4096
RANGE_DIT = "RangeDiT"
NORMALISATIONS = {"global": "PointFlow global", "unit_box": "per-shape unit box"}
EMD_POINTS = 256
DIT = "PointDiT (DiT-3D)"
POINTNET = "PointNet diffusion (same params, same CPU time)"
REAL = "real shapes (validation split)"
METRICS = ("1-NNA-CD", "COV-CD", "MMD-CD", "1-NNA-EMD", "COV-EMD", "MMD-EMD", "JSD", "1-NNA-CD low", "1-NNA-CD high",
           "BEV-MMD", "BEV-JSD", "CD", "seconds", "shapes_per_s")
PERCENT = ("1-NNA-CD", "COV-CD", "1-NNA-EMD", "COV-EMD", "1-NNA-CD low", "1-NNA-CD high")


def subsample(clouds: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The same seeded `n` of each cloud's points (clouds (B, N, 3)), for exact EMD at an affordable size."""
    rng = np.random.default_rng(seed)
    return np.stack([c[rng.choice(len(c), n, replace=False)] for c in clouds])


def score_sets(sets: dict[str, np.ndarray], refs: np.ndarray, normalisation: str, n_boot: int,
               workers: int = 2) -> dict[str, dict[str, float]]:
    """The shape metrics of every set against the same references (their R-R matrices computed once), 1-NNA and
    COV in %: CD on the full clouds, exact EMD on `EMD_POINTS`-point subsets, JSD before normalisation."""
    stats = global_stats(refs) if normalisation == "global" else normalisation  # the full references' statistics
    out: dict[str, dict[str, float]] = {m: {"JSD": jsd(c, refs)} for m, c in sets.items()}
    for metric in ("cd", "emd"):
        def take(x, seed, metric=metric):
            return x if metric == "cd" else subsample(x, EMD_POINTS, seed)

        nr = normalise_sets(take(refs, 1), take(refs, 1), stats)[1]
        rr = pairwise_distances(nr, None, metric, workers=workers)
        for method, clouds in sets.items():
            ns = normalise_sets(take(clouds, 0), nr, stats)[0]
            d = SetDistances(metric, pairwise_distances(ns, None, metric, workers=workers), rr,
                             pairwise_distances(ns, nr, metric, workers=workers))
            out[method].update(scores_from_distances(d))
            if metric == "cd" and n_boot:
                out[method]["1-NNA-CD low"], out[method]["1-NNA-CD high"] = \
                    bootstrap_ci(d, n_boot=n_boot)["1-NNA-CD"]
    return {m: {k: 100 * v if k in PERCENT else v for k, v in r.items()} for m, r in out.items()}


def shape_part(nets: dict, n: int, record: Callable[[str, str, dict], None], n_boot: int) -> None:
    gens = {DIT: ShapeGenerator(nets["shape"]), POINTNET: ShapeGenerator(nets["shape-baseline"])}
    for name in CLASSES:
        refs = cached_dataset(name, "test", n)
        sets = {method: g.generate(name, n, seed=0) for method, g in gens.items()}
        sets[REAL] = cached_dataset(name, "val", n)
        for norm, label in NORMALISATIONS.items():
            for method, m in score_sets(sets, refs, norm, n_boot).items():
                record(f"shapes, {name}, {label} normalisation ({n} vs {n} test shapes)", method, m)


def _draw(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return points[rng.choice(len(points), n, replace=len(points) < n)]


def lidar_part(nets: dict, quick: bool, record: Callable[[str, str, dict], None]) -> None:
    gen = LidarGenerator(nets["lidar"])
    spec = gen.spec
    n_gen, n_cond = (8, 4) if quick else (32, 16)
    depth, inten = cached_scans("test", 64)
    refs = [from_range_image(d, spec=spec).points for d in depth[:n_gen]]
    sets = {RANGE_DIT: [s.points.points for s in gen.generate(n_gen, seed=0)],
            REAL.replace("shapes (validation split)", "scans (held-out)"):
                [from_range_image(d, spec=spec).points for d in depth[32:32 + n_gen]]}
    sets[POINTNET] = list(_unconditional(load_model(nets["lidar-baseline"]), n_gen))
    task = f"LiDAR generation, {n_gen} vs {n_gen} urban test scans, {LIDAR_POINTS} points a scan"
    r_small = [_draw(r, LIDAR_POINTS, i) for i, r in enumerate(refs)]
    for method, clouds in sets.items():
        small = [_draw(c, LIDAR_POINTS, 100 + i) for i, c in enumerate(clouds)]
        record(task, method, {"BEV-MMD": bev_mmd(small, r_small), "BEV-JSD": bev_jsd(small, r_small)})
    record(f"LiDAR generation, {n_gen} vs {n_gen} urban test scans, whole scans", RANGE_DIT,
           {"BEV-MMD": bev_mmd(sets[RANGE_DIT], refs), "BEV-JSD": bev_jsd(sets[RANGE_DIT], refs)})
    for style in ("urban", "suburban"):
        d_all, i_all = cached_scans("test", 64, style)
        cd = {"complete": {}, "densify": {}}
        for j in range(n_cond):
            d, i = d_all[j], i_all[j]
            truth = from_range_image(d, i, spec)
            start = 45.0 * j
            cols = sector_columns(spec.width, start, start + 90)
            want = from_range_image(np.where(cols, d, 0), spec=spec).points
            got = {RANGE_DIT: gen.complete(truth, (start, start + 90), seed=j).generated.points,
                   "nearest-neighbour filling": from_range_image(np.where(cols, nn_fill_columns(d, ~cols), 0),
                                                                 spec=spec).points}
            for k, v in got.items():
                cd["complete"].setdefault(k, []).append(chamfer_distance(v, want))
            rows = (np.arange(spec.height) % 4 != 0)[:, None]
            want = from_range_image(np.where(rows, d, 0), spec=spec).points
            got = {RANGE_DIT: gen.densify(truth.select(truth.ring % 4 == 0), seed=j).generated.points,
                   "nearest-beam filling": from_range_image(np.where(rows, fill_rows(d, 4, False), 0),
                                                            spec=spec).points,
                   "linear interpolation between beams": from_range_image(np.where(rows, fill_rows(d, 4, True), 0),
                                                                          spec=spec).points}
            for k, v in got.items():
                cd["densify"].setdefault(k, []).append(chamfer_distance(v, want))
        names = {"complete": f"LiDAR completion of a 90 deg sector, {n_cond} {style} test scans",
                 "densify": f"LiDAR densification 16 -> 64 beams, {n_cond} {style} test scans"}
        for part, by_method in cd.items():
            for method, values in by_method.items():
                record(names[part] + (" (out of distribution)" if style == "suburban" else ""), method,
                       {"CD": float(np.mean(values))})


def _unconditional(model: torch.nn.Module, n: int) -> np.ndarray:
    """n clouds (metres) of the LiDAR point baseline (no classes), seeded as the pipeline seeds shapes."""
    from ditlab.core.diffusion import sample as core_sample
    from ditlab.vision3d.pipeline import PATH, sample_noise

    x_t = torch.stack([sample_noise((LIDAR_POINTS, 3), 0, j) for j in range(n)])
    x0 = core_sample(model, PATH, tuple(x_t.shape), steps=int(model.config.sample_steps), x_T=x_t)
    return x0.numpy() / model.config.data_scale


def speed_part(nets: dict, record: Callable[[str, str, dict], None]) -> None:
    for method, weights in ((DIT, nets["shape"]), (POINTNET, nets["shape-baseline"])):
        gen = ShapeGenerator(weights)
        gen.generate("chair", 2)  # load, calibrate: not timed
        t0 = time.perf_counter()
        gen.generate("chair", 100, seed=1)
        sec = time.perf_counter() - t0
        steps = gen.model.config.sample_steps
        record("speed: 100 chairs of 2048 points, default steps and precision", f"{method}, {steps} steps",
               {"seconds": sec, "shapes_per_s": 100 / sec})


def add_goals(report: Report, results: dict) -> None:
    for name in CLASSES:
        for label in NORMALISATIONS.values():
            task = next((t for t, _ in results if t.startswith(f"shapes, {name}, {label}")), None)
            if task is None:
                continue
            dit, base = results[(task, DIT)], results[(task, POINTNET)]
            report.goal(f"{name}, {label}: 1-NNA-CD of PointDiT (%)", 58.0, dit["1-NNA-CD"], "lower")
            report.goal(f"{name}, {label}: COV-CD of PointDiT (%)", 45.0, dit["COV-CD"])
            # better = strictly lower; with 2 x 100 clouds 1-NNA moves in steps of 0.5 points, so a tie is 0
            report.goal(f"{name}, {label}: 1-NNA-CD PointNet - PointDiT (points of %; better: > 0)", 0.5,
                        base["1-NNA-CD"] - dit["1-NNA-CD"])
    gen = next((t for t, _ in results if t.startswith("LiDAR generation") and t.endswith("points a scan")), None)
    if gen is not None:
        for metric in ("BEV-JSD", "BEV-MMD"):
            # lower is better for both; a ratio of continuous measurements does not tie at 1
            report.goal(f"LiDAR generation: {metric} RangeDiT / PointNet (better: < 1)", 1.0,
                        results[(gen, RANGE_DIT)][metric] / results[(gen, POINTNET)][metric], "lower")
    for task in [t for t, m in results if t.startswith("LiDAR completion") and m == RANGE_DIT]:
        where = "out of distribution" if task.endswith("(out of distribution)") else "in distribution"
        report.goal(f"LiDAR completion ({where}): CD RangeDiT / nearest-neighbour filling (better: < 1)", 1.0,
                    results[(task, RANGE_DIT)]["CD"] / results[(task, "nearest-neighbour filling")]["CD"], "lower")
    speed = [m for (t, k), m in results.items() if t.startswith("speed") and k.startswith(DIT)]
    if speed:
        report.goal("100 shapes of 2048 points (s)", 30.0, speed[0]["seconds"], "lower")


def run_benchmark(quick: bool = False, json_path: str | Path | None = None, threads: int = 0,
                  echo: Callable[[str], object] = print, only: str | None = None, nets: dict | None = None) -> dict:
    """Run every part (or `only` some of `PARTS`, comma-separated), print a line per result, then the tables and
    goals; write the JSON when asked; return it. `nets` replaces the packaged networks by weights folders (tests)."""
    parts = select_parts(only, PARTS)
    if threads:
        torch.set_num_threads(threads)
    nets = {**WEIGHTS, **(nets or {})}
    report = Report("Vision3D benchmark: shape and LiDAR generation on held-out data")
    record = Recorder(report, METRICS, echo)

    if "shapes" in parts:
        shape_part(nets, 16 if quick else 100, record, n_boot=200 if quick else 1000)
    if "lidar" in parts:
        lidar_part(nets, quick, record)
    if "speed" in parts:
        speed_part(nets, record)
    add_goals(report, record.results)
    report.notes.append(__doc__.split("\n\n")[1].replace("\n", " "))
    return report.publish(json_path, echo)
