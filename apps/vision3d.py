"""The vision3d page alone (shapes and LiDAR): `python apps/vision3d.py` serves it on 127.0.0.1:7860."""

from ditlab.core.ui import launch, page_app
from ditlab.vision3d.app import PAGE


def build():
    return page_app(PAGE)


if __name__ == "__main__":
    launch(build())
