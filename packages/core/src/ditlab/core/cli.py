"""`ditlab`: the command-line root. Verticals plug in sub-apps through the entry-point group
`ditlab.commands` (name -> a `typer.Typer`); `core` is one of them.

The kit every vertical's CLI uses: the shared options (`JSON_OPT`, `THREADS_OPT`, `SEED_OPT`, `CACHE_OPT`,
`WEIGHTS_OPT`, `DEVICE_OPT`), `setup_run` (threads and device from them), `cache_policy` (a named, tuned policy of
`ditlab.core.accel`) and `run_training` (the body of a vertical's resumable `train` command). Errors: an
`InputError` (or a missing file) prints one line and exits 2; any other exception is a bug and exits 1 as an
internal error, with its traceback under `ditlab --debug`.
"""

from __future__ import annotations

import os
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

import typer

from ditlab.core.errors import UsageError, is_input_error

app = typer.Typer(name="ditlab", help="ditlab: one diffusion-transformer engine, five domains.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
_STATE = {"debug": bool(os.environ.get("DITLAB_DEBUG"))}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="On an internal error, print its traceback.")) -> None:
    _STATE["debug"] = _STATE["debug"] or debug


# ----------------------------------------------------------------------------------------------
# Shared options: one name and one meaning in every vertical
# ----------------------------------------------------------------------------------------------

JSON_OPT = typer.Option(None, "--json", help="Also write the results as JSON here (atomically).")
THREADS_OPT = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: torch's default).")
SEED_OPT = typer.Option(0, "--seed", help="Seed of every random draw (noise, sampling, masks).")
CACHE_OPT = typer.Option("none", "--cache", help="Feature cache for the DiT: a named, tuned policy of "
                         "ditlab.core.accel (none | fora | taylorseer | delta-dit | first-block | ras).")
WEIGHTS_OPT = typer.Option(None, "--weights", help="A weights folder (config.json + model.safetensors) to use "
                           "instead of the packaged model.")
DEVICE_OPT = typer.Option("auto", "--device", help="cpu | cuda | cuda:N | auto (CUDA when available).")
PRECISION_OPT = typer.Option(None, "--precision", help="How the DiT computes: auto (default: the mode calibrated "
                             "fastest on this machine within its error bound; `ditlab core info` shows it) | fp32 | "
                             "fp32+compile | bf16 | bf16+compile | int8 | int8+compile | fp8+compile.")


def setup_run(threads: int = 0, device: str = "auto"):
    """Apply --threads and resolve --device: the `torch.device` to run on (a clear error for a CUDA device that
    is not there)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    return dev


def check_precision_option(precision: str | None) -> str | None:
    """--precision checked up front (an unknown name exits 2 before any work); None stays None (the default)."""
    from ditlab.core.accel.auto import check_precision

    return None if precision is None else check_precision(precision)


def cache_policy(name: str):
    """--cache NAME -> a fresh tuned policy from core (`accel.policy`), or None for "none"."""
    from ditlab.core.accel import policy

    return None if name == "none" else policy(name)
def run_training(train, steps: int, out: Path, threads: int = 1, export=None, package=None, **kwargs) -> dict:
    """The body of every vertical's `train` command: set `threads`, run `train(out, steps, **kwargs)` (a
    resumable recipe; its report dict is echoed as JSON), then, when given, `export(out)` (the path of the packed
    resume file) and `package(out)` (a dict: where the packaged network went and what validation chose)."""
    import json

    import torch

    if threads:
        torch.set_num_threads(threads)
    report = train(Path(out), steps, **kwargs)
    typer.echo(json.dumps(report))
    if export is not None:
        typer.echo(f"exported {export(Path(out))}")
    if package is not None:
        typer.echo(json.dumps(package(Path(out))))
    return report


core_app = typer.Typer(name="core", help="The DiT engine: demo model, sampling, benchmarks.",
                       no_args_is_help=True, add_completion=False)


@core_app.command("demo-train")
def demo_train(
    out: Path = typer.Option(None, help="Weights folder to write (default: the packaged demo-shapes folder)."),
    steps: int = typer.Option(None, help="Training steps (default: the shipped recipe)."),
    seed: int = SEED_OPT,
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
    seed: int = SEED_OPT,
    weights: Path = WEIGHTS_OPT,
    precision: str = PRECISION_OPT,
) -> None:
    """Sample the demo model into a PNG grid."""
    from ditlab.core import demo

    if out.suffix.lower() != ".png":
        raise UsageError(f"expected a .png output path, got {out}")
    precision = check_precision_option(precision)
    demo.write_grid(out, demo.sample_demo(per_class=per_class, steps=steps, guidance=guidance, seed=seed,
                                          weights=weights, precision=precision))
    typer.echo(f"wrote {out}")


@core_app.command("info")
def info(
    weights: Path = typer.Option(None, "--weights", help="A DiT weights folder to calibrate instead of the packaged "
                                 "shapes32 benchmark model."),
    model: str = typer.Option("shapes32", "--model", help="A packaged model: shapes32 | demo."),
    batch: int = typer.Option(16, "--batch", min=1, max=1024, help="Batch of the calibration call."),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="Measure again instead of reading the cached "
                                     "choice."),
    threads: int = THREADS_OPT,
    device: str = DEVICE_OPT,
    json_path: Path = JSON_OPT,
) -> None:
    """What this machine can run (fp32, bf16, int8, fp8, compile) and which mode precision="auto" would choose for
    a model, and why: the calibration table (time per call, error against fp32)."""
    from ditlab.core.accel import auto
    from ditlab.core.bench.harness import machine, machine_line
    from ditlab.core.files import write_json
    from ditlab.core.models import DiT
    from ditlab.core.weights import load_model

    dev = setup_run(threads, device)
    if weights is None and model not in ("shapes32", "demo"):
        raise UsageError(f"--model must be shapes32 or demo, got {model!r} (or give --weights FOLDER)")
    name = str(weights) if weights is not None else model
    net = load_model(DiT, weights if weights is not None else {"shapes32": "shapes32", "demo": "demo-shapes"}[model],
                     device=dev).eval()
    typer.echo(f"machine: {machine_line(machine(dev))}")
    typer.echo(f"modes on {dev}:")
    for mode, missing in auto.available(dev).items():
        typer.echo(f"  {mode:13s} {'yes' if missing is None else 'no: ' + missing}")
    probe = auto.default_probe(net, batch)
    choice = auto.choose(net, probe, recalibrate=recalibrate, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"\nmodel {name}, calibration call {probe.signature} ({choice.source}; bound: SNR >= "
               f"{choice.min_snr_db:g} dB against fp32 eager, the worst of {len(auto.PROBE_TIMES)} noise levels)")
    typer.echo(choice.table())
    typer.echo(f"\nprecision=\"auto\" chooses {choice.mode}: {choice.reason}")
    typer.echo(f"(cached in {auto.cache_dir() / (choice.key + '.json')})")
    if json_path is not None:
        write_json(json_path, {"model": name, "machine": machine(dev), "probe": probe.signature, **choice.to_dict()})


@core_app.command("benchmark")
def benchmark(
    quick: bool = typer.Option(False, help="Smaller sizes and fewer repeats (a minute or two)."),
    json_path: Path = JSON_OPT,
    threads: int = THREADS_OPT,
    accel: bool = typer.Option(False, "--accel", help="Benchmark caches, RAS and precision/compile instead "
                               "(against the uncached sample and diffusers' cache hooks)."),
    gpu: bool = typer.Option(False, "--gpu", help="With --accel: the CUDA tables (fused-kernel bandwidth, end-to-end "
                             "bf16 / compile / fp8 / cache speed-ups) instead of the CPU ones."),
    only: str = typer.Option(None, "--only", help="With --accel: one task only: caches | diffusers | precision | "
                             "ras."),
) -> None:
    """Our DiT against diffusers' DiTTransformer2DModel at the same size, in one process; with --accel, the
    sampling speed-ups and their quality cost."""
    if (gpu or only) and not accel:
        raise typer.BadParameter("--gpu and --only go with --accel")
    setup_run(threads)
    if accel:
        from ditlab.core.accel import bench as accel_bench

        accel_bench.main(quick=quick, json_path=json_path, gpu=gpu, only=only)
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
    """Entry point: usage errors exit 2 through click; bad input (`InputError`, a missing file) exits 2 with its
    one-line message; anything else is a bug: exit 1, the traceback under --debug."""
    _load_verticals()
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place that turns exceptions into exit codes
        if is_input_error(e):
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)
        if _STATE["debug"]:
            traceback.print_exc()
        typer.echo(f"internal error: {type(e).__name__}: {e} (a bug in ditlab, not in your input; "
                   "`ditlab --debug ...` prints the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
