"""The ditlab suite: one app, a page per domain. `python apps/suite.py` serves it on 127.0.0.1:7860.

Pages come from the entry-point group `ditlab.pages` (`ditlab.core.ui.discover_pages`): a vertical adds its page
in its own pyproject.toml, without editing this file. The page with route "" (the core demo) is the landing page.
"""

from __future__ import annotations

import gradio as gr

from ditlab.core.ui import discover_pages, launch


def build() -> gr.Blocks:
    pages = discover_pages()
    landing = [p for p in pages if p.route == ""]
    with gr.Blocks(title="ditlab") as suite:
        gr.Markdown("# ditlab\nOne diffusion-transformer engine, five domains.")
        for page in landing[:1]:
            page.build()
    for page in pages:
        if page.route:
            with suite.route(page.title, f"/{page.route}"):
                page.build()
    return suite


if __name__ == "__main__":
    launch(build())
