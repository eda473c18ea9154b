"""The benchmark harness: goals and their direction, markdown, the JSON schema, the header, the atomic writer,
the interleaved timer and the child-process probe; and the project's PSNR."""

import json
import math
import shlex

import numpy as np
import psutil
import pytest
import torch

from ditlab.core.bench.harness import Report, command, machine, machine_line, run_in_child, time_interleaved
from ditlab.core.errors import InputError
from ditlab.core.metrics import PSNR_CAP, psnr


def tiny_report() -> Report:
    report = Report("tiny", command="ditlab core benchmark --quick")
    report.row("task A", "ours", "wall s", 1.5)
    report.row("task A", "theirs", "wall s", 3.0)
    report.row("task A", "theirs", "PSNR (dB)", 40.123456789)
    report.row("task B", "ours", "max abs diff", 3.2e-7)
    return report


@pytest.mark.parametrize("direction, value, met", [("higher", 2.0, True), ("higher", 0.5, False),
                                                   ("lower", 0.5, True), ("lower", 2.0, False),
                                                   ("higher", 1.0, True), ("lower", None, None)])
def test_goal_direction_decides_met(direction, value, met):
    report = Report("goals")
    assert report.goal("g", 1.0, value, direction) is met
    assert report.goals == [{"name": "g", "target": 1.0, "value": value, "met": met, "direction": direction}]


def test_goal_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match=r"direction must be one of \('higher', 'lower'\), got 'up'"):
        Report("goals").goal("g", 1.0, 2.0, "up")


def test_markdown_pivots_rows_per_task_and_lists_goals():
    report = tiny_report()
    report.goal("speed", 2.0, 2.5)
    report.goal("memory", 100, None, "lower")
    report.notes.append("a note")
    text = report.markdown()

    assert "**task A**" in text and "**task B**" in text
    assert "| method | wall s | PSNR (dB) |" in text
    assert "| ours | 1.5 |  |" in text  # a metric a method lacks is an empty cell
    assert "| theirs | 3 | 40.123 |" in text
    assert "| ours | 3.2e-07 |" in text  # small values keep their digits
    assert "a note" in text
    assert "| speed | >= 2 | 2.5 | yes |" in text
    assert "| memory | <= 100 | not measured | n/a |" in text
    assert "`ditlab core benchmark --quick`" in text and machine_line(report.machine) in text


def test_markdown_columns_keep_every_methods_order():
    report = Report("order")
    for metric in ("wall", "nfe", "vs ref"):  # the baseline has no "vs baseline"
        report.row("t", "baseline", metric, 1.0)
    for metric in ("wall", "nfe", "vs baseline", "vs ref", "extra"):
        report.row("t", "method", metric, 2.0)
    assert "| method | wall | nfe | vs baseline | vs ref | extra |" in report.markdown()


def test_json_has_the_schema_and_round_trips(tmp_path):
    report = tiny_report()
    report.goal("speed", 2.0, 1.0)
    report.extra["peak_rss_mb"] = 12.5
    out = report.write(tmp_path / "sub" / "bench.json")
    data = json.loads(out.read_text())

    assert {"machine", "date", "command", "rows", "goals"} <= set(data)
    assert data["peak_rss_mb"] == 12.5
    assert all(set(r) == {"task", "method", "metric", "value"} for r in data["rows"])
    assert {"name", "target", "value", "met"} <= set(data["goals"][0]) and data["goals"][0]["met"] is False
    assert [r["value"] for r in data["rows"]] == [1.5, 3.0, 40.1235, 3.2e-7]  # six significant digits
    assert data["date"].endswith("+00:00") and "T" in data["date"]  # UTC date and time
    assert list(out.parent.iterdir()) == [out]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("old")
    report = tiny_report()
    report.extra["bad"] = object()  # not JSON-serialisable: the write fails midway
    with pytest.raises(TypeError):
        report.write(out)
    assert out.read_text() == "old" and list(tmp_path.iterdir()) == [out]


def test_command_is_the_shell_quoted_argv_named_ditlab(monkeypatch):
    argv = ["/venv/bin/ditlab", "medical", "benchmark", "--json", "my results.json"]
    assert command(argv) == "ditlab medical benchmark --json 'my results.json'"
    monkeypatch.setattr("sys.argv", argv)
    assert shlex.split(Report("r").command) == ["ditlab", *argv[1:]]


def test_machine_names_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: sse2 avx512_vnni avx512_bf16\n")
    info = machine(cpuinfo=cpuinfo)
    assert info["cpu"] == "Test CPU" and info["device"] == "cpu" and info["torch_threads"] == torch.get_num_threads()
    assert info["flags"] == {"AMX": False, "VNNI": True, "avx512_bf16": True}
    line = machine_line(info)
    assert "Test CPU" in line and "AMX no, VNNI yes, avx512_bf16 yes" in line and f"torch {torch.__version__}" in line


def test_machine_without_cpuinfo_says_the_flags_are_unknown(tmp_path):
    info = machine(cpuinfo=tmp_path / "missing")
    assert info["cpu"] and info["cores"] >= 1 and info["flags"] == {"AMX": None, "VNNI": None, "avx512_bf16": None}
    assert "AMX unknown" in machine_line(info)


def test_time_interleaved_alternates_and_returns_medians():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    seconds = time_interleaved(fns, warmup=1, repeats=3)
    assert order == ["a", "b"] * 4
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


def test_run_in_child_returns_the_result_seconds_and_peak():
    child = run_in_child(math.comb, (40, 20))
    assert child.result == math.comb(40, 20)
    assert child.seconds >= 0 and child.peak_mb > 0


TOUCH_300_MIB = "data = bytearray(300 * 2**20); data[::4096] = b'x' * len(data[::4096]); result = len(data)"


def test_run_in_child_measures_the_childs_own_peak():
    held = bytearray(300 * 2**20)  # this process now holds 300 MiB more than a child running "result = 1"
    held[::4096] = b"x" * len(held[::4096])
    parent_mb = psutil.Process().memory_info().rss / 2**20
    small = run_in_child("result = 1")
    big = run_in_child(TOUCH_300_MIB)
    assert big.result == 300 * 2**20
    assert big.peak_mb - small.peak_mb > 250
    assert small.peak_mb < parent_mb - 250  # the parent's peak does not carry over into the child's


def test_run_in_child_reports_the_childs_error():
    with pytest.raises(ChildProcessError, match="ZeroDivisionError"):
        run_in_child("result = 1 / 0")


def test_psnr_torch_and_numpy_agree_and_cap_identical_inputs():
    x = torch.rand(2, 3, 8, 8)
    ref = x + 0.01 * torch.randn_like(x)
    expected = 10 * math.log10(1.0 / float(((x.double() - ref.double()) ** 2).mean()))
    assert psnr(x, ref, 1.0) == pytest.approx(expected, abs=1e-9)
    assert psnr(x.numpy(), ref.numpy(), 1.0) == pytest.approx(expected, abs=1e-9)
    assert psnr(x, x, 1.0) == PSNR_CAP
    assert math.isnan(psnr(np.array([np.nan, 0.0]), np.zeros(2), 1.0))


def test_psnr_names_bad_input():
    with pytest.raises(InputError, match=r"equal shapes, got \(2,\) and reference \(3,\)"):
        psnr(np.zeros(2), np.zeros(3), 1.0)
    with pytest.raises(InputError, match="positive data_range, got 0"):
        psnr(np.zeros(2), np.zeros(2), 0)


def test_select_parts_defaults_to_all_and_refuses_unknown_names():
    from ditlab.core.bench import select_parts
    from ditlab.core.errors import UsageError

    parts = ("shapes", "lidar", "speed")
    assert select_parts(None, parts) == parts
    assert select_parts(" speed,shapes ", parts) == ("speed", "shapes")
    for bad in ("speed,colour", "", ","):
        with pytest.raises(UsageError, match="--only must be one or more of"):
            select_parts(bad, parts)


def test_recorder_keeps_results_adds_only_its_metrics_and_echoes_a_line():
    from ditlab.core.bench import Recorder, Report

    lines = []
    report = Report("t", machine={}, date="d", command="c")
    record = Recorder(report, ("psnr", "seconds"), lines.append)
    record("task", "ours", {"psnr": 30.123456, "nfe": 8, "flag": True, "note": "x"})
    assert record.results == {("task", "ours"): {"psnr": 30.123456, "nfe": 8, "flag": True, "note": "x"}}
    assert [(r["metric"], r["value"]) for r in report.rows] == [("psnr", pytest.approx(30.123456, rel=1e-3))]
    assert lines == ["task / ours: psnr 30.12, nfe 8"]
    custom = Recorder(report, (), lines.append, line=lambda t, m, v: f"{t}|{m}|{v['psnr']:.1f}")
    custom("a", "b", {"psnr": 1.0})
    assert lines[-1] == "a|b|1.0" and len(report.rows) == 1
