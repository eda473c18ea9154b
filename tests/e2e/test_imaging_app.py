"""The imaging app upscales and restores an uploaded image through its API, serves lossless results, and reports
bad input (tiny networks stand in for the shipped ones)."""

import numpy as np
import pytest
from gradio_client import handle_file

from ditlab.imaging import app
from ditlab.imaging.io import from_array, read_image, write_image


@pytest.fixture(scope="module")
def client(serve_app, tiny_nets):
    saved = dict(app.WEIGHTS)
    app.WEIGHTS.update(sr=tiny_nets["sr"], restore=tiny_nets["restore"])
    try:
        with serve_app("imaging.py") as c:
            yield c
    finally:
        app.WEIGHTS.update(saved)


@pytest.fixture(scope="module")
def photo16(tmp_path_factory):
    path = tmp_path_factory.mktemp("up") / "photo.png"
    rng = np.random.default_rng(0)
    write_image(path, from_array((rng.random((20, 24, 4)) * 65535).astype(np.uint16)))
    return path


def run(client, upload, job="upscale", scale=4, task="denoise", steps=2):
    return client.predict(handle_file(str(upload)) if upload else None, next(iter(app.SAMPLES)), job, scale, "real",
                          task, steps, "wavelet" if job == "upscale" else "none", api_name="/run")


def test_upscales_an_upload_keeping_16_bit_and_alpha(client, photo16):
    slider, result, notes = run(client, photo16)
    out = read_image(result)
    assert out.pixels.shape == (80, 96, 3) and out.bit_depth == 16 and out.alpha is not None
    before, after = slider
    assert read_image(before).pixels.shape[:2] == read_image(after).pixels.shape[:2] == (80, 96)
    assert "96" in notes and "precision" in notes


def test_restores_a_sample(client):
    slider, result, notes = run(client, None, job="restore", task="jpeg")
    assert read_image(result).pixels.shape[:2] == (128, 128)


def test_reports_bad_input(client, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(Exception, match="broken.png"):
        run(client, bad)
