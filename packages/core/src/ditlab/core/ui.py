"""Shared Gradio pieces for every ditlab app: theme, error display, progress, launch defaults."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network here; never phone home

import gradio as gr  # noqa: E402

HOST, PORT = "127.0.0.1", 7860
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")


def friendly_errors(fn: Callable) -> Callable:
    """Show bad-input errors in the app as a message naming what was wrong, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise gr.Error(str(e).strip("'\"")) from e

    return wrapper


def progress_callback(progress: gr.Progress, desc: str = "sampling") -> Callable[[int, int], None]:
    """Adapt a Gradio progress bar to the samplers' `progress(i, total)` argument."""
    return lambda i, total: progress((i + 1) / total, desc=f"{desc} {i + 1}/{total}")


def load_app_module(path: str | Path, name: str):
    """Import an app file (apps/<vertical>.py) by path, so the suite can mount its page."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def launch(demo: gr.Blocks, port: int = PORT) -> None:
    demo.queue(default_concurrency_limit=1).launch(server_name=HOST, server_port=port, show_error=True,
                                                   theme=theme())
