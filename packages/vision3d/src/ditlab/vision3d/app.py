"""The vision3d page: generate point-cloud shapes of a class and view them as points and meshes; generate a LiDAR
scan or upload one (KITTI .bin, nuScenes .pcd.bin, PLY, PCD, XYZ), complete a sector or densify 16 -> 64 beams, and
look at it from above and as a range image; download everything.

Uploads are checked before anything parses them (`guard_upload`: suffix, size) and read with `io.read_points` (its
point cap and finite-coordinate checks). Every file the page returns is one it wrote itself, in a fresh folder per
request. A page of the suite (entry point `ditlab.pages`); `python apps/vision3d.py` serves it alone.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image

from ditlab.core.errors import InputError
from ditlab.core.files import atomic_write, safe_stem
from ditlab.core.ui import MODELS, Page, friendly_errors, guard_upload, progress_callback, request_dir
from ditlab.vision3d.data import CLASSES
from ditlab.vision3d.io import FORMATS, read_points, write_points
from ditlab.vision3d.pipeline import LidarGenerator, ShapeGenerator, sector_columns
from ditlab.vision3d.surfaces import METHODS, bev_image, point_figure, range_view_image, reconstruct, write_mesh

WEIGHTS: dict[str, str | Path | None] = {"shape": None, "lidar": None}
"""The networks the page runs: None for the packaged `shape-dit` / `lidar-dit`, else a weights folder (tests)."""
MAX_SHAPES = 16  # per request: a CPU generates them in seconds
MAX_SCANS = 2
MAX_UPLOAD = 64 * 2**20  # bytes: a KITTI scan is ~2 MB, a dense PLY a few tens
LIDAR_TASKS = ("generate", "complete", "densify")


def _shapes(steps: int | None, guidance: float | None) -> ShapeGenerator:
    """A generator for this request's settings on the network loaded once per process."""
    model = MODELS.get(f"vision3d-shape:{WEIGHTS['shape']}", lambda: ShapeGenerator(WEIGHTS["shape"]).model)
    return ShapeGenerator(WEIGHTS["shape"], steps=steps, guidance=guidance, _model=model)


def _lidar(steps: int | None) -> LidarGenerator:
    model = MODELS.get(f"vision3d-lidar:{WEIGHTS['lidar']}", lambda: LidarGenerator(WEIGHTS["lidar"]).model)
    return LidarGenerator(WEIGHTS["lidar"], steps=steps, _model=model)


def _int(value, name: str, lo: int, hi: int) -> int:
    if value is None:
        raise InputError(f"{name} is empty; expected a whole number from {lo} to {hi}")
    if not lo <= int(value) <= hi:
        raise InputError(f"{name} must be from {lo} to {hi}, got {value}")
    return int(value)


def _angle(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} is empty or not a number; expected degrees, e.g. 135") from None


def _zip(path: Path, files: list[Path]) -> Path:
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.name)

    return atomic_write(path, write)


@friendly_errors
def run_shapes(shape_class: str, count: float, steps: float | None, guidance: float | None, mesh: str, seed: float,
               show: float, progress=gr.Progress()):
    """Generate shapes; returns the point view of one, its mesh (GLB), a zip of every PLY and GLB, and notes."""
    if shape_class not in CLASSES:
        raise InputError(f"unknown shape class {shape_class!r}; expected one of {CLASSES}")
    if mesh not in (*METHODS, "none"):
        raise InputError(f"surface method must be one of {(*METHODS, 'none')}, got {mesh!r}")
    n = _int(count, "count", 1, MAX_SHAPES)
    which = _int(show, "shape to show", 1, n) - 1
    progress(0, desc="loading the network")
    gen = _shapes(None if not steps else _int(steps, "steps", 1, 200), None if guidance is None else float(guidance))
    t0 = time.perf_counter()
    clouds = gen.generate(shape_class, n, seed=_int(seed, "seed", 0, 2**31 - 1),
                          progress=progress_callback(progress, desc="generating"))
    seconds = time.perf_counter() - t0
    out = request_dir("vision3d")
    files, notes, glb = [], [], None
    for i, cloud in enumerate(clouds):
        stem = out / f"{shape_class}_{i:03d}"
        files.append(write_points(stem.with_suffix(".ply"), cloud))
        if mesh != "none":
            try:
                surface = reconstruct(cloud, mesh)
            except InputError as e:
                notes.append(f"shape {i + 1}: no surface ({e})")
                continue
            path = write_mesh(stem.with_suffix(".glb"), surface.mesh)
            files.append(path)
            glb = path if i == which else glb
            if surface.note:
                notes.append(f"shape {i + 1}: {surface.note}")
    cfg = gen.model.config
    g = cfg.guidance_scale if gen.guidance is None else gen.guidance
    lines = [f"**{n} {shape_class}{'s' if n > 1 else ''}** of {clouds.shape[1]} points in {seconds:.1f} s "
             f"({gen.steps or cfg.sample_steps} steps, guidance {g:g}); showing shape {which + 1}. Canonical frame: "
             "longest side 1, y up, front towards -z.", *notes]
    return (point_figure(clouds[which], title=f"{shape_class} {which + 1}"), None if glb is None else str(glb),
            str(_zip(out / f"{shape_class}_shapes.zip", files)), "\n\n".join(lines))


def _read_scan(upload: str):
    path = guard_upload(upload, FORMATS, MAX_UPLOAD)
    return path, read_points(path)


def _png(path: Path, img: np.ndarray) -> Path:
    return atomic_write(path, lambda p: PIL.Image.fromarray(img).save(p, "PNG"))


@friendly_errors
def run_lidar(task: str, upload: str | None, start: float, end: float, steps: float | None, seed: float,
              progress=gr.Progress()):
    """Generate, complete or densify a scan; returns the bird's-eye view, the range view, the scan file (KITTI
    .bin) and notes."""
    if task not in LIDAR_TASKS:
        raise InputError(f"unknown LiDAR task {task!r}; expected one of {LIDAR_TASKS}")
    gen = _lidar(None if not steps else _int(steps, "steps", 1, 200))
    seed = _int(seed, "seed", 0, 2**31 - 1)
    bar = progress_callback(progress, desc=task)
    t0 = time.perf_counter()
    if task == "generate":
        scan, name = gen.generate(1, seed, progress=bar)[0], "generated"
    else:
        if not upload:
            raise InputError(f"{task} needs a scan: upload a .bin (KITTI), .pcd.bin (nuScenes), .ply, .pcd or .xyz")
        path, cloud = _read_scan(upload)
        name = safe_stem(path.name, FORMATS)
        if task == "complete":
            sector = (_angle(start, "sector start"), _angle(end, "sector end"))
            sector_columns(8, *sector)
            scan = gen.complete(cloud, sector, seed, progress=bar)
        else:
            scan = gen.densify(cloud, seed=seed, progress=bar)
    seconds = time.perf_counter() - t0
    out = request_dir("vision3d-lidar")
    pts = scan.points
    result = write_points(out / f"{name}_{task}.bin", pts)
    bev = _png(out / f"{name}_{task}_bev.png", bev_image(pts.points, pts.intensity))
    rng = _png(out / f"{name}_{task}_range.png", range_view_image(scan.depth))
    notes = f"**{task}**: {len(pts):,} points ({len(scan.generated):,} generated) in {seconds:.1f} s. " + (
        "The input's own points are kept as they were; generated pixels are added." if task != "generate" else
        "A 64-beam scan of a street the network made up.") + f" Download: {result.name} (KITTI float32 x4)."
    return str(bev), str(rng), str(result), notes


def build_page() -> None:
    """The page's components, created inside the caller's Blocks context."""
    gr.Markdown(
        "## Vision3D: point-cloud shapes and LiDAR scans with diffusion transformers\n"
        "**Shapes**: a class-conditional DiT-3D generates point clouds (2048 points) of five procedural classes; "
        "each is meshed (Poisson, or ball pivoting) for the 3D viewer. **LiDAR**: a range-image DiT generates "
        "64-beam scans, regenerates an azimuth sector of an uploaded scan, or densifies a 16-beam scan to 64 beams.")
    with gr.Tab("Shapes"):
        with gr.Row():
            with gr.Column(scale=1):
                shape_class = gr.Dropdown(list(CLASSES), value=CLASSES[0], label="Class")
                count = gr.Slider(1, MAX_SHAPES, value=4, step=1, label="How many")
                show = gr.Number(1, precision=0, label="Shape to view")
                mesh = gr.Radio([*METHODS, "none"], value="poisson", label="Surface")
                steps = gr.Number(None, precision=0, label="Sampling steps (empty: the network's validated number)")
                guidance = gr.Number(None, label="Guidance scale (empty: the network's; 1 = none)")
                seed = gr.Number(0, precision=0, label="Seed")
                go = gr.Button("Generate", variant="primary")
            with gr.Column(scale=2):
                points = gr.Plot(label="Points (drag to turn)")
                model3d = gr.Model3D(label="Surface (GLB)", clear_color=(1, 1, 1, 1))
                files = gr.File(label="All clouds (PLY) and surfaces (GLB), zipped", interactive=False)
                notes = gr.Markdown()
        go.click(run_shapes, [shape_class, count, steps, guidance, mesh, seed, show], [points, model3d, files, notes],
                 api_name="shapes")
    with gr.Tab("LiDAR"):
        with gr.Row():
            with gr.Column(scale=1):
                task = gr.Radio(list(LIDAR_TASKS), value="generate", label="Task")
                upload = gr.File(label="Scan for complete / densify (.bin KITTI, .pcd.bin nuScenes, .ply, .pcd, .xyz)",
                                 type="filepath")
                with gr.Row():
                    start = gr.Number(135, label="Sector start (deg, 0 = ahead, 90 = left)")
                    end = gr.Number(225, label="Sector end (deg, counter-clockwise)")
                lsteps = gr.Number(None, precision=0, label="Sampling steps (empty: the network's)")
                lseed = gr.Number(0, precision=0, label="Seed")
                run = gr.Button("Run", variant="primary")
            with gr.Column(scale=2):
                bev = gr.Image(label="Bird's-eye view (x forward is up)", type="filepath", interactive=False)
                rview = gr.Image(label="Range view (nearer is brighter)", type="filepath", interactive=False)
                scan_file = gr.File(label="Scan (KITTI .bin)", interactive=False)
                lnotes = gr.Markdown()
        run.click(run_lidar, [task, upload, start, end, lsteps, lseed], [bev, rview, scan_file, lnotes],
                  api_name="lidar")


PAGE = Page("Vision3D", "vision3d", build_page, order=30)
