"""`ditlab medical benchmark` on core's harness: the goals it derives from the results, and one scored method."""

import numpy as np
import pytest

from ditlab.core.bench import Report
from ditlab.medical import Acquisition
from ditlab.medical.bench import CACHE_TASK, GOAL_METHOD, GOAL_SETTING, add_goals, score, settings_grid


def results(dit_psnr: float, nfe: float) -> dict:
    ood = "OOD CT 8 views"
    return {(GOAL_SETTING, "fbp"): {"psnr": 20.0}, (GOAL_SETTING, "tv"): {"psnr": 25.0},
            (GOAL_SETTING, GOAL_METHOD): {"psnr": dit_psnr, "nfe": nfe, "seconds": 200.0, "peak_mb": 5000.0},
            (ood, "tv"): {"psnr": 22.0}, (ood, "dds"): {"psnr": 21.0},
            (CACHE_TASK, "dds"): {"speedup": 1.0, "psnr_loss": 0.0},
            (CACHE_TASK, "dds + taylorseer"): {"speedup": 1.6, "psnr_loss": 0.2},
            (CACHE_TASK, "dds + fora"): {"speedup": 2.4, "psnr_loss": 0.5}}  # faster, but loses too much


@pytest.mark.parametrize("quick", [True, False])
def test_goals_follow_their_direction(quick):
    report = Report("medical")
    add_goals(report, results(dit_psnr=29.0, nfe=40), "OOD CT 8 views", quick)
    met = {g["name"]: g["met"] for g in report.goals}
    expected = {"8 views: DiT >= tuned TV + 3 dB": True, "8 views: DiT >= FBP + 10 dB": False,
                "OOD 8 views: DiT >= TV - 0.5 dB": False, "NFE <= 50": True,
                "DDS + the best named cache within 0.3 dB: >= 1.5x uncached": True}
    if not quick:
        expected |= {"128x128x64 in <= 300 s": True, "peak memory <= 4096 MB": False}
    assert met == expected
    values = {g["name"]: g["value"] for g in report.goals}
    assert {g["name"]: g["target"] for g in report.goals}["8 views: DiT >= tuned TV + 3 dB"] == 28.0
    assert values["DDS + the best named cache within 0.3 dB: >= 1.5x uncached"] == 1.6


def test_the_goal_setting_comes_first_with_the_dit_method():
    for quick in (True, False):
        label, acq, methods, slices = settings_grid(quick)[0]
        assert (label, slices, acq.task) == (GOAL_SETTING, 0, "sparse-view") and GOAL_METHOD in methods


def test_score_returns_the_metrics_the_rows_use():
    vol = np.zeros((16, 16, 2), dtype=np.float32) - 1000
    vol[4:12, 4:12] = 40.0
    m = score(vol, Acquisition("sparse-view", 8), "fbp")
    assert {"psnr", "psnr_axial", "residual", "seconds", "nfe"} <= set(m) and np.isfinite(m["psnr"])


def test_cache_runs_report_speedup_loss_and_the_evaluations_spent():
    from ditlab.medical.bench import cache_runs
    from ditlab.medical.data import make_phantom

    vol = make_phantom((32, 32, 8), seed=5)[:, :, 3:5]
    out = cache_runs(vol, Acquisition("sparse-view", 8), ("taylorseer",))
    assert list(out) == ["dds", "dds + taylorseer"]
    assert out["dds"]["speedup"] == 1.0 and out["dds"]["psnr_loss"] == 0.0 and out["dds"]["nfe_equivalent"] == 30
    cached = out["dds + taylorseer"]
    assert cached["nfe_equivalent"] < 15 and abs(cached["psnr_loss"]) < 1.0
