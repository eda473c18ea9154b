"""`dit_to_diffusers` and `ditlab core benchmark --accel` at a tiny size: parity, errors and the report schema."""

import json
import math

import pytest
import torch

from ditlab.core.accel.bench import runs, subjects
from ditlab.core.models import DiT
from ditlab.core.models.interop import dit_to_diffusers

TINY = subjects.AccelSize(steps=3, guidance=2.0, repeats=1, demo_batch=2, cache_batch=2, precision_batch=2, ras_batch=2,
                       ras_train_steps=1, ras_train_batch=1, compile=False, fora=(2,), delta_dit=(2,),
                       taylor=((2, 1),), fbc=(0.1,), ras=({"ratio": 0.5},))


def tiny_dit(seed: int = 0, **overrides) -> DiT:
    """A diffusers-expressible 2-block DiT over 1 x 8 x 8 images with every weight perturbed (non-zero output)."""
    torch.manual_seed(seed)
    kw = dict(token_kind="2d", in_channels=1, input_size=[8, 8], patch_size=2, hidden_size=32, depth=2, num_heads=2,
              num_classes=4, time_freq_shift=1.0, mlp_norm_eps=1e-5)
    model = DiT(**{**kw, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@torch.no_grad()
@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False, "mlp_norm_eps": None}])
def test_dit_to_diffusers_round_trip_keeps_the_outputs(one_thread, overrides):
    ours = tiny_dit(**overrides)
    theirs = dit_to_diffusers(ours)
    back = DiT.from_diffusers(theirs).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1.0, 500.0, 999.0]), torch.tensor([0, 3, 4])
    expected = ours(x, t, y)
    assert (theirs(x, timestep=t, class_labels=y).sample - expected).abs().max() <= 1e-5
    assert (back(x, t, y) - expected).abs().max() <= 1e-5
    assert back.cfg.qkv_bias == ours.cfg.qkv_bias


@pytest.mark.parametrize("field, value", [("pos_embed", "rope"), ("qk_norm", True), ("num_classes", 0),
                                          ("time_freq_shift", 0.0), ("mlp_ratio", 2.0), ("learn_sigma", True)])
def test_dit_to_diffusers_names_the_field_diffusers_cannot_express(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        dit_to_diffusers(tiny_dit(**{field: value}))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the auto rows' calibration lands here


def test_accel_benchmark_writes_the_report_schema(tmp_path, one_thread):
    tiny = subjects.Subjects(demo=tiny_dit(1), shapes32=tiny_dit(2), ras=tiny_dit(3), ras_note="tiny")
    out = tmp_path / "accel.json"
    printed = []
    runs.run(TINY, out, subjects=tiny, echo=printed.append)
    report = json.loads(out.read_text())

    assert {"machine", "date", "command", "rows", "goals"} <= set(report)
    assert report["rows"] and all(set(r) == {"task", "method", "metric", "value"} for r in report["rows"])
    assert all(math.isfinite(r["value"]) for r in report["rows"])
    assert report["goals"] and all({"name", "target", "value", "met"} <= set(g) for g in report["goals"])
    for g in report["goals"]:  # met follows the value; the GPU goal is not measured on the CPU
        assert g["met"] is (None if g["value"] is None else g["value"] >= g["target"])
    assert [g["met"] for g in report["goals"] if g["name"].startswith("G4")] == [None]
    methods = {r["method"] for r in report["rows"]}
    assert {"uncached", "diffusers uncached", "diffusers fp32 eager", "RegionAdaptive(ratio=0.5)"} <= methods
    assert any(m.startswith("diffusers FirstBlockCache") for m in methods)
    same = [r["value"] for r in report["rows"]
            if r["method"] == "diffusers uncached" and r["metric"] == "PSNR vs ditlab uncached (dB)"]
    assert same and same[0] > 60  # identical weights: the two engines agree to fp32 rounding
    assert "| method |" in printed[0] and out in list(tmp_path.iterdir())
    assert any(r["task"].startswith("precision and compile (cpu): shapes32,") for r in report["rows"])
    assert any(m.startswith("ditlab default (precision auto) = ") for m in methods)
    assert any(m.endswith("+ TaylorSeer(interval=3, order=1)") for m in methods)
    assert [g["name"] for g in report["goals"] if g["name"].startswith("G5")] and any(
        "auto path's calibration" in n for n in report.get("notes", []))


def test_precision_rows_use_the_precision_subject(one_thread):
    tiny = subjects.Subjects(demo=tiny_dit(1), shapes32=tiny_dit(2), ras=tiny_dit(3), ras_note="tiny",
                             precision=tiny_dit(4), precision_note="tiny-S")
    report = runs.run(TINY, subjects=tiny, echo=lambda _: None)
    tasks = {r["task"] for r in report["rows"] if r["task"].startswith("precision")}
    assert tasks == {"precision and compile (cpu): tiny-S, 3 Euler steps, batch 2; baseline diffusers fp32 eager"}


def test_only_one_task_runs_that_task(one_thread):
    tiny = subjects.Subjects(demo=tiny_dit(1), shapes32=tiny_dit(2), ras=tiny_dit(3), ras_note="tiny")
    report = runs.run(TINY, subjects=tiny, echo=lambda _: None, only="precision")
    assert {r["task"].split(":")[0] for r in report["rows"]} == {"precision and compile (cpu)"}
    assert {g["name"][:2] for g in report["goals"]} == {"G3", "G4", "G5"}
    with pytest.raises(Exception, match="--only must be one of"):
        runs.run(TINY, subjects=tiny, echo=lambda _: None, only="speed")


def test_kernel_rows_land_in_the_report(one_thread):
    from ditlab.core.bench import Report
    from ditlab.core.kernels import bench as kernel_bench

    rows = kernel_bench.kernel_benchmark(device="cpu", batch=1, tokens=8, dim=32, heads=2, repeats=1)
    report = Report("kernels")
    kernel_bench.add_rows(report, rows, task="kernels (cpu)")
    assert len(report.rows) == 3 * len(rows)
    by = {(r["method"], r["metric"]): r["value"] for r in report.rows}
    assert by[("copy: torch copy_", "fraction of copy bandwidth")] == 1.0
    assert by[("layernorm_modulate: torch eager", "GB/s")] > 0
