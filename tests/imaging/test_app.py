"""The imaging page without a browser: it builds, its handler upscales and restores files and samples on tiny
networks, keeps 16-bit and alpha, and refuses bad uploads with a message, writing nothing."""

import importlib.util
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import pytest

from ditlab.core.errors import InputError
from ditlab.core.ui import page_app
from ditlab.imaging import app
from ditlab.imaging.io import from_array, read_image, write_image

APPS = Path(__file__).resolve().parents[2] / "apps"
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def page(tiny_nets, tmp_path, monkeypatch):
    """The page on the tiny networks, its request folders under `tmp_path / "out"` (to see what it writes)."""
    monkeypatch.setattr(app, "WEIGHTS", {"sr": tiny_nets["sr"], "restore": tiny_nets["restore"]})
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(out))
    return out


def image_file(tmp_path, name="photo.png", h=20, w=24, channels=3, bit_depth=8) -> Path:
    samples = RNG.integers(0, 2**bit_depth, (h, w, channels)).astype(np.uint8 if bit_depth == 8 else np.uint16)
    (tmp_path / "in").mkdir(exist_ok=True)
    return write_image(tmp_path / "in" / name, from_array(samples))


def run(path, job="upscale", scale=4, sample=None, task="denoise", degradation="real", colour="wavelet"):
    return app.run_job(str(path) if path else None, sample, job, scale, degradation, task, 1, colour)


def test_the_page_and_its_launcher_build():
    assert app.PAGE.route == "imaging" and app.PAGE.order > 10  # after medical in the suite
    blocks = page_app(app.PAGE)
    assert isinstance(blocks, gr.Blocks)
    assert "run" in {fn.api_name for fn in blocks.fns.values()}
    spec = importlib.util.spec_from_file_location("imaging_launcher", APPS / "imaging.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    assert isinstance(launcher.build(), gr.Blocks)


@pytest.mark.parametrize(("job", "scale", "tag"),
                         [("upscale", 4, "x4"), ("upscale", 2, "x2"), ("restore", 1, "denoise")])
def test_run_job_writes_the_result_and_an_equal_sized_slider_pair(tmp_path, job, scale, tag):
    (before, after), result, notes = run(image_file(tmp_path), job, scale)
    out = read_image(result)
    assert Path(result).name == f"photo_{tag}.png" and out.format == "PNG"
    assert (out.height, out.width, out.channels, out.bit_depth) == (20 * scale, 24 * scale, 3, 8)
    for p in (before, after):
        assert p.endswith(".png")
        with PIL.Image.open(p) as im:
            assert im.format == "PNG" and im.size == (24 * scale, 20 * scale)
    assert f"24 x 20 px 8-bit RGB -> {24 * scale} x {20 * scale} px 8-bit RGB" in notes
    assert "precision fp32" in notes and " s, 1 step," in notes


@pytest.mark.parametrize(("name", "channels"), [("rgba16.png", 4), ("grey16.tif", 1)])
def test_sixteen_bits_and_alpha_survive(tmp_path, name, channels):
    (before, _), result, notes = run(image_file(tmp_path, name, channels=channels, bit_depth=16), scale=2)
    out = read_image(result)
    assert result.endswith(".png") and out.bit_depth == 16 and out.pixels.shape == (40, 48, 3 if channels == 4 else 1)
    assert (out.alpha is not None) == (channels == 4)
    with PIL.Image.open(before) as im:
        assert im.mode == ("RGBA" if channels == 4 else "L")  # 8-bit preview, alpha kept
    assert "16-bit" in notes


def text_as_png(tmp_path):
    (tmp_path / "notes.png").write_text("not an image at all")
    return tmp_path / "notes.png"


def empty_png(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path / "empty.png"


def truncated_png(tmp_path):
    good = image_file(tmp_path, "whole.png", 64, 64).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    return tmp_path / "cut.png"


def too_large(tmp_path):
    return write_image(tmp_path / "big.png", np.zeros((1000, 1100), np.uint8))  # 1.1 MP > 1024 x 1024 for x4


def gif(tmp_path):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "anim.gif")
    return tmp_path / "anim.gif"


@pytest.mark.parametrize(("make", "message"), [
    (text_as_png, r"notes\.png: its contents are not a \.png file"),
    (empty_png, r"empty\.png: empty file \(0 bytes\)"),
    (truncated_png, r"cut\.png: the image data could not be read, the file may be truncated"),
    (too_large, r"big\.png: 1\.1 megapixels; the app upscales x4 images of at most 1024 x 1024 .* `ditlab imaging`"),
    (gif, r"anim\.gif: unsupported file type"),
])
def test_bad_uploads_are_refused_with_a_message_and_nothing_written(tmp_path, page, make, message):
    path = make(tmp_path)
    with pytest.raises(gr.Error, match=message) as e:
        run(path)
    assert isinstance(e.value.__cause__, InputError)
    assert str(path.parent) not in str(e.value)  # the server's upload folder is never shown
    assert list(page.iterdir()) == []


def test_the_size_cap_depends_on_the_scale():
    app._check_size(1100 * 1000, "big.png", 2)  # x2 and restoration take up to 2048 x 2048
    with pytest.raises(InputError, match="the app restores images of at most 2048 x 2048"):
        app._check_size(2049 * 2048, "big.png", 1)


def test_bad_settings_are_refused(tmp_path):
    path = image_file(tmp_path)
    with pytest.raises(gr.Error, match="steps must be from 1 to 4, got 5"):
        app.run_job(str(path), None, "upscale", 4, "real", "denoise", 5, "wavelet")
    with pytest.raises(gr.Error, match="scale must be one of"):
        run(path, scale=3)
    with pytest.raises(gr.Error, match="restoration task must be one of"):
        run(path, "restore", task="inpaint")
    with pytest.raises(gr.Error, match="unknown sample"):
        run(None, sample="lena")


def test_samples_are_small_and_restore_samples_come_degraded():
    for name in app.SAMPLES:
        img = app.sample_image(name)
        assert (img.height, img.width, img.channels, img.bit_depth) == (128, 128, 3, 8)
        assert img.source.endswith(".png") and img.pixels.std() > 0.02
    clean = app.sample_image("coffee: cup and spoon (photo)")
    noisy = app.sample_image("coffee: cup and spoon (photo)", "denoise")
    assert np.abs(noisy.pixels - clean.pixels).mean() > 5 / 255 and "degraded for denoise" in noisy.notes[0]


def test_the_sample_picker_runs_a_job():
    (before, after), result, notes = run(None, "restore", sample="coffee: cup and spoon (photo)", task="jpeg",
                                         colour="none")
    assert Path(result).name == "coffee_jpeg.png" and read_image(result).pixels.shape == (128, 128, 3)
    assert "sample degraded for jpeg" in notes


def test_the_network_is_loaded_once_for_any_steps():
    assert app._enhancer("sr", 1).model is app._enhancer("sr", 4).model
    assert app._enhancer("sr", 2).steps == 2
