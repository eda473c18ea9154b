"""The ditlab suite: one app, a page per domain. `python apps/suite.py` serves it on 127.0.0.1:7860."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ditlab.core.ui import launch, load_app_module

HERE = Path(__file__).resolve().parent
# page title -> (route, app file); the first page is the landing page.
PAGES = {"DiT engine": ("", "core.py"), "Medical": ("medical", "medical.py")}


def build() -> gr.Blocks:
    (_, (_, landing)), *others = PAGES.items()
    with gr.Blocks(title="ditlab") as suite:
        gr.Markdown("# ditlab\nOne diffusion-transformer engine, five domains.")
        load_app_module(HERE / landing, "ditlab_app_core").build_page()
    for title, (route, file) in others:
        with suite.route(title, f"/{route}"):
            load_app_module(HERE / file, f"ditlab_app_{route}").build_page()
    return suite


if __name__ == "__main__":
    launch(build())
