"""The core page: sample the shipped demo DiT (class-conditional 16x16 shapes). The suite's landing page
(entry point `ditlab.pages`); `python apps/core.py` serves it alone."""

from __future__ import annotations

import gradio as gr

from ditlab.core import demo
from ditlab.core.errors import InputError
from ditlab.core.ui import MODELS, Page, friendly_errors, progress_callback


@friendly_errors
def run_sample(classes: list[str], per_class: float, steps: float, guidance: float, seed: float,
               progress=gr.Progress()):
    if not classes:
        raise InputError(f"choose at least one class of {', '.join(demo.CLASSES)}")
    unknown = [c for c in classes if c not in demo.CLASSES]
    if unknown:
        raise InputError(f"unknown classes {unknown}; expected some of {', '.join(demo.CLASSES)}")
    idx = [demo.CLASSES.index(c) for c in classes]
    model = MODELS.get("demo-shapes", demo.load_demo)
    x = demo.sample_demo(model, per_class=int(per_class), steps=int(steps), guidance=float(guidance),
                         seed=int(seed), classes=idx, progress=progress_callback(progress))
    return demo.to_grid(x, rows=len(idx))


def build_page() -> None:
    """The page's components, created inside the caller's Blocks context."""
    gr.Markdown("## DiT engine demo\nA tiny class-conditional DiT (flow matching, 1.3M parameters, "
                "4x4-pixel patches) trained here on synthetic 16x16 shapes. Pick classes and sample: a row per class.")
    with gr.Row():
        with gr.Column(scale=1):
            classes = gr.CheckboxGroup(list(demo.CLASSES), value=list(demo.CLASSES), label="Classes")
            per_class = gr.Slider(1, 16, value=8, step=1, label="Samples per class")
            steps = gr.Slider(1, 100, value=demo.SAMPLE_STEPS, step=1, label="Euler steps")
            guidance = gr.Slider(0.0, 6.0, value=demo.GUIDANCE, step=0.25,
                                 label="Guidance scale (1 = off)")
            seed = gr.Number(0, precision=0, label="Seed")
            button = gr.Button("Sample", variant="primary")
        with gr.Column(scale=2):
            out = gr.Image(label="Samples", type="numpy", format="png", interactive=False)
    button.click(run_sample, [classes, per_class, steps, guidance, seed], out, api_name="sample")


PAGE = Page("DiT engine", "", build_page, order=0)
