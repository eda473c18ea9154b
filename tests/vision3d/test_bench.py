"""The goals `ditlab vision3d benchmark` derives from its results (hand-made results; no network runs)."""

import pytest

from ditlab.core.bench import Report
from ditlab.vision3d.bench import DIT, POINTNET, RANGE_DIT, add_goals

GEN = "LiDAR generation, 32 vs 32 urban test scans, 4096 points a scan"
URBAN = "LiDAR completion of a 90 deg sector, 16 urban test scans"
OOD = "LiDAR completion of a 90 deg sector, 16 suburban test scans (out of distribution)"


def goals(results: dict) -> dict:
    report = Report("t", machine={}, date="d", command="c")
    add_goals(report, results)
    return {g["name"]: g for g in report.goals}


def test_lidar_goals_compare_with_the_baselines():
    results = {(GEN, RANGE_DIT): {"BEV-JSD": 0.1, "BEV-MMD": 4e-4}, (GEN, POINTNET): {"BEV-JSD": 0.2, "BEV-MMD": 2e-4},
               (URBAN, RANGE_DIT): {"CD": 0.5}, (URBAN, "nearest-neighbour filling"): {"CD": 1.0},
               (OOD, RANGE_DIT): {"CD": 3.0}, (OOD, "nearest-neighbour filling"): {"CD": 2.0}}
    g = goals(results)
    jsd = g["LiDAR generation: BEV-JSD RangeDiT / PointNet (better: < 1)"]
    mmd = g["LiDAR generation: BEV-MMD RangeDiT / PointNet (better: < 1)"]
    assert jsd["value"] == pytest.approx(0.5) and jsd["met"] is True
    assert mmd["value"] == pytest.approx(2.0) and mmd["met"] is False
    assert g["LiDAR completion (in distribution): CD RangeDiT / nearest-neighbour filling (better: < 1)"]["met"]
    assert not g["LiDAR completion (out of distribution): CD RangeDiT / nearest-neighbour filling (better: < 1)"]["met"]
    assert len(g) == 4  # no shape or speed results: no shape or speed goals


def test_shape_goals_need_a_strict_win_over_pointnet():
    task = "shapes, chair, per-shape unit box normalisation (100 vs 100 test shapes)"
    results = {(task, DIT): {"1-NNA-CD": 57.0, "COV-CD": 50.0}, (task, POINTNET): {"1-NNA-CD": 57.0}}
    g = goals(results)
    assert g["chair, per-shape unit box: 1-NNA-CD of PointDiT (%)"]["met"] is True
    assert g["chair, per-shape unit box: COV-CD of PointDiT (%)"]["met"] is True
    assert g["chair, per-shape unit box: 1-NNA-CD PointNet - PointDiT (points of %; better: > 0)"]["met"] is False
