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
