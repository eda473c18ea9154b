"""The medical page: simulate a CT or MRI acquisition of a volume, reconstruct it with classical and DiT-prior
methods, compare them slice by slice and by the numbers, with the safeguard's verdict beside the metrics; and
fine-tune the prior on several uploaded scans (or a zip of them) into an adapter that the reconstructions then
use. A page of the suite (entry point `ditlab.pages`); `python apps/medical.py` serves it alone."""

from __future__ import annotations

import zipfile
from pathlib import Path

import gradio as gr
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from ditlab.core.cli import cache_policy
from ditlab.core.errors import InputError
from ditlab.core.files import safe_stem
from ditlab.core.ui import MODELS, Page, friendly_errors, guard_upload, progress_callback, request_dir
from ditlab.medical import finetune as ft
from ditlab.medical import reconstruct as rec
from ditlab.medical.acquisition import TASKS, Acquisition
from ditlab.medical.data import SPACING, make_ood_volume, make_phantom, phantom_affine
from ditlab.medical.families import FAMILIES, family_affine, make_volume
from ditlab.medical.io import NIFTI_SUFFIXES, Volume, VolumeError, load_volume, save_volume, spacing_of
from ditlab.medical.metrics import PLANES, evaluate
from ditlab.medical.models import CACHE_POLICIES, PRIOR_NAME, SlicePrior, load_prior
from ditlab.medical.operators import HU_WINDOW

SAMPLES = {  # name -> HU volume (X, Y, Z) for a seed; test seeds (0+) never met in training
    "phantom quick 64x64x32": lambda seed: make_phantom("quick", seed),
    "phantom full 128x128x64": lambda seed: make_phantom("full", seed),
    "out-of-distribution 64x64x32": lambda seed: make_ood_volume("quick", seed),
    **{f"{f} (OOD family) 64x64x16": (lambda seed, f=f: make_volume(f, (64, 64, 16), seed)) for f in FAMILIES},
}
METHOD_LABELS = {"fbp": "FBP", "sirt": "SIRT", "tv": "TV", "tv3d": "TV 3D", "dds": "DDS (DiT)",
                 "dps": "DPS (DiT)", "reddiff": "RED-diff (DiT)"}
CT_ONLY = rec.CT_ONLY_METHODS
WINDOWS = {"full [-1000, 1000]": HU_WINDOW, "soft tissue [-160, 240]": (-160.0, 240.0),
           "lung [-1350, 150]": (-1350.0, 150.0)}
MAX_VIEWS, MAX_ACCEL = 180, 16.0
MIN_SIDE, MAX_VOXELS = 16, 256 ** 3  # what a CPU reconstructs in minutes; the `ditlab medical` CLI takes more
MAX_UPLOAD = 256 * 2**20  # bytes: a 256^3 float64 volume with room to spare
NIFTI_MAGIC = {".nii": (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"),
               ".nii.gz": (b"\x1f\x8b",)}  # sizeof_hdr 348 (NIfTI-1) or 540 (NIfTI-2), either byte order; gzip
PANEL = 256  # display pixels along the longest side of the volume
COLUMNS = ["method", "PSNR (dB)", "PSNR axial", "PSNR coronal", "PSNR sagittal", "SSIM", "SSIM 3D", "residual",
           "seconds", "NFE", "NFE spent", "safeguard"]
MAX_SCANS, MAX_ZIP = 32, 1024 * 2**20  # fine-tuning uploads: volumes, and bytes a zip may unpack to
MAX_FINETUNE_STEPS = 2000
CACHES = ("none", *CACHE_POLICIES)

def _number(value: float | None, name: str) -> float:
    if value is None:
        raise InputError(f"{name} is empty; expected a number")
    return value


def _load_upload(path: str) -> Volume:
    """The uploaded NIfTI, refused by its header before its voxels are read when too large for the app.

    Messages name the file, not the server's upload folder."""
    name = guard_upload(path, NIFTI_SUFFIXES, MAX_UPLOAD, NIFTI_MAGIC).name
    try:
        shape = nib.load(path).shape
    except Exception:  # not a readable NIfTI: load_volume says why
        shape = ()
    if np.prod(shape[:3], dtype=np.int64) > MAX_VOXELS:
        raise VolumeError(f"{name}: {tuple(shape)} is {np.prod(shape[:3]):,} voxels; the app reconstructs at most "
                          f"{MAX_VOXELS:,} (256^3): crop or downsample it, or use `ditlab medical reconstruct`")
    try:
        vol = load_volume(path)
    except VolumeError as e:
        raise VolumeError(str(e).replace(str(path), name)) from e
    vol.source = name
    return vol


def _ground_truth(upload: str | None, sample: str, seed: int) -> Volume:
    if upload:
        vol = _load_upload(upload)
    elif sample in SAMPLES:
        hu = SAMPLES[sample](seed)
        family = sample.split(" ")[0]
        if family in FAMILIES:  # written with the family's own affine (oblique for ellipses)
            affine = family_affine(family, hu.shape, seed)
            vol = Volume(hu, affine, spacing_of(affine), source=sample)
        else:
            vol = Volume(hu, phantom_affine(hu.shape), SPACING, source=sample)
    else:
        raise InputError(f"unknown sample {sample!r}; expected one of {list(SAMPLES)} or an uploaded volume")
    if min(vol.data.shape) < MIN_SIDE:
        raise VolumeError(f"{Path(vol.source).name}: shape {vol.data.shape}; expected every side >= {MIN_SIDE} "
                          "voxels (a single slice is not a volume)")
    return vol


def _acquisition(task: str, views: float | None, accel: float | None) -> Acquisition:
    views, accel = _number(views, "views"), _number(accel, "acceleration")
    if task == "mri" and accel > MAX_ACCEL:
        raise InputError(f"MRI acceleration must be from 1 to {MAX_ACCEL:g}, got {accel:g}")
    if task != "mri" and not 2 <= views <= MAX_VIEWS:
        raise InputError(f"views must be an integer from 2 to {MAX_VIEWS}, got {views:g}")
    return Acquisition(task, views=views, accel=accel)


def _plane(hu: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a RAS volume (X, Y, Z) as displayed: radiological convention (patient's right on the viewer's
    left), anterior up in axial, superior up in coronal and sagittal (anterior on the left)."""
    return np.take(hu, index, PLANES[plane]).T[::-1, ::-1]


def _montage(state: dict, plane: str, index: int, window: tuple[float, float]) -> np.ndarray:
    """Ground truth and each method side by side for one slice, windowed, at the voxels' true aspect ratio."""
    volumes, spacing = state["volumes"], state["spacing"]
    shape = next(iter(volumes.values())).shape
    index = min(max(int(index), 0), shape[PLANES[plane]] - 1)
    cols, rows = (a for a in range(3) if a != PLANES[plane])  # displayed columns and rows follow these axes
    px_per_mm = PANEL / max(n * s for n, s in zip(shape, spacing, strict=True))
    size = tuple(max(1, round(shape[a] * spacing[a] * px_per_mm)) for a in (cols, rows))
    lo, hi = window
    font, caption, gap = ImageFont.load_default(size=13), 20, 4
    sheet = Image.new("L", (len(volumes) * (size[0] + gap) - gap, size[1] + caption), 0)
    draw = ImageDraw.Draw(sheet)
    for k, (label, hu) in enumerate(volumes.items()):
        grey = (np.clip((_plane(hu, plane, index) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        x = k * (size[0] + gap)
        sheet.paste(Image.fromarray(np.ascontiguousarray(grey)).resize(size, Image.BILINEAR), (x, caption))
        draw.text((x + size[0] / 2, caption / 2), label, fill=255, font=font, anchor="mm")
    return np.asarray(sheet)


def render(state: dict | None, axial: float, coronal: float, sagittal: float, window: str):
    """The three planes' montages of the kept results (no recomputation)."""
    if not state:
        return None, None, None
    return tuple(_montage(state, plane, index, WINDOWS[window])
                 for plane, index in zip(PLANES, (axial, coronal, sagittal), strict=True))


def _prior_model(adapter: str | None):
    """The shared packaged prior, or (with an adapter file) the prior with that adapter, refused when the adapter
    belongs to another prior."""
    if not adapter:
        return MODELS.get(PRIOR_NAME, load_prior)
    name = guard_upload(adapter, (".safetensors",), 16 * 2**20).name
    try:
        return load_prior(adapter=adapter)
    except (InputError, ValueError) as e:
        raise InputError(str(e).replace(str(adapter), name)) from e


def _verdict(result) -> str:
    g = result.safeguard
    if g.status == "off":
        return "-"
    return "passed" if g.status == "passed" else f"backed off {g.backed_off}/{g.slices}"


@friendly_errors
def run_reconstruction(upload: str | None, sample: str, task: str, views: float, accel: float, noise: float,
                       methods: list[str], steps: float, seed: float, window: str, cache: str = "none",
                       adapter: str | None = None, progress=gr.Progress()):
    seed, noise = int(_number(seed, "seed")), _number(noise, "noise")
    acq = _acquisition(task, views, accel)
    if window not in WINDOWS:
        raise InputError(f"unknown window {window!r}; expected one of {list(WINDOWS)}")
    if cache not in CACHES:
        raise InputError(f"unknown feature cache {cache!r}; expected one of {list(CACHES)}")
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if not methods or unknown:
        raise InputError(f"choose methods among {list(METHOD_LABELS)}, got {methods}")
    chosen = [m for m in METHOD_LABELS if m in methods]
    skipped = [m for m in chosen if task == "mri" and m in CT_ONLY]
    chosen = [m for m in chosen if m not in skipped]
    if not chosen:
        raise InputError(f"{', '.join(METHOD_LABELS[m] for m in skipped)} are CT methods; for MRI choose TV, "
                         "TV 3D or a DiT method")
    tuned = rec.defaults(task)  # the slider sets the NFE; each task's tuned setting splits it into runs x steps
    settings = tuned.replace(steps=max(1, round(int(_number(steps, "DiT NFE")) / tuned.samples)))
    settings.check()

    # the prior (with the adapter, if any) once per request, before the volume, for all the DiT methods
    model = _prior_model(adapter) if any(m in rec.DIT_METHODS for m in chosen) else None
    progress(0, desc="loading and measuring the volume")
    truth = _ground_truth(upload, sample, seed)
    meas = rec.simulate_volume(truth, acq, noise=noise, seed=seed)
    out_dir = request_dir("medical")
    stem = safe_stem(truth.source, NIFTI_SUFFIXES, default="volume")
    volumes, rows, files, verdicts, run_line = {"Ground truth": truth.data}, [], [], [], ""
    if not upload:
        files.append(save_volume(truth, out_dir / f"{stem}_ground-truth.nii.gz"))
    for i, method in enumerate(chosen):
        label = METHOD_LABELS[method]
        prior = policy = None
        if method in rec.DIT_METHODS:
            prior = SlicePrior(model, batch=16, generator=torch.Generator().manual_seed(seed))
            policy = cache_policy(cache)
            run_line = run_line or f"The network ran in {prior.prepared(grad=method == 'dps').line}."
        bar = progress_callback(progress, desc=f"{label} ({i + 1}/{len(chosen)})")
        vol, result = rec.reconstruct_volume(meas, method, settings, prior=prior, seed=seed, cache=policy,
                                             progress=lambda done, total, bar=bar: bar(done - 1, total))
        m = evaluate(vol.data, truth.data, meas, result)
        rows.append([label, *(round(m[f"psnr{p}"], 2) for p in ("", "_axial", "_coronal", "_sagittal")),
                     *(round(m.get(k, float("nan")), 3) for k in ("ssim", "ssim3d")), round(m["residual"], 4),
                     round(m["seconds"], 1), int(m["nfe"]), round(result.nfe_equivalent, 1), _verdict(result)])
        if result.safeguard.status != "off":
            verdicts.append(f"**{label}** {result.safeguard.message}.")
        volumes[label] = vol.data
        files.append(save_volume(vol, out_dir / f"{stem}_{method}.nii.gz"))

    shape = truth.data.shape
    notes = [f"**{acq.describe()}**, noise {noise:g} x the RMS measurement, simulated from "
             f"{Path(truth.source).name} ({' x '.join(map(str, shape))} voxels of "
             f"{' x '.join(f'{s:g}' for s in truth.spacing)} mm). PSNR and SSIM on the window "
             f"[{HU_WINDOW[0]:g}, {HU_WINDOW[1]:g}] HU; residual = ||A x - y|| / ||y||; NFE per slice; NFE spent: "
             f"the network evaluations a feature cache left (cache: {cache}); prior: "
             + (f"with the adapter {Path(adapter).name}" if adapter else "the packaged ct-prior") + "."]
    notes += [run_line] if run_line else []
    notes += verdicts
    notes += [f"{METHOD_LABELS[m]} skipped: a CT method, not applicable to MRI." for m in skipped]
    state = {"volumes": volumes, "spacing": truth.spacing}
    middle = [shape[PLANES[p]] // 2 for p in PLANES]
    sliders = [gr.Slider(0, shape[PLANES[p]] - 1, value=i, step=1) for p, i in zip(PLANES, middle, strict=True)]
    return (state, *render(state, *middle, window), *sliders, pd.DataFrame(rows, columns=COLUMNS),
            "\n\n".join(notes), [str(f) for f in files])


def _scan_files(uploads: list[str], out_dir: Path) -> list[Path]:
    """The uploaded volumes: NIfTI files as they are, and the NIfTI members of zips unpacked into `out_dir`
    (member names flattened, sizes bounded before unpacking)."""
    paths: list[Path] = []
    for up in uploads:
        if str(up).lower().endswith(".zip"):
            name = guard_upload(up, (".zip",), MAX_UPLOAD * 4, {".zip": (b"PK\x03\x04",)}).name
            try:
                with zipfile.ZipFile(up) as z:
                    members = [m for m in z.infolist() if not m.is_dir() and m.filename.lower().endswith(NIFTI_SUFFIXES)
                               and not Path(m.filename).name.startswith(".")]
                    if sum(m.file_size for m in members) > MAX_ZIP:
                        raise InputError(f"{name} unpacks to more than {MAX_ZIP / 2**20:.0f} MiB of volumes; upload "
                                         "fewer scans or use `ditlab medical finetune`")
                    for k, m in enumerate(members):
                        target = out_dir / f"{k:03d}_{safe_stem(Path(m.filename).name, NIFTI_SUFFIXES)}" \
                            f"{'.nii.gz' if m.filename.lower().endswith('.gz') else '.nii'}"
                        target.write_bytes(z.read(m))
                        paths.append(target)
            except zipfile.BadZipFile as e:
                raise InputError(f"{name}: not a readable zip file ({e})") from e
        else:
            guard_upload(up, (*NIFTI_SUFFIXES, ".zip"), MAX_UPLOAD, NIFTI_MAGIC)
            paths.append(Path(up))
    if len(paths) > MAX_SCANS:
        raise InputError(f"{len(paths)} scans uploaded; the app fine-tunes on at most {MAX_SCANS} (use `ditlab medical "
                         "finetune` for more)")
    return paths


@friendly_errors
def run_finetune(uploads: list[str] | None, steps: float, progress=gr.Progress()):
    """Fine-tune the prior on the uploaded scans; returns the adapter file (also set as the reconstructions')."""
    steps = int(_number(steps, "fine-tuning steps"))
    if not 1 <= steps <= MAX_FINETUNE_STEPS:
        raise InputError(f"fine-tuning steps must be from 1 to {MAX_FINETUNE_STEPS}, got {steps}")
    if not uploads:
        raise InputError(f"no scans uploaded; expected at least {ft.MIN_VOLUMES} volumes (.nii / .nii.gz) or a zip of "
                         "them")
    out_dir = request_dir("medical-finetune")
    progress(0, desc="reading the scans")
    volumes = []
    for path in _scan_files(list(uploads), out_dir):
        try:
            vol = load_volume(path)
        except VolumeError as e:
            raise VolumeError(str(e).replace(str(path), path.name)) from e
        vol.source = path.name
        volumes.append(vol)
    scans = ft.prepare_scans(volumes)
    adapter = out_dir / "ct-prior-adapter.safetensors"
    report = ft.finetune(scans, adapter, steps=steps,
                         progress=lambda i, total, loss: progress(i / total, desc=f"fine-tuning {i}/{total}, "
                                                                              f"loss {loss:.3f}"))
    note = (f"Fine-tuned on {len(scans.sources)} scans ({scans.n_slices} slices) for {report['step']} steps in "
            f"{report['seconds']:.0f} s (loss {report['loss']:.3f}); adapter {report['adapter_bytes'] / 1024:.0f} KB "
            f"for {report['base']}. The reconstructions now use it (clear the adapter box to go back).")
    if scans.resampled:
        note += f" Resampled in-plane to {scans.spacing:.3g} mm: {', '.join(scans.resampled)}."
    return str(adapter), note


def build_page() -> None:
    """The page's components, created inside the caller's Blocks context."""
    gr.Markdown(
        "## Medical: 3D CT and MRI reconstruction with a DiT prior\n"
        "The volume you upload (or the sample you pick) is the **ground truth**: the app simulates the acquisition "
        "from it (sparse-view or limited-angle parallel-beam CT, or Cartesian MRI, with noise), reconstructs it with "
        "each method and scores each against it. The DiT methods use the packaged 2D slice prior `ct-prior`, trained "
        "on synthetic torso phantoms and a broad mix of other synthetic textures. Every DiT result is checked "
        "against the measurements (the **safeguard**): slices less consistent than the noise allows are redone "
        "closer to the classical solution or replaced by TV, and the table says so. Fine-tune the prior on your own "
        "scans below for better results on them.")
    state = gr.State()
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="NIfTI volume in HU (.nii / .nii.gz), used instead of the sample when given",
                             file_types=[".nii", ".nii.gz"], type="filepath")
            sample = gr.Dropdown(list(SAMPLES), value=next(iter(SAMPLES)), label="Sample volume")
            task = gr.Radio(list(TASKS), value="sparse-view", label="Acquisition")
            views = gr.Number(8, precision=0, label=f"CT views (2-{MAX_VIEWS}; limited-angle spans 0-90 deg)")
            accel = gr.Number(4.0, label=f"MRI acceleration (1-{MAX_ACCEL:g})", visible=False)
            noise = gr.Number(0.01, label="Noise (x the RMS measurement)")
            methods = gr.CheckboxGroup([(label, m) for m, label in METHOD_LABELS.items()], value=["fbp", "tv", "dds"],
                                       label="Methods (FBP and SIRT are CT only)")
            tuned = rec.defaults("sparse-view")
            runs = ", ".join(f"{t} {rec.defaults(t).samples}" for t in TASKS)
            steps = gr.Slider(1, 100, value=tuned.steps * tuned.samples, step=1,
                              label=f"DiT network evaluations (NFE; fewer is faster; split into averaged runs: {runs})")
            cache = gr.Dropdown(list(CACHES), value="none", label="Feature cache for the DiT methods (faster, "
                                "slightly different: see BENCHMARKS.md)")
            seed = gr.Number(0, precision=0, label="Seed (sample phantom, noise, sampling)")
            adapter = gr.File(label="Fine-tuning adapter for the DiT methods (.safetensors; set by fine-tuning below)",
                              file_types=[".safetensors"], type="filepath")
            button = gr.Button("Reconstruct", variant="primary")
            with gr.Accordion("Fine-tune the prior on your own scans", open=False):
                scans = gr.File(label=f"Your reconstructed scans in HU: {ft.MIN_VOLUMES} or more .nii / .nii.gz, or a "
                                "zip of them", file_count="multiple", file_types=[".nii", ".nii.gz", ".zip"],
                                type="filepath")
                ft_steps = gr.Slider(10, MAX_FINETUNE_STEPS, value=ft.RECIPE.steps, step=10,
                                     label="Fine-tuning steps (400: about 6 minutes on a 2-core CPU)")
                ft_button = gr.Button("Fine-tune")
                ft_notes = gr.Markdown()
        with gr.Column(scale=2):
            window = gr.Dropdown(list(WINDOWS), value=next(iter(WINDOWS)), label="Display window (HU)")
            images, sliders = [], []
            for plane in PLANES:
                images.append(gr.Image(label=f"{plane.capitalize()}: ground truth and each method", type="numpy",
                                       format="png", interactive=False))
                sliders.append(gr.Slider(0, 1, value=0, step=1, label=f"{plane.capitalize()} slice"))
            metrics = gr.Dataframe(headers=COLUMNS, label="Metrics", interactive=False)
            notes = gr.Markdown(label="Notes")
            files = gr.File(label="Reconstructions (.nii.gz, the input's affine and orientation)",
                            file_count="multiple", interactive=False)
    task.change(lambda t: (gr.Number(visible=t != "mri"), gr.Number(visible=t == "mri")), task, [views, accel],
                api_visibility="private")
    button.click(run_reconstruction,
                 [upload, sample, task, views, accel, noise, methods, steps, seed, window, cache, adapter],
                 [state, *images, *sliders, metrics, notes, files], api_name="reconstruct")
    ft_button.click(run_finetune, [scans, ft_steps], [adapter, ft_notes], api_name="finetune")
    gr.on([s.input for s in sliders] + [window.input], render, [state, *sliders, window], images,
          api_visibility="private", trigger_mode="always_last")


PAGE = Page("Medical", "medical", build_page, order=10)
