import json

import pytest

from ditlab.core.errors import UsageError
from ditlab.imaging.bench import run_benchmark


def test_quick_sr_part_has_every_method_and_the_goals(tmp_path, tiny_nets):
    out = run_benchmark(quick=True, json_path=tmp_path / "b.json", only="sr-bicubic", nets=tiny_nets,
                        echo=lambda s: None)
    methods = {(r["task"], r["method"]) for r in out["rows"]}
    for task in ("x4 bicubic, photos", "x4 bicubic, procedural"):
        for method in ("bicubic", "lanczos", "EDSR CNN (same data, same CPU time)", "SRDiT, 4 steps", "SRDiT, 1 step"):
            assert (task, method) in methods
    names = [g["name"] for g in out["goals"]]
    assert any("SRDiT Y-PSNR - bicubic" in n for n in names) and any("same-budget CNN" in n for n in names)
    assert any(n.startswith("colour") for n in names)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert {"machine", "date", "command", "rows", "goals"} <= set(saved)
    psnr = {r["method"]: r["value"] for r in out["rows"] if r["metric"] == "psnr_y" and r["task"].endswith("photos")}
    assert 20 < psnr["bicubic"] < 40


def test_tiling_part(tiny_nets):
    out = run_benchmark(only="tiling", nets=tiny_nets, echo=lambda s: None)
    (goal,) = [g for g in out["goals"] if g["name"].startswith("tiling")]
    assert goal["value"] is not None


def test_unknown_part_is_refused():
    with pytest.raises(UsageError, match="--only must be one or more of"):
        run_benchmark(only="everything")
