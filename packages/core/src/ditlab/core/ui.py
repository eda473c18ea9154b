"""Shared Gradio pieces for every ditlab app: theme, error display, progress, model cache, upload guard, output
folders per request, page discovery and launch defaults.

A vertical's page is a `Page` named in the entry-point group `ditlab.pages` of its package
(`medical = "ditlab.medical.app:PAGE"`); the suite app mounts every page it finds there, so a new vertical adds
its page without editing `apps/suite.py`.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network here; never phone home

import gradio as gr  # noqa: E402

from ditlab.core.errors import InputError, is_input_error  # noqa: E402
from ditlab.core.files import safe_stem, split_suffix  # noqa: E402

HOST, PORT = "127.0.0.1", 7860
PAGE_GROUP = "ditlab.pages"


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")


def friendly_errors(fn: Callable) -> Callable:
    """Show bad-input errors (`InputError`, missing files) in the app as a message naming what was wrong. Other
    exceptions are bugs: they are shown as an internal error, and the server log keeps the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            if is_input_error(e):
                raise gr.Error(str(e)) from e
            raise gr.Error(f"internal error ({type(e).__name__}): {e}. This is a bug in ditlab, not in your input.") \
                from e

    return wrapper


def progress_callback(progress: gr.Progress, desc: str = "sampling") -> Callable[[int, int], None]:
    """Adapt a Gradio progress bar to the samplers' `progress(i, total)` argument."""
    return lambda i, total: progress((i + 1) / total, desc=f"{desc} {i + 1}/{total}")


class ModelCache:
    """Models loaded once per process and shared by every request: `cache.get("ct-prior", load_prior)`."""

    def __init__(self) -> None:
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], object]):
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODELS = ModelCache()
"""The process-wide model cache of every page."""


def guard_upload(path: str | Path, suffixes: Iterable[str], max_bytes: int,
                 magic: dict[str, Iterable[bytes]] | None = None) -> Path:
    """Check an uploaded file before anything parses it: it exists, its name ends with one of `suffixes`, it holds
    at most `max_bytes`, and (with `magic`: suffix -> accepted leading bytes) its first bytes match its suffix.
    Messages name the file by its own name, never the server's upload folder."""
    path = Path(path)
    suffixes = tuple(suffixes)
    _, suffix = split_suffix(path, suffixes)
    if not suffix:
        raise InputError(f"{path.name}: unsupported file type; expected one of {', '.join(suffixes)}")
    if not path.is_file():
        raise InputError(f"{path.name}: the upload did not arrive; upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{path.name} is {size / 2**20:.1f} MiB; this app accepts at most {max_bytes / 2**20:.0f} MiB "
                         "per file (use the `ditlab` CLI for bigger files)")
    heads = tuple((magic or {}).get(suffix, ()))
    if heads:
        with open(path, "rb") as f:
            head = f.read(max(len(h) for h in heads))
        if not any(head.startswith(h) for h in heads):
            raise InputError(f"{path.name}: its contents are not a {suffix} file (unexpected leading bytes)")
    return path


def request_dir(prefix: str) -> Path:
    """A fresh temporary folder for one request's output files (each request gets its own)."""
    return Path(tempfile.mkdtemp(prefix=f"ditlab-{safe_stem(prefix)}-"))


@dataclass(frozen=True)
class Page:
    """A vertical's app page: its title, its route in the suite ("" for the landing page), a `build()` that
    creates the page's components inside the caller's Blocks, and its place in the suite's navigation."""

    title: str
    route: str
    build: Callable[[], None]
    order: int = 100


def discover_pages() -> list[Page]:
    """Every page registered in the entry-point group `ditlab.pages`, in (order, title) order. A page that fails to
    load is skipped with a warning, so one broken vertical does not take the suite down."""
    import warnings

    pages = []
    for ep in entry_points(group=PAGE_GROUP):
        try:
            page = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken vertical must not take the suite down
            warnings.warn(f"ditlab page {ep.name!r} is unavailable: {e}", stacklevel=2)
            continue
        if not isinstance(page, Page):
            warnings.warn(f"ditlab page {ep.name!r} is not a ditlab.core.ui.Page ({type(page).__name__})",
                          stacklevel=2)
            continue
        pages.append(page)
    return sorted(pages, key=lambda p: (p.order, p.title))


def page_app(page: Page) -> gr.Blocks:
    """One page as a standalone app (`python apps/<vertical>.py`)."""
    with gr.Blocks(title=f"ditlab {page.title.lower()}") as app:
        page.build()
    return app


def launch(demo: gr.Blocks, port: int = PORT) -> None:
    demo.queue(default_concurrency_limit=1).launch(server_name=HOST, server_port=port, show_error=True,
                                                   theme=theme())
