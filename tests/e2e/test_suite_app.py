"""The suite app serves its page and samples from the shipped demo model through its API."""

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditlab.core.ui import load_app_module

APPS = Path(__file__).resolve().parents[2] / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    suite = load_app_module(APPS / "suite.py", "ditlab_suite_under_test").build()
    port = free_port()
    suite.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        suite.close()


def test_page_samples_a_grid(client):
    path = client.predict(["disc", "cross"], 2, 3, 2.0, 0, api_name="/sample")
    img = np.asarray(Image.open(path))
    # 2 rows x 2 columns of 16x16 tiles with a 1-pixel frame, upscaled 4x
    assert img.shape[:2] == (2 * 18 * 4, 2 * 18 * 4)
    assert img.std() > 10


def test_page_reports_bad_input(client):
    with pytest.raises(Exception, match="choose at least one class"):
        client.predict([], 2, 3, 2.0, 0, api_name="/sample")
