"""Serve a Gradio app on a free local port and hand tests a gradio_client for it."""

import contextlib
import importlib.util
import socket
import sys
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parents[2] / "apps"


def load_app_module(path: Path, name: str):
    """Import an app script (apps/<name>.py) by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app_file: str, build: str = "build"):
    """Build `apps/<app_file>` with its `build()`, launch it, yield a client; close it afterwards."""
    from gradio_client import Client

    app = getattr(load_app_module(APPS / app_file, f"ditlab_{Path(app_file).stem}_under_test"), build)()
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


@pytest.fixture(scope="session")
def serve_app():
    """`with serve_app("medical.py") as client: ...`"""
    return serve
