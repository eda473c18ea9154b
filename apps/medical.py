"""The medical page alone (CT and MRI reconstruction): `python apps/medical.py` serves it on 127.0.0.1:7860."""

from ditlab.core.ui import launch, page_app
from ditlab.medical.app import PAGE


def build():
    return page_app(PAGE)


if __name__ == "__main__":
    launch(build())
