"""`ditlab`: the command-line root. Verticals plug in sub-apps through the entry-point group
`ditlab.commands` (name -> a `typer.Typer`); `core` is one of them."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import typer

app = typer.Typer(name="ditlab", help="ditlab: one diffusion-transformer engine, five domains.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
core_app = typer.Typer(name="core", help="The DiT engine: demo model, sampling, benchmarks.",
                       no_args_is_help=True, add_completion=False)


@core_app.command("demo-train")
def demo_train(
    out: Path = typer.Option(None, help="Weights folder to write (default: the packaged demo-shapes folder)."),
    steps: int = typer.Option(None, help="Training steps (default: the shipped recipe)."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and sampling."),
) -> None:
    """Train the tiny class-conditional demo DiT on synthetic 16x16 shapes and write its weights."""
    from ditlab.core import demo

    result = demo.train_demo(out=out, steps=steps, seed=seed)
    typer.echo(f"wrote {result['folder']} (sha256 {result['sha256']}); "
               f"class accuracy of samples {result['sample_accuracy']:.3f}")


@core_app.command("sample")
def sample_cmd(
    out: Path = typer.Argument(..., help="PNG file to write: a grid, one row per class."),
    per_class: int = typer.Option(8, min=1, max=64, help="Samples per class."),
    steps: int = typer.Option(25, min=1, max=1000, help="Sampler steps."),
    guidance: float = typer.Option(2.0, min=0.0, help="Classifier-free guidance scale (1 = off)."),
    seed: int = typer.Option(0),
    checkpoint: Path = typer.Option(None, help="A weights folder to use instead of the packaged demo model."),
) -> None:
    """Sample the demo model into a PNG grid."""
    from ditlab.core import demo

    if out.suffix.lower() != ".png":
        raise ValueError(f"expected a .png output path, got {out}")
    demo.write_grid(out, demo.sample_demo(per_class=per_class, steps=steps, guidance=guidance, seed=seed,
                                          weights=checkpoint))
    typer.echo(f"wrote {out}")


@core_app.command("benchmark")
def benchmark(
    quick: bool = typer.Option(False, help="Smaller sizes and fewer repeats (a minute or two)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the results as JSON here."),
    accel: bool = typer.Option(False, "--accel", help="Benchmark caches, RAS and precision/compile instead "
                               "(against the uncached sample and diffusers' cache hooks)."),
    gpu: bool = typer.Option(False, "--gpu", help="With --accel: the CUDA tables (fused-kernel bandwidth, end-to-end "
                             "bf16 / compile / fp8 / cache speed-ups) instead of the CPU ones."),
) -> None:
    """Our DiT against diffusers' DiTTransformer2DModel at the same size, in one process; with --accel, the
    sampling speed-ups and their quality cost."""
    if gpu and not accel:
        raise typer.BadParameter("--gpu goes with --accel")
    if accel:
        from ditlab.core.accel import bench as accel_bench

        accel_bench.main(quick=quick, json_path=json_path, gpu=gpu)
        return
    from ditlab.core import bench

    bench.main(quick=quick, json_path=json_path)


app.add_typer(core_app, name="core")


def _load_verticals() -> None:
    for ep in entry_points(group="ditlab.commands"):
        if ep.name == "core":
            continue
        try:
            sub = ep.load()
        except Exception as e:  # a broken vertical must not take the whole CLI down
            typer.echo(f"warning: ditlab {ep.name} is unavailable: {e}", err=True)
            continue
        app.add_typer(sub, name=ep.name)


def main() -> None:
    """Entry point: usage errors exit 2 through click; bad input raised by ditlab exits 2 with its message."""
    _load_verticals()
    try:
        app()
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        typer.echo(f"error: {str(e).strip(chr(39))}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
