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
Speed: 100 chairs of 2048 points at the default steps and precision, after the network is loaded and prepared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ditlab.core.bench import Report
from ditlab.core.errors import UsageError
from ditlab.vision3d.data import CLASSES, cached_dataset
from ditlab.vision3d.metrics import evaluate_sets
from ditlab.vision3d.pipeline import WEIGHTS, ShapeGenerator

PARTS = ("shapes", "speed")
NORMALISATIONS = {"global": "PointFlow global", "unit_box": "per-shape unit box"}
EMD_POINTS = 256
DIT = "PointDiT (DiT-3D)"
POINTNET = "PointNet diffusion (same params, same CPU time)"
REAL = "real shapes (validation split)"
METRICS = ("1-NNA-CD", "COV-CD", "MMD-CD", "1-NNA-EMD", "COV-EMD", "MMD-EMD", "JSD", "1-NNA-CD low", "1-NNA-CD high",
           "seconds", "shapes_per_s")
PERCENT = ("1-NNA-CD", "COV-CD", "1-NNA-EMD", "COV-EMD", "1-NNA-CD low", "1-NNA-CD high")


def subsample(clouds: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The same seeded `n` of each cloud's points (clouds (B, N, 3)), for exact EMD at an affordable size."""
    rng = np.random.default_rng(seed)
    return np.stack([c[rng.choice(len(c), n, replace=False)] for c in clouds])


def score(samples: np.ndarray, refs: np.ndarray, normalisation: str, n_boot: int) -> dict[str, float]:
    """The shape metrics of one set against the references, 1-NNA and COV in %."""
    cd = evaluate_sets(samples, refs, normalisation=normalisation, metrics=("cd",), n_boot=n_boot)
    emd = evaluate_sets(subsample(samples, EMD_POINTS), subsample(refs, EMD_POINTS, 1), normalisation=normalisation,
                        metrics=("emd",))
    out = {k: float(v) for k, v in {**cd, **emd}.items() if k in METRICS}
    out["JSD"] = float(cd["JSD"])
    if "ci" in cd:
        out["1-NNA-CD low"], out["1-NNA-CD high"] = cd["ci"]["1-NNA-CD"]
    return {k: 100 * v if k in PERCENT else v for k, v in out.items()}


def shape_part(nets: dict, n: int, record: Callable[[str, str, dict], None], n_boot: int) -> None:
    gens = {DIT: ShapeGenerator(nets["shape"]), POINTNET: ShapeGenerator(nets["shape-baseline"])}
    for name in CLASSES:
        refs = cached_dataset(name, "test", n)
        sets = {method: g.generate(name, n, seed=0) for method, g in gens.items()}
        sets[REAL] = cached_dataset(name, "val", n)
        for norm, label in NORMALISATIONS.items():
            for method, clouds in sets.items():
                record(f"shapes, {name}, {label} normalisation ({n} vs {n} test shapes)", method,
                       score(clouds, refs, norm, n_boot))


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
            report.goal(f"{name}, {label}: 1-NNA-CD PointNet - PointDiT (points of %)", 0.0,
                        base["1-NNA-CD"] - dit["1-NNA-CD"])
    speed = [m for (t, k), m in results.items() if t.startswith("speed") and k.startswith(DIT)]
    if speed:
        report.goal("100 shapes of 2048 points (s)", 30.0, speed[0]["seconds"], "lower")


def run_benchmark(quick: bool = False, json_path: str | Path | None = None, threads: int = 0,
                  echo: Callable[[str], object] = print, only: str | None = None, nets: dict | None = None) -> dict:
    """Run every part (or `only` some of `PARTS`, comma-separated), print a line per result, then the tables and
    goals; write the JSON when asked; return it. `nets` replaces the packaged networks by weights folders (tests)."""
    parts = PARTS if only is None else tuple(p.strip() for p in only.split(","))
    if not parts or any(p not in PARTS for p in parts):
        raise UsageError(f"--only must be one or more of {PARTS} (comma-separated), got {only!r}")
    if threads:
        torch.set_num_threads(threads)
    nets = {**WEIGHTS, **(nets or {})}
    report = Report("Vision3D benchmark: shape and LiDAR generation on held-out data")
    results: dict[tuple[str, str], dict] = {}

    def record(task: str, method: str, m: dict) -> None:
        results[(task, method)] = m
        for metric in METRICS:
            if metric in m:
                report.row(task, method, metric, m[metric])
        echo(f"{task} / {method}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))

    if "shapes" in parts:
        shape_part(nets, 16 if quick else 100, record, n_boot=200 if quick else 1000)
    if "speed" in parts:
        speed_part(nets, record)
    add_goals(report, results)
    report.notes.append(__doc__.split("\n\n")[1].replace("\n", " "))
    return report.publish(json_path, echo)
