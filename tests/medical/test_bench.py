"""`ditlab medical benchmark` on core's harness: the goals it derives from the results, and one scored method."""

import numpy as np
import pytest

from ditlab.core.bench import Report
from ditlab.medical import Acquisition
from ditlab.medical.bench import GOAL_METHOD, GOAL_SETTING, add_goals, score, settings_grid


def results(dit_psnr: float, nfe: float) -> dict:
    ood = "OOD CT 8 views"
    return {(GOAL_SETTING, "fbp"): {"psnr": 20.0}, (GOAL_SETTING, "tv"): {"psnr": 25.0},
            (GOAL_SETTING, GOAL_METHOD): {"psnr": dit_psnr, "nfe": nfe, "seconds": 200.0, "peak_mb": 5000.0},
            (ood, "tv"): {"psnr": 22.0}, (ood, "dds"): {"psnr": 21.0}}


@pytest.mark.parametrize("quick", [True, False])
def test_goals_follow_their_direction(quick):
    report = Report("medical")
    add_goals(report, results(dit_psnr=29.0, nfe=40), "OOD CT 8 views", quick)
    met = {g["name"]: g["met"] for g in report.goals}
    expected = {"8 views: DiT >= tuned TV + 3 dB": True, "8 views: DiT >= FBP + 10 dB": False,
                "OOD 8 views: DiT >= TV - 0.5 dB": False, "NFE <= 50": True}
    if not quick:
        expected |= {"128x128x64 in <= 300 s": True, "peak memory <= 4096 MB": False}
    assert met == expected
    assert {g["name"]: g["target"] for g in report.goals}["8 views: DiT >= tuned TV + 3 dB"] == 28.0


def test_the_goal_setting_comes_first_with_the_dit_method():
    for quick in (True, False):
        label, acq, methods, slices = settings_grid(quick)[0]
        assert (label, slices, acq.task) == (GOAL_SETTING, 0, "sparse-view") and GOAL_METHOD in methods


def test_score_returns_the_metrics_the_rows_use():
    vol = np.zeros((16, 16, 2), dtype=np.float32) - 1000
    vol[4:12, 4:12] = 40.0
    m = score(vol, Acquisition("sparse-view", 8), "fbp")
    assert {"psnr", "psnr_axial", "residual", "seconds", "nfe"} <= set(m) and np.isfinite(m["psnr"])
