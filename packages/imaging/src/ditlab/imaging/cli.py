"""`ditlab imaging`: upscale and restore image files (one, several or a folder), benchmark, train.

Bad inputs (not an image, truncated or empty files, zero-size images, above the pixel cap, a scale or task outside
the supported set, an output that is not .png/.tif/.jpg) raise core's `InputError` family (`ImageError` among them)
or FileNotFoundError: the `ditlab` root prints one line and exits 2. Outputs are written atomically: a failed run
leaves no file behind. With several inputs or a folder, a failing file is recorded in the manifest and the rest go
on (exit 1 if any failed). Options shared with every vertical come from `ditlab.core.cli`.
"""

from __future__ import annotations

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
from ditlab.imaging import __version__
from ditlab.imaging.superres import check_colour

app = typer.Typer(
    name="imaging",
    help="ditlab.imaging: super-resolution (x2, x4) and restoration (denoise, deblur, JPEG) of real images.",
    no_args_is_help=True,
    add_completion=False,
)

STEPS_OPT = typer.Option(None, "--steps", help="Sampling steps, 1 to 4 (default: the number the network's "
                         "validation chose, in its config).")
TILE_OPT = typer.Option(None, "--tile", help="Tile size in input pixels (default: the network's, 32).")
OVERLAP_OPT = typer.Option(None, "--overlap", help="Input pixels neighbouring tiles share (default: tile / 8).")
COLOUR_OPT = typer.Option("wavelet", "--colour", help="Colour fix against the input: wavelet | adain | none.")
FORMAT_OPT = typer.Option("png", "--format", help="Output format when OUT is a folder: png | tif | jpg.")


@app.command()
def info() -> None:
    """Print the package version, the tasks and the packaged networks."""
    from ditlab.core.weights import recorded_digests
    from ditlab.imaging.degrade import TASKS
    from ditlab.imaging.pipeline import DEGRADATIONS, SCALES

    typer.echo(f"ditlab-imaging {__version__}")
    typer.echo(f"upscale: x{', x'.join(map(str, SCALES))}, degradation {' | '.join(DEGRADATIONS)}; "
               f"restore: {' | '.join(TASKS)}")
    nets = recorded_digests("ditlab.imaging")
    typer.echo("networks: " + (", ".join(f"{k} (sha256 {v[:12]})" for k, v in sorted(nets.items())) or "none"))


def _outputs(inputs: list[Path], out: Path, tag: str, fmt: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs: OUT is a file for one input, else a folder (<stem>_<tag>.<fmt>)."""
    from ditlab.imaging.io import WRITE_SUFFIXES, output_name

    if fmt not in ("png", "tif", "tiff", "jpg", "jpeg"):
        raise UsageError(f"--format must be png, tif or jpg, got {fmt!r}")
    if not inputs:
        raise UsageError("give at least one input image")
    if len(inputs) == 1 and out.suffix.lower() in WRITE_SUFFIXES:
        return [(inputs[0], out)]
    if out.suffix and out.suffix.lower() not in WRITE_SUFFIXES or out.is_file():
        raise UsageError(f"--out must be an image file ({', '.join(WRITE_SUFFIXES)}) for one input, or a folder; "
                         f"got {out}")
    pairs = [(p, out / output_name(p, tag, f".{fmt}")) for p in inputs]
    names = [o for _, o in pairs]
    if len(set(names)) != len(names):
        raise UsageError("two inputs would write the same output name; give them different stems")
    return pairs


def _echo(rec: dict) -> None:
    """One line per finished item of a batch."""
    status = "ok" if rec["status"] == "ok" else f"FAILED ({rec['error']})"
    typer.echo(f"{rec['id']}: {status} in {rec['seconds']:.1f} s")


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
    out_dir = pairs[0][1].parent
    items = [Item(src.name, str(src), str(dst)) for src, dst in pairs]

    report = run_batch(items, lambda it: job(Path(it.input), Path(it.output)), out_dir, resume=False, on_item=_echo)
    typer.echo(report.summary())
    if json_path is not None:
        write_json(json_path, {"ok": report.ok, "failed": report.failed, "manifest": report.manifest})
    raise typer.Exit(report.exit_code)


def _enhancer(kind: str, weights, steps, tile, overlap, precision, seed, dev):
    from ditlab.imaging.pipeline import Enhancer

    enh = Enhancer(kind, weights=weights, steps=steps, tile=tile, overlap=overlap, precision=precision, seed=seed,
                   device=dev)
    typer.echo(f"{kind} network: {enh.prepared().line}", err=True)
    return enh


def _job(enh, fn, **kw):
    """The per-file job: read, run `fn`, write atomically; returns the manifest figures."""
    import time

    from ditlab.imaging.io import read_image, write_image

    def job(src: Path, dst: Path) -> dict:
        img = read_image(src)
        t0 = time.perf_counter()
        with typer.progressbar(length=1, label=src.name) as bar:
            def progress(i: int, n: int) -> None:
                bar.length = n
                bar.update(1)

            out = fn(img, enhancer=enh, progress=progress, **kw)
        write_image(dst, out)
        return {"input": f"{img.width}x{img.height}", "output": f"{out.width}x{out.height}",
                "seconds": round(time.perf_counter() - t0, 2), "bit_depth": out.bit_depth,
                "alpha": out.alpha is not None, "notes": "; ".join(out.notes)}

    return job


@app.command()
def upscale(
    inputs: list[Path] = typer.Argument(..., help="Image files (.png, .tif, .jpg, .bmp, .webp)."),
    out: Path = typer.Option(..., "--out", help="Output file (one input) or folder (<stem>_x<scale>.<format>)."),
    scale: int = typer.Option(4, "--scale", help="2 or 4."),
    degradation: str = typer.Option("real", "--degradation",
                                    help="What the input went through: real (unknown: blur, noise, JPEG) | bicubic."),
    steps: int = STEPS_OPT, tile: int = TILE_OPT, overlap: int = OVERLAP_OPT, colour: str = COLOUR_OPT,
    fmt: str = FORMAT_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Super-resolve images x2 or x4 with the SRDiT (tiled: any size; alpha and 16-bit kept)."""
    from ditlab.imaging import pipeline

    if scale not in pipeline.SCALES:
        raise UsageError(f"--scale must be one of {pipeline.SCALES}, got {scale}")
    if degradation not in pipeline.DEGRADATIONS:
        raise UsageError(f"--degradation must be one of {sorted(pipeline.DEGRADATIONS)}, got {degradation!r}")
    check_colour(colour)
    pairs = _outputs(inputs, out, f"x{scale}", fmt)
    precision = check_precision_option(precision)
    dev = setup_run(threads, device)
    enh = _enhancer("sr", weights, steps, tile, overlap, precision, seed, dev)
    _run(pairs, _job(enh, pipeline.upscale, scale=scale, degradation=degradation, colour=colour), json_path)


@app.command()
def restore(
    inputs: list[Path] = typer.Argument(..., help="Image files (.png, .tif, .jpg, .bmp, .webp)."),
    out: Path = typer.Option(..., "--out", help="Output file (one input) or folder (<stem>_<task>.<format>)."),
    task: str = typer.Option("denoise", "--task", help="denoise | deblur | jpeg"),
    steps: int = STEPS_OPT, tile: int = TILE_OPT, overlap: int = OVERLAP_OPT,
    colour: str = typer.Option("none", "--colour", help="Colour fix against the input: none | wavelet | adain."),
    fmt: str = FORMAT_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Restore images at their own size: remove noise, blur or JPEG artefacts."""
    from ditlab.imaging import pipeline
    from ditlab.imaging.degrade import TASKS

    if task not in TASKS:
        raise UsageError(f"--task must be one of {TASKS}, got {task!r}")
    check_colour(colour)
    pairs = _outputs(inputs, out, task, fmt)
    precision = check_precision_option(precision)
    dev = setup_run(threads, device)
    enh = _enhancer("restore", weights, steps, tile, overlap, precision, seed, dev)
    _run(pairs, _job(enh, pipeline.restore, task=task, colour=colour), json_path)


@app.command()
def batch(
    in_dir: Path = typer.Argument(..., help="Folder of images."),
    out_dir: Path = typer.Argument(..., help="Folder for the results and manifest.jsonl."),
    task: str = typer.Option("x4", "--task", help="x4 | x2 (upscale) | denoise | deblur | jpeg (restore)."),
    degradation: str = typer.Option("real", "--degradation", help="Upscaling: real | bicubic."),
    steps: int = STEPS_OPT, tile: int = TILE_OPT, overlap: int = OVERLAP_OPT,
    colour: str = typer.Option(None, "--colour", help="wavelet | adain | none (default: wavelet for upscaling, "
                               "none for restoration)."),
    fmt: str = FORMAT_OPT, weights: Path = WEIGHTS_OPT, seed: int = SEED_OPT, threads: int = THREADS_OPT,
    device: str = DEVICE_OPT, precision: str = PRECISION_OPT,
    engine: str = typer.Option("local", help="local | ray"),
    resume: bool = typer.Option(True, help="Skip inputs already done according to the manifest."),
) -> None:
    """Upscale or restore every image of a folder; a failing file is recorded in the manifest and the batch goes on."""
    from ditlab.core.batch import items_from_folder, run_batch
    from ditlab.imaging import pipeline
    from ditlab.imaging.degrade import TASKS
    from ditlab.imaging.io import IMAGE_SUFFIXES, output_name

    tasks = ("x4", "x2", *TASKS)
    if task not in tasks:
        raise UsageError(f"--task must be one of {tasks}, got {task!r}")
    if degradation not in pipeline.DEGRADATIONS:
        raise UsageError(f"--degradation must be one of {sorted(pipeline.DEGRADATIONS)}, got {degradation!r}")
    if fmt not in ("png", "tif", "tiff", "jpg", "jpeg"):
        raise UsageError(f"--format must be png, tif or jpg, got {fmt!r}")
    sr = task.startswith("x")
    colour = colour or ("wavelet" if sr else "none")
    check_colour(colour)
    precision = check_precision_option(precision)
    dev = setup_run(threads, device)
    items = items_from_folder(in_dir, out_dir, IMAGE_SUFFIXES, lambda p: output_name(p, task, f".{fmt}"))
    enh = _enhancer("sr" if sr else "restore", weights, steps, tile, overlap, precision, seed, dev)
    job = _job(enh, pipeline.upscale, scale=int(task[1:]), degradation=degradation, colour=colour) if sr else \
        _job(enh, pipeline.restore, task=task, colour=colour)

    report = run_batch(items, lambda it: job(Path(it.input), Path(it.output)), out_dir, engine=engine,
                       resume=resume, on_item=_echo)
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)


@app.command()
def benchmark(
    quick: bool = typer.Option(False, help="Fewer and smaller images (a few minutes)."),
    json_path: Path = JSON_OPT,
    threads: int = THREADS_OPT,
    only: str = typer.Option(None, "--only", help="Some parts, comma-separated: sr-bicubic, sr-real, restore, "
                             "tiling, speed."),
) -> None:
    """Quality against bicubic, Lanczos, classical pipelines and the same-budget CNN, tiling seams, speed and
    memory, with the issue's goals."""
    from ditlab.imaging.bench import run_benchmark

    run_benchmark(quick=quick, json_path=json_path, threads=threads, only=only)


@app.command()
def train(
    name: str = typer.Argument(..., help="sr-x4 | restore-x1 | edsr-x4"),
    steps: int = typer.Option(..., help="Total optimizer steps to reach (a resumed run continues to this)."),
    out: Path = typer.Option(None, help="Run folder (checkpoint + log; resumed). Default ~/.cache/ditlab/<name>."),
    threads: int = typer.Option(2, "--threads", min=0, help="torch CPU threads (0: torch's default)."),
    resume_file: Path = typer.Option(None, help="A resume file to start from when further along than OUT's "
                                     "checkpoint (default: training/<name>.resume.safetensors of this checkout)."),
    export: bool = typer.Option(False, help="Afterwards pack weights + EMA (fp16) into the resume file."),
    package: bool = typer.Option(False, help="Afterwards write the EMA weights as the packaged network."),
) -> None:
    """Train a network with the shipped recipe (resumable; see ditlab.imaging.train)."""
    from ditlab.core.training import export_run
    from ditlab.imaging import train as recipe

    recipe.spec(name)
    run_training(lambda o, n, **kw: recipe.train(name, o, n, **kw), steps, out or Path.home() / ".cache/ditlab" / name,
                 threads, export=(lambda o: export_run(name, o)) if export else None,
                 package=(lambda o: recipe.package_run(name, o)) if package else None,
                 resume_file=resume_file)
