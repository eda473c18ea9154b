"""The suite app serves its page and samples from the shipped demo model through its API."""


import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def client(serve_app):
    with serve_app("suite.py") as c:
        yield c


def test_page_samples_a_grid(client):
    path = client.predict(["disc", "cross"], 2, 3, 2.0, 0, api_name="/sample")
    img = np.asarray(Image.open(path))
    # 2 rows x 2 columns of 16x16 tiles with a 1-pixel frame, upscaled 4x
    assert img.shape[:2] == (2 * 18 * 4, 2 * 18 * 4)
    assert img.std() > 10


def test_page_reports_bad_input(client):
    with pytest.raises(Exception, match="choose at least one class"):
        client.predict([], 2, 3, 2.0, 0, api_name="/sample")
