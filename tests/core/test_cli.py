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
