"""The core page alone (the demo DiT): `python apps/core.py` serves it on 127.0.0.1:7860."""

from ditlab.core.app import PAGE
from ditlab.core.ui import launch, page_app


def build():
    return page_app(PAGE)


if __name__ == "__main__":
    launch(build())
