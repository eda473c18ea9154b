"""`ditlab vision3d`: generate shapes (PLY + GLB), generate / complete / densify LiDAR scans, mesh point clouds,
batch over folders, benchmark, train.

Bad inputs (unknown classes, empty clouds, NaN/Inf coordinates, more points than `data.MAX_POINTS`, `.bin` files
whose size is not a multiple of the record size, unknown formats, counts out of range, surfaces that cannot be built
even by the fallback chain of `surfaces.reconstruct`) raise core's `InputError` family or FileNotFoundError: the
`ditlab` root prints one line and exits 2. Outputs are written atomically: a failed file leaves nothing behind.
With several inputs or a folder, a failing file is recorded in the manifest and the rest go on (exit 1 if any
failed). Options shared with every vertical come from `ditlab.core.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ditlab.core.cli import (
    DEVICE_OPT,
    JSON_OPT,
    PRECISION_OPT,
    SEED_OPT,
    THREADS_OPT,
    WEIGHTS_OPT,
    check_precision_option,
    run_training,
    setup_run,
)
from ditlab.core.errors import UsageError
from ditlab.vision3d import __version__

app = typer.Typer(
    name="vision3d",
    help="ditlab.vision3d: point-cloud shape generation and LiDAR scan generation, completion and densification.",
    no_args_is_help=True,
    add_completion=False,
)
lidar_app = typer.Typer(name="lidar", help="LiDAR scans: generate, complete a sector, densify 16 -> 64 beams.",
                        no_args_is_help=True, add_completion=False)
app.add_typer(lidar_app)

STEPS_OPT = typer.Option(None, "--steps", help="Sampling steps (default: the network's validated number).")
POINT_FORMATS = ("ply", "pcd", "xyz", "npy")
SCAN_FORMATS = ("bin", "pcd.bin", "ply", "pcd", "npy")
MESH_OPT = typer.Option("poisson", "--mesh", help="Surface for each shape: poisson | ball_pivoting | none (falls "
                        "back to the other method, then the convex hull, and says so).")


@app.command()
def info() -> None:
    """Print the package version, the shape classes, the formats and the packaged networks."""
    from ditlab.core.weights import recorded_digests
    from ditlab.vision3d.data import CLASSES, MAX_POINTS
    from ditlab.vision3d.io import FORMATS

    typer.echo(f"ditlab-vision3d {__version__}")
    typer.echo(f"shape classes: {', '.join(CLASSES)}; point files: {', '.join(FORMATS)} (at most {MAX_POINTS:,} "
               "points)")
    nets = recorded_digests("ditlab.vision3d")
    typer.echo("networks: " + (", ".join(f"{k} (sha256 {v[:12]})" for k, v in sorted(nets.items())) or "none"))


def _check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    fmt = fmt.lower().lstrip(".")
    if fmt not in allowed:
        raise UsageError(f"--format must be one of {allowed}, got {fmt!r}")
    return fmt


def _mesh(points, method: str, path: Path) -> str:
    """Write the surface of `points` to `path` (GLB); the fallback note, if any."""
    from ditlab.vision3d.surfaces import reconstruct, write_mesh

    surface = reconstruct(points, method)
    write_mesh(path, surface.mesh)
    return surface.note


@app.command()
def generate(
    shape_class: str = typer.Option(..., "--class", help="chair | airplane | car | table | lamp"),
    n: int = typer.Option(1, "-n", "--count", help="How many shapes."),
    out: Path = typer.Option(..., "--out", help="Output folder (<class>_<i>.ply and .glb)."),
    points: int = typer.Option(2048, "--points", help="Points per shape."),
    mesh: str = MESH_OPT,
    fmt: str = typer.Option("ply", "--format", help="Point file format: ply | pcd | xyz | npy."),
    steps: int = STEPS_OPT,
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the "
                                   "network's validated one; 1 = none)."),
    weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT, device: str = DEVICE_OPT,
    precision: str = PRECISION_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Generate shapes of one class: a point cloud per shape and, unless --mesh none, its surface as GLB."""
    from ditlab.core.files import write_json
    from ditlab.vision3d.data import check_class
    from ditlab.vision3d.io import write_points
    from ditlab.vision3d.pipeline import ShapeGenerator
    from ditlab.vision3d.surfaces import METHODS

    check_class(shape_class)
    fmt = _check_format(fmt, POINT_FORMATS)
    if mesh != "none" and mesh not in METHODS:
        raise UsageError(f"--mesh must be one of {(*METHODS, 'none')}, got {mesh!r}")
    precision = check_precision_option(precision)
    dev = setup_run(threads, device)
    gen = ShapeGenerator(weights, steps=steps, guidance=guidance, precision=precision, device=dev)
    t0 = time.perf_counter()
    with typer.progressbar(length=n, label=f"{n} {shape_class}") as bar:
        clouds = gen.generate(shape_class, n, points, seed, progress=lambda done, total: bar.update(done - bar.pos))
    seconds = time.perf_counter() - t0
    written, notes, failed = [], {}, {}
    for i, cloud in enumerate(clouds):
        stem = out / f"{shape_class}_{i:03d}"
        written.append(str(write_points(stem.with_suffix(f".{fmt}"), cloud)))
        if mesh != "none":
            try:
                note = _mesh(cloud, mesh, stem.with_suffix(".glb"))
            except ValueError as e:  # InputError: not even the convex hull; the cloud itself is kept
                failed[stem.name] = str(e)
                continue
            written.append(str(stem.with_suffix(".glb")))
            if note:
                notes[stem.name] = note
    typer.echo(f"wrote {len(clouds)} {shape_class} clouds to {out} in {seconds:.1f} s"
               + (f"; {len(notes)} surfaces used a fallback" if notes else ""))
    for k, v in failed.items():
        typer.echo(f"  no surface for {k}: {v}", err=True)
    if json_path is not None:
        write_json(json_path, {"class": shape_class, "count": n, "seconds": seconds, "files": written,
                               "mesh_notes": notes, "mesh_failed": failed})
    raise typer.Exit(1 if failed else 0)


def _outputs(inputs: list[Path], out: Path, tag: str, fmt: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs: OUT is a file for one input, else a folder (<stem>_<tag>.<fmt>)."""
    from ditlab.core.files import safe_stem, split_suffix
    from ditlab.vision3d.io import FORMATS

    if not inputs:
        raise UsageError("give at least one input file")
    _, out_suffix = split_suffix(out, FORMATS)
    if len(inputs) == 1 and out_suffix:
        return [(inputs[0], out)]
    if out_suffix and not out.is_dir():
        raise UsageError(f"--out must be a point file for one input, or a folder for several; {out} names one file "
                         f"for {len(inputs)} inputs")
    if out.suffix and not out_suffix or out.is_file():
        raise UsageError(f"--out must be a point file ({', '.join(FORMATS)}) for one input, or a folder; got {out}")
    pairs = [(p, out / f"{safe_stem(p.name, FORMATS)}_{tag}.{fmt}") for p in inputs]
    if len({o for _, o in pairs}) != len(pairs):
        raise UsageError("two inputs would write the same output name; give them different stems")
    return pairs


def _run(pairs: list[tuple[Path, Path]], job, json_path: Path | None) -> None:
    """One input: run it, a clear error on failure. Several: run each, record failures, go on (core's batch)."""
    from ditlab.core.batch import Item, run_batch
    from ditlab.core.files import write_json

    if len(pairs) == 1:
        src, dst = pairs[0]
        figures = job(src, dst)
        typer.echo(f"wrote {dst}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        if json_path is not None:
            write_json(json_path, figures)
        return
    items = [Item(src.name, str(src), str(dst)) for src, dst in pairs]
    report = run_batch(items, lambda it: job(Path(it.input), Path(it.output)), pairs[0][1].parent, resume=False,
                       on_item=_echo)
    typer.echo(report.summary())
    if json_path is not None:
        write_json(json_path, {"ok": report.ok, "failed": report.failed, "manifest": report.manifest})
    raise typer.Exit(report.exit_code)


def _echo(rec: dict) -> None:
    status = "ok" if rec["status"] == "ok" else f"FAILED ({rec['error']})"
    typer.echo(f"{rec['id']}: {status} in {rec['seconds']:.1f} s")


def _scan_job(gen, task: str, sector: tuple[float, float], keep_every: int, seed: int, views: bool):
    """The per-file job of complete / densify: read, run, write atomically; the manifest figures."""
    from ditlab.vision3d.io import read_points, write_points

    def job(src: Path, dst: Path) -> dict:
        cloud = read_points(src)
        t0 = time.perf_counter()
        scan = gen.complete(cloud, sector, seed) if task == "complete" else gen.densify(cloud, keep_every, seed)
        out = scan.points
        write_points(dst, out)
        if views:
            _write_views(scan, dst)
        return {"input_points": len(cloud), "output_points": len(out), "generated_points": len(scan.generated),
                "seconds": round(time.perf_counter() - t0, 2)}

    return job


def _write_views(scan, dst: Path) -> None:
    """<out>_bev.png and <out>_range.png next to a scan file."""
    import numpy as np
    from PIL import Image

    from ditlab.core.files import atomic_write
    from ditlab.vision3d.surfaces import bev_image, range_view_image

    pts = scan.points
    stem = str(dst)[: -len("".join(dst.suffixes))] if dst.suffixes else str(dst)
    for tag, img in (("bev", bev_image(pts.points, pts.intensity)), ("range", range_view_image(scan.depth))):
        atomic_write(Path(f"{stem}_{tag}.png"), lambda p, img=img: Image.fromarray(np.asarray(img)).save(p, "PNG"))


def _lidar(weights, steps, precision, threads, device):
    from ditlab.vision3d.pipeline import LidarGenerator

    precision = check_precision_option(precision)
    return LidarGenerator(weights, steps=steps, precision=precision, device=setup_run(threads, device))


@lidar_app.command("generate")
def lidar_generate(
    n: int = typer.Option(1, "-n", "--count", help="How many scans."),
    out: Path = typer.Option(..., "--out", help="Output folder (scan_<i>.<format>)."),
    fmt: str = typer.Option("bin", "--format", help="bin (KITTI) | pcd.bin (nuScenes) | ply | pcd | npy."),
    views: bool = typer.Option(False, "--views", help="Also write bird's-eye and range-view PNGs."),
    steps: int = STEPS_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Generate 64-beam LiDAR scans of street scenes (the sensor of the network's config, KITTI-like)."""
    from ditlab.core.files import write_json
    from ditlab.vision3d.io import write_points

    fmt = _check_format(fmt, SCAN_FORMATS)
    gen = _lidar(weights, steps, precision, threads, device)
    t0 = time.perf_counter()
    with typer.progressbar(length=n, label=f"{n} scans") as bar:
        scans = gen.generate(n, seed, progress=lambda done, total: bar.update(done - bar.pos))
    files = []
    for i, scan in enumerate(scans):
        dst = out / f"scan_{i:03d}.{fmt}"
        write_points(dst, scan.points)
        if views:
            _write_views(scan, dst)
        files.append(str(dst))
    seconds = time.perf_counter() - t0
    typer.echo(f"wrote {n} scans to {out} in {seconds:.1f} s")
    if json_path is not None:
        write_json(json_path, {"count": n, "seconds": seconds, "files": files})


SECTOR_OPT = typer.Option((135.0, 225.0), "--sector", help="START END: the azimuth sector to generate, degrees "
                          "counter-clockwise from straight ahead (0 = +x, 90 = left).")


@lidar_app.command("complete")
def lidar_complete(
    inputs: list[Path] = typer.Argument(..., help="Scans (.bin KITTI, .pcd.bin nuScenes, .ply, .pcd, .xyz, .npy)."),
    out: Path = typer.Option(..., "--out", help="Output file (one input) or folder (<stem>_completed.<format>)."),
    sector: tuple[float, float] = SECTOR_OPT,
    fmt: str = typer.Option("bin", "--format", help="Output format when OUT is a folder."),
    views: bool = typer.Option(False, "--views", help="Also write bird's-eye and range-view PNGs."),
    steps: int = STEPS_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Regenerate an azimuth sector of each scan around the rest (the input's other points are kept as they are)."""
    from ditlab.vision3d.pipeline import sector_columns

    sector_columns(8, *sector)  # a bad sector exits 2 before any work
    pairs = _outputs(inputs, out, "completed", _check_format(fmt, SCAN_FORMATS))
    gen = _lidar(weights, steps, precision, threads, device)
    _run(pairs, _scan_job(gen, "complete", sector, 4, seed, views), json_path)


@lidar_app.command("densify")
def lidar_densify(
    inputs: list[Path] = typer.Argument(..., help="Sparse scans whose beams are every 4th beam of a 64-beam sensor."),
    out: Path = typer.Option(..., "--out", help="Output file (one input) or folder (<stem>_dense.<format>)."),
    keep_every: int = typer.Option(4, "--keep-every", help="The input has every N-th beam (4: 16 of 64)."),
    fmt: str = typer.Option("bin", "--format", help="Output format when OUT is a folder."),
    views: bool = typer.Option(False, "--views", help="Also write bird's-eye and range-view PNGs."),
    steps: int = STEPS_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Densify sparse scans (16 -> 64 beams by default): the beams between the input's are generated."""
    pairs = _outputs(inputs, out, "dense", _check_format(fmt, SCAN_FORMATS))
    gen = _lidar(weights, steps, precision, threads, device)
    _run(pairs, _scan_job(gen, "densify", (0.0, 1.0), keep_every, seed, views), json_path)


def _mesh_job(method: str):
    from ditlab.vision3d.io import read_points

    def job(src: Path, dst: Path) -> dict:
        from ditlab.vision3d.surfaces import reconstruct, write_mesh

        cloud = read_points(src)
        surface = reconstruct(cloud.points, method)
        write_mesh(dst, surface.mesh)
        return {"points": len(cloud), "triangles": len(surface.mesh.triangles), "method": surface.method_used,
                "note": surface.note}

    return job


@app.command()
def mesh(
    inputs: list[Path] = typer.Argument(..., help="Point-cloud files (.ply, .pcd, .xyz, .npy, .bin)."),
    out: Path = typer.Option(..., "--out", help="Output mesh (one input) or folder (<stem>.glb)."),
    method: str = typer.Option("poisson", "--method", help="poisson | ball_pivoting (then the other, then the "
                               "convex hull)."),
    json_path: Path = JSON_OPT,
) -> None:
    """Build a surface through each point cloud and write it as a mesh (.glb, .obj, .ply, .stl)."""
    from ditlab.core.files import safe_stem
    from ditlab.vision3d.io import FORMATS
    from ditlab.vision3d.surfaces import MESH_SUFFIXES, METHODS

    if method not in METHODS:
        raise UsageError(f"--method must be one of {METHODS}, got {method!r}")
    if not inputs:
        raise UsageError("give at least one input file")
    if len(inputs) == 1 and out.suffix.lower() in MESH_SUFFIXES:
        pairs = [(inputs[0], out)]
    elif out.suffix:
        raise UsageError(f"--out must be a mesh file ({', '.join(MESH_SUFFIXES)}) for one input, or a folder")
    else:
        pairs = [(p, out / f"{safe_stem(p.name, FORMATS)}.glb") for p in inputs]
    _run(pairs, _mesh_job(method), json_path)


BATCH_TASKS = ("mesh", "complete", "densify")


@app.command()
def batch(
    in_dir: Path = typer.Argument(..., help="Folder of point-cloud files or scans."),
    out_dir: Path = typer.Argument(..., help="Folder for the results and manifest.jsonl."),
    task: str = typer.Option("mesh", "--task", help="mesh (a GLB per cloud) | complete | densify (scans)."),
    sector: tuple[float, float] = SECTOR_OPT,
    fmt: str = typer.Option("bin", "--format", help="Scan output format (complete, densify)."),
    method: str = typer.Option("poisson", "--method", help="Surface method (mesh)."),
    steps: int = STEPS_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT,
    engine: str = typer.Option("local", help="local | ray"),
    resume: bool = typer.Option(True, help="Skip inputs already done according to the manifest."),
) -> None:
    """Run a task over every file of a folder; a failing file is recorded in the manifest and the batch goes on."""
    from ditlab.core.batch import items_from_folder, run_batch
    from ditlab.core.files import safe_stem
    from ditlab.vision3d.io import FORMATS
    from ditlab.vision3d.pipeline import sector_columns

    if task not in BATCH_TASKS:
        raise UsageError(f"--task must be one of {BATCH_TASKS}, got {task!r}")
    if task == "mesh":
        job = _mesh_job(method)
        name = lambda p: f"{safe_stem(p.name, FORMATS)}.glb"  # noqa: E731
    else:
        fmt = _check_format(fmt, SCAN_FORMATS)
        sector_columns(8, *sector)
        job = _scan_job(_lidar(weights, steps, precision, threads, device), task, sector, 4, seed, False)
        tag = "completed" if task == "complete" else "dense"
        name = lambda p: f"{safe_stem(p.name, FORMATS)}_{tag}.{fmt}"  # noqa: E731
    items = items_from_folder(in_dir, out_dir, FORMATS, name)
    report = run_batch(items, lambda it: job(Path(it.input), Path(it.output)), out_dir, engine=engine,
                       resume=resume, on_item=_echo)
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)


@app.command()
def benchmark(
    quick: bool = typer.Option(False, help="16 shapes per class and fewer scans (minutes)."),
    json_path: Path = JSON_OPT,
    threads: int = THREADS_OPT,
    only: str = typer.Option(None, "--only", help="Some parts, comma-separated: shapes, lidar, speed."),
) -> None:
    """Shape metrics (1-NNA, COV, MMD with CD and EMD, JSD; both normalisations) against the PointNet baseline,
    LiDAR generation / completion / densification against baselines, and speed, with the issue's goals."""
    from ditlab.vision3d.bench import run_benchmark

    run_benchmark(quick=quick, json_path=json_path, threads=threads, only=only)


@app.command()
def train(
    name: str = typer.Argument(..., help="shape-dit | shape-pointnet | lidar-dit | lidar-pointnet"),
    steps: int = typer.Option(..., help="Total optimizer steps to reach (a resumed run continues to this)."),
    seconds: float = typer.Option(None, help="Stop once the run has trained this long in all (the same-budget "
                                  "baselines: the DiT run's elapsed_s)."),
    out: Path = typer.Option(None, help="Run folder (checkpoint + log; resumed). Default ~/.cache/ditlab/<name>."),
    threads: int = typer.Option(2, "--threads", min=0, help="torch CPU threads (0: torch's default)."),
    resume_file: Path = typer.Option(None, help="A resume file to start from (default: "
                                     "training/<name>.resume.safetensors of this checkout, when there)."),
    export: bool = typer.Option(False, help="Afterwards pack weights + EMA (fp16) into the resume file."),
    package: bool = typer.Option(False, help="Afterwards write the EMA weights as the packaged network."),
    init_from: str = typer.Option(None, help="Start a new run from these trained weights (a packaged name or a "
                                  "folder) instead of from scratch."),
) -> None:
    """Train a network with the shipped recipe (resumable; see ditlab.vision3d.train)."""
    from ditlab.core.training import export_run
    from ditlab.vision3d import train as recipe

    recipe.spec(name)
    run_training(lambda o, n, **kw: recipe.train(name, o, n, init_from=init_from, **kw), steps,
                 out or Path.home() / ".cache/ditlab" / name,
                 threads, export=(lambda o: export_run(name, o)) if export else None,
                 package=(lambda o: recipe.package_run(name, o)) if package else None,
                 resume_file=resume_file, seconds=seconds)
