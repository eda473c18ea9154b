"""`ditlab imaging`: upscale, restore, batch from the command line; bad inputs exit 2 and write nothing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ditlab.imaging.io import from_array, read_image, write_image

DITLAB = [sys.executable, "-c", "import torch; torch.set_num_threads(1); from ditlab.core.cli import main; main()"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*DITLAB, "imaging", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    write_image(folder / "a.png", from_array((rng.random((20, 24, 3)) * 255).astype(np.uint8)))
    write_image(folder / "b16.png", from_array((rng.random((16, 12, 4)) * 65535).astype(np.uint16)))
    write_image(folder / "c.jpg", from_array((rng.random((12, 12)) * 255).astype(np.uint8)))
    (folder / "broken.png").write_text("not an image")
    return folder


def test_upscale_one_file(tmp_path, images, tiny_nets):
    out, js = tmp_path / "a_x4.png", tmp_path / "m.json"
    r = run("upscale", images / "a.png", "--out", out, "--weights", tiny_nets["sr"], "--json", js,
            "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    assert read_image(out).pixels.shape == (80, 96, 3)
    assert json.loads(js.read_text())["output"] == "96x80"
    assert "precision fp32" in r.stderr


def test_upscale_x2_keeps_16_bit_and_alpha(tmp_path, images, tiny_nets):
    r = run("upscale", images / "b16.png", "--out", tmp_path, "--scale", 2, "--weights", tiny_nets["sr"])
    assert r.returncode == 0, r.stderr
    img = read_image(tmp_path / "b16_x2.png")
    assert img.bit_depth == 16 and img.alpha is not None and img.pixels.shape == (32, 24, 3)


def test_restore_and_several_inputs_with_a_bad_one(tmp_path, images, tiny_nets):
    r = run("restore", images / "a.png", images / "broken.png", images / "c.jpg", "--out", tmp_path,
            "--task", "jpeg", "--weights", tiny_nets["restore"])
    assert r.returncode == 1, r.stderr
    assert (tmp_path / "a_jpeg.png").is_file() and (tmp_path / "c_jpeg.png").is_file()
    assert not (tmp_path / "broken_jpeg.png").exists()
    assert "FAILED" in r.stdout and "broken.png" in r.stdout
    assert read_image(tmp_path / "c_jpeg.png").channels == 1


def test_batch_folder_records_the_bad_file_and_resumes(tmp_path, images, tiny_nets):
    out = tmp_path / "out"
    r = run("batch", images, out, "--task", "x4", "--weights", tiny_nets["sr"])
    assert r.returncode == 1
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    status = {x["id"]: x["status"] for x in lines}
    assert status["broken.png"] != "ok" and status["a.png"] == "ok" and status["c.jpg"] == "ok"
    assert sorted(p.name for p in out.glob("*.png")) == ["a_x4.png", "b16_x4.png", "c_x4.png"]
    again = run("batch", images, out, "--task", "x4", "--weights", tiny_nets["sr"])
    assert "3 already done" in again.stdout


@pytest.mark.parametrize("args, message", [
    (("upscale", "{img}", "--out", "{tmp}/o.png", "--scale", 3), "--scale must be one of"),
    (("upscale", "{img}", "--out", "{tmp}/o.gif"), "--out must be an image file"),
    (("upscale", "{broken}", "--out", "{tmp}/o.png"), "broken.png"),
    (("upscale", "{tmp}/missing.png", "--out", "{tmp}/o.png"), "missing.png"),
    (("upscale", "{img}", "--out", "{tmp}/o.png", "--precision", "fp16"), "fp16"),
    (("restore", "{img}", "--out", "{tmp}/o.png", "--task", "inpaint"), "--task must be one of"),
    (("upscale", "{img}", "--out", "{tmp}/o.png", "--steps", 9), "steps must lie in"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, images, tiny_nets, args, message):
    fill = {"img": images / "a.png", "broken": images / "broken.png", "tmp": tmp_path}
    r = run(*[a.format(**fill) if isinstance(a, str) else a for a in args], "--weights",
            tiny_nets["restore" if args[0] == "restore" else "sr"])
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error")].__len__() <= 1
    assert not (tmp_path / "o.png").exists() and not list(tmp_path.glob(".o.png*"))


def test_empty_and_truncated_files(tmp_path, images, tiny_nets):
    (tmp_path / "empty.png").write_bytes(b"")
    data = (images / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("empty.png", "cut.png"):
        r = run("upscale", tmp_path / name, "--out", tmp_path / "o.png", "--weights", tiny_nets["sr"])
        assert r.returncode == 2 and name in r.stderr
        assert not (tmp_path / "o.png").exists()
