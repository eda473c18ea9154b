"""The `ditlab` command: verticals plug in, bad input exits non-zero with a message."""

import os
import subprocess
import sys

import pytest

DITLAB = [sys.executable, "-c", "from ditlab.core.cli import main; main()"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*DITLAB, *args], capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.parametrize("vertical", ["core", "medical", "imaging", "vision3d", "audio", "molecules"])
def test_every_vertical_has_a_subcommand(vertical):
    r = run(vertical, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_bad_output_path_exits_non_zero(tmp_path):
    r = run("core", "sample", str(tmp_path / "grid.txt"))
    assert r.returncode == 2
    assert "expected a .png output path" in r.stderr
    assert not (tmp_path / "grid.txt").exists()


def test_unknown_command_exits_non_zero():
    assert run("core", "no-such-command").returncode != 0


def test_gpu_benchmark_without_gpu_says_why():
    r = run("core", "benchmark", "--accel", "--gpu", env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, on any machine
    assert r.returncode == 2
    assert "--gpu needs a CUDA GPU" in r.stderr
    assert run("core", "benchmark", "--gpu").returncode == 2  # --gpu without --accel: a usage error


def test_importing_ditlab_prints_nothing():
    """torchao's failed CUDA extension loads and torch's deprecation notes must not reach a user's terminal."""
    code = ("import ditlab.core, ditlab.medical, ditlab.core.accel, ditlab.core.kernels; "
            "from ditlab.core import DiT, FlowMatching, sample; from ditlab.core.accel import quantize; "
            "m = DiT(token_kind='2d', in_channels=1, input_size=[8, 8], patch_size=2, hidden_size=32, depth=1, "
            "num_heads=2); quantize(m, 'int8_dynamic')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""


def test_a_bug_is_an_internal_error_with_exit_1(tmp_path):
    """A KeyError raised by our own code is not bad input: exit 1, named as an internal error."""
    code = ("import ditlab.core.demo as d; d.sample_demo = lambda **k: {}['missing']; "
            "from ditlab.core.cli import main; main()")
    out = tmp_path / "grid.png"
    r = subprocess.run([sys.executable, "-c", code, "core", "sample", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "internal error: KeyError" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_run_training_trains_then_exports_then_packages_in_order(tmp_path, capsys):
    import json

    import torch

    from ditlab.core.cli import run_training

    calls, threads = [], torch.get_num_threads()
    try:
        report = run_training(lambda out, steps, **kw: calls.append(("train", out, steps, kw)) or {"steps": steps},
                              7, tmp_path / "run", threads=1, export=lambda out: calls.append(("export", out)) or "f",
                              package=lambda out: calls.append(("package", out)) or {"dir": "w"}, resume_file=None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert report == {"steps": 7}
    assert [c[0] for c in calls] == ["train", "export", "package"]
    assert calls[0][1:] == (tmp_path / "run", 7, {"resume_file": None})
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"steps": 7} and lines[1] == "exported f" and json.loads(lines[2]) == {"dir": "w"}
    calls.clear()
    run_training(lambda out, steps: calls.append("train") or {}, 1, tmp_path, threads=0)
    assert calls == ["train"]
