"""The imaging page: upscale (x2, x4) or restore (denoise, deblur, JPEG) an uploaded image or a bundled sample with
the SRDiT, compare before and after on a slider, download the result in the input's bit depth with its alpha.

The upload is taken as a file and read with `read_image` (16-bit and alpha survive; Gradio never decodes it), and
every image the page shows or returns is a PNG it wrote itself. The app caps the input's size so a request runs in
seconds to minutes on a CPU; the `ditlab imaging` CLI takes any size. A page of the suite (entry point
`ditlab.pages`); `python apps/imaging.py` serves it alone.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch

from ditlab.core.errors import InputError
from ditlab.core.ui import MODELS, Page, friendly_errors, guard_upload, progress_callback, request_dir
from ditlab.imaging.data import photo, procedural_image, split_seed
from ditlab.imaging.degrade import TASKS, restoration
from ditlab.imaging.io import (
    IMAGE_SUFFIXES,
    Image,
    ImageError,
    from_array,
    output_name,
    read_image,
    resize_alpha,
    write_image,
)
from ditlab.imaging.models import upsample
from ditlab.imaging.pipeline import DEGRADATIONS, SCALES, Enhancer, restore, upscale
from ditlab.imaging.superres import COLOUR_FIXES

WEIGHTS: dict[str, str | Path | None] = {"sr": None, "restore": None}
"""The networks the page runs, by Enhancer kind: None for the packaged `sr-x4` / `restore-x1`, else a weights
folder (tests point these at tiny networks)."""

JOBS = ("upscale", "restore")
MAX_STEPS = 4  # the networks are trained with 4 residual-shift steps
MAX_UPLOAD = 64 * 2**20  # bytes: a 2048 x 2048 16-bit RGBA TIFF uncompressed is 32 MiB
MAX_INPUT = {4: (1024, 1024), 2: (2048, 2048), 1: (2048, 2048)}  # scale -> largest input (W, H) the app runs
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
IMAGE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
               ".tif": TIFF_MAGIC, ".tiff": TIFF_MAGIC, ".bmp": (b"BM",), ".webp": (b"RIFF",)}
FORMATS = "PNG, TIFF, JPEG, BMP or WebP"

SAMPLE_SIZE = 128  # pixels a side: a sample runs in seconds on a CPU
SAMPLES = {  # name -> (H, W, 3) float32 in [0, 1]; photos and seeds never trained on (EVAL_PHOTOS, the test split)
    "chelsea: cat's eye (photo)": lambda: photo("chelsea")[60:60 + SAMPLE_SIZE, 110:110 + SAMPLE_SIZE],
    "coffee: cup and spoon (photo)": lambda: photo("coffee")[180:180 + SAMPLE_SIZE, 300:300 + SAMPLE_SIZE],
    "procedural scene": lambda: procedural_image(split_seed("test", 0), (SAMPLE_SIZE, SAMPLE_SIZE), "composite"),
}
SAMPLE_DEGRADATION = {"denoise": 25.0, "deblur": 1.5, "jpeg": 20}  # noise sigma /255, blur sigma px, JPEG quality


def _number(value: float | None, name: str) -> float:
    if value is None:
        raise InputError(f"{name} is empty; expected a number")
    return value


def _header_pixels(path: Path) -> int | None:
    """The pixel count the file's header declares (no pixel decoded), or None where Pillow cannot tell: then the
    decoded image is checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as im:
                return im.width * im.height
    except Exception:  # not for Pillow (or not an image): read_image says what is wrong
        return None


def _check_size(pixels: int, name: str, scale: int) -> None:
    w, h = MAX_INPUT[scale]
    if pixels > w * h:
        job = f"upscales x{scale}" if scale > 1 else "restores"
        raise ImageError(f"{name}: {pixels / 1e6:.1f} megapixels; the app {job} images of at most {w} x {h} pixels "
                         f"({w * h / 1e6:.1f} megapixels): crop or downscale it, or use the `ditlab imaging` CLI")


def _load_upload(path: str, scale: int) -> Image:
    """The uploaded file as an Image, refused before decoding when it is empty, not the image its name says or too
    large for the app. Messages name the file, never the server's upload folder."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageError(f"{path.name}: empty file (0 bytes); expected an image file ({FORMATS})")
    name = guard_upload(path, IMAGE_SUFFIXES, MAX_UPLOAD, IMAGE_MAGIC).name
    pixels = _header_pixels(path)
    if pixels is not None:
        _check_size(pixels, name, scale)
    try:
        img = read_image(path)
    except ImageError as e:
        raise ImageError(str(e).replace(str(path), name)) from e
    _check_size(img.width * img.height, name, scale)
    return replace(img, source=name)


def sample_image(name: str, task: str | None = None) -> Image:
    """A bundled sample as an 8-bit Image; with a restoration `task`, first degraded by it (seeded, at a middle
    level, noted), so there is something to restore."""
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; expected one of {list(SAMPLES)} or an uploaded image")
    x = torch.from_numpy(np.ascontiguousarray(SAMPLES[name]())).permute(2, 0, 1)[None]  # (1, 3, H, W)
    notes = []
    if task is not None:
        level = SAMPLE_DEGRADATION[task]
        x = restoration(x, task, torch.Generator().manual_seed(0), level=level)
        notes.append(f"sample degraded for {task} (level {level:g})")
    rgb = np.round(x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    return replace(from_array(rgb), source=name.split(":")[0].replace(" ", "-") + ".png", notes=notes)


def _load_enhancer(kind: str, weights: str | Path | None) -> Enhancer:
    enh = Enhancer(kind, weights=weights)
    _ = enh.model  # loaded here, once per process; each request runs a copy with its own steps
    return enh


def _enhancer(kind: str, steps: int) -> Enhancer:
    """The page's network of `kind` (`WEIGHTS`), loaded once per process and weights, with `steps`."""
    weights = WEIGHTS[kind]
    base = MODELS.get(f"imaging-{kind}:{weights or 'packaged'}", lambda: _load_enhancer(kind, weights))
    return replace(base, steps=steps)


def _before(img: Image, scale: int) -> Image:
    """The input at the output's size (bicubic, the baseline every upscaler is compared with), alpha too."""
    if scale == 1:
        return img
    px = torch.from_numpy(img.pixels).permute(2, 0, 1)[None]
    px = upsample(px, scale).clamp_(0, 1)[0].permute(1, 2, 0).numpy()
    h, w = px.shape[:2]
    alpha = None if img.alpha is None else resize_alpha(img.alpha, h, w)
    return replace(img, pixels=np.ascontiguousarray(px), alpha=alpha)


def _describe(img: Image) -> str:
    colour = "grey" if img.is_grey else "RGB"
    return f"{img.width} x {img.height} px {img.bit_depth}-bit {colour}{' + alpha' if img.alpha is not None else ''}"


@friendly_errors
def run_job(upload: str | None, sample: str, job: str, scale: int, degradation: str, task: str, steps: float,
            colour: str, progress=gr.Progress()) -> tuple[tuple[str, str], str, str]:
    """Upscale or restore the upload (or the sample); returns the slider's (before, after) PNG paths, the result
    file (PNG in the input's bit depth, alpha kept) and notes in Markdown."""
    if job not in JOBS:
        raise InputError(f"unknown job {job!r}; expected one of {JOBS}")
    scale = int(_number(scale, "scale")) if job == "upscale" else 1
    if job == "upscale" and scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale}")
    if job == "upscale" and degradation not in DEGRADATIONS:
        raise InputError(f"degradation must be one of {list(DEGRADATIONS)}, got {degradation!r}")
    if job == "restore" and task not in TASKS:
        raise InputError(f"restoration task must be one of {TASKS}, got {task!r}")
    if colour not in COLOUR_FIXES:
        raise InputError(f"colour fix must be one of {COLOUR_FIXES}, got {colour!r}")
    steps = int(_number(steps, "steps"))
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be from 1 to {MAX_STEPS}, got {steps}")

    progress(0, desc="reading the image")
    img = _load_upload(upload, scale) if upload else sample_image(sample, task if job == "restore" else None)
    progress(0, desc="loading the network")
    enh = _enhancer("sr" if job == "upscale" else "restore", steps)
    t0 = time.perf_counter()
    if job == "upscale":
        bar = progress_callback(progress, desc=f"upscaling x{scale}")
        out = upscale(img, scale, degradation, colour=colour, enhancer=enh, progress=bar)
        title, tag = f"Upscale x{scale}, {degradation} degradation", f"x{scale}"
    else:
        out = restore(img, task, colour=colour, enhancer=enh, progress=progress_callback(progress, desc=task))
        title, tag = f"Restore: {task}", task
    seconds = time.perf_counter() - t0

    out_dir = request_dir("imaging")
    result = write_image(out_dir / output_name(img.source, tag), out)
    before = write_image(out_dir / output_name(img.source, "before"), _before(img, scale), bit_depth=8)
    after = write_image(out_dir / output_name(img.source, f"{tag}-preview"), out, bit_depth=8)
    notes = [f"**{title}** of {img.source}: {_describe(img)} -> {_describe(out)} (W x H) in {seconds:.1f} s, "
             f"{enh.steps} step{'s' if enh.steps > 1 else ''}, colour fix {colour}.",
             f"The network ran in {enh.prepared().line}.",
             f"Download: {result.name} ({out.bit_depth}-bit PNG{', alpha kept' if out.alpha is not None else ''}). "
             "The slider shows 8-bit previews: the input " + ("bicubic-upscaled " if scale > 1 else "")
             + "on the left, the result on the right.",
             "Conversions and steps: " + "; ".join(out.notes) + "."]
    return (str(before), str(after)), str(result), "\n\n".join(notes)


def _job_changed(job: str):
    """Show the settings of the chosen job; the colour fix defaults to wavelet for upscaling, none for restoring."""
    up = job == "upscale"
    return (gr.Radio(visible=up), gr.Radio(visible=up), gr.Radio(visible=not up),
            gr.Dropdown(value="wavelet" if up else "none"))


def build_page() -> None:
    """The page's components, created inside the caller's Blocks context."""
    gr.Markdown(
        "## Imaging: super-resolution and restoration with a diffusion transformer\n"
        "Upload an image or pick a sample, choose the job and run it. **Upscale** enlarges x2 or x4 (x2 is the x4 "
        "network's result halved); say whether the image went through unknown real-world degradations (camera "
        "blur, noise, JPEG: *real*) or only a clean downscale (*bicubic*). **Restore** keeps the size and removes "
        "noise, blur or JPEG artefacts (a sample is first degraded by the chosen task, so there is something to "
        "restore). The result keeps the input's bit depth (16-bit stays 16-bit) and its alpha channel. The app takes "
        f"inputs up to {' x '.join(map(str, MAX_INPUT[4]))} pixels for x4 and "
        f"{' x '.join(map(str, MAX_INPUT[1]))} otherwise; use the `ditlab imaging` CLI for bigger images.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label=f"Image ({FORMATS}; 8- or 16-bit, grey or colour, alpha kept), used instead of "
                             "the sample when given", file_types=list(IMAGE_SUFFIXES), type="filepath")
            sample = gr.Dropdown(list(SAMPLES), value=next(iter(SAMPLES)),
                                 label=f"Sample ({SAMPLE_SIZE} x {SAMPLE_SIZE} pixels)")
            job = gr.Radio([("Upscale", "upscale"), ("Restore", "restore")], value="upscale", label="Job")
            scale = gr.Radio([(f"x{s}", s) for s in sorted(SCALES, reverse=True)], value=4, label="Scale")
            degradation = gr.Radio(list(DEGRADATIONS), value="real",
                                   label="What the input went through (real: blur, noise, JPEG; bicubic: a clean "
                                   "downscale)")
            task = gr.Radio(list(TASKS), value=TASKS[0], label="Restoration", visible=False)
            steps = gr.Slider(1, MAX_STEPS, value=MAX_STEPS, step=1, label="Sampling steps (fewer is faster)")
            colour = gr.Dropdown(list(COLOUR_FIXES), value="wavelet",
                                 label="Colour fix: keep the input's low frequencies (no colour shift)")
            button = gr.Button("Run", variant="primary")
        with gr.Column(scale=2):
            slider = gr.ImageSlider(label="Before | after (drag to compare)", type="filepath", format="png",
                                    interactive=False)
            result = gr.File(label="Result (PNG in the input's bit depth, alpha kept)", interactive=False)
            notes = gr.Markdown(label="Notes")
    job.change(_job_changed, job, [scale, degradation, task, colour], api_visibility="private")
    button.click(run_job, [upload, sample, job, scale, degradation, task, steps, colour], [slider, result, notes],
                 api_name="run")


PAGE = Page("Imaging", "imaging", build_page, order=20)
