"""`ditlab medical`: simulate acquisitions, reconstruct volumes (one or a folder), benchmark, train the prior.

Errors in the inputs (not a 3D volume, NaN voxels, unreadable files, wrong extensions, absurd sizes, views
outside [2, 720], acceleration < 1) raise core's `InputError` family (`VolumeError` among them) or
FileNotFoundError, which the `ditlab` root turns into one line and exit status 2; outputs are written atomically,
so a failed run leaves no file behind. Options shared with every vertical (--json, --threads, --seed, --cache,
--weights, --device) come from `ditlab.core.cli`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ditlab.core.cli import (
    CACHE_OPT,
    DEVICE_OPT,
    JSON_OPT,
    PRECISION_OPT,
    SEED_OPT,
    THREADS_OPT,
    WEIGHTS_OPT,
    cache_policy,
    check_precision_option,
    run_training,
    setup_run,
)
from ditlab.core.errors import UsageError
from ditlab.medical import __version__

app = typer.Typer(
    name="medical",
    help="ditlab.medical: 3D CT and MRI reconstruction with a DiT prior (NIfTI / DICOM in, NIfTI out).",
    no_args_is_help=True,
    add_completion=False,
)

def _acquisition(task: str, views: int, angles: str | None, accel: float, mask: str, geometry: str):
    from ditlab.medical.acquisition import Acquisition

    span = None
    if angles:
        try:
            span = tuple(float(v) for v in angles.split(","))
        except ValueError as e:
            raise UsageError(f"--angles must be 'START,END' in degrees (e.g. 0,90), got {angles!r}") from e
        if len(span) != 2:
            raise UsageError(f"--angles must be 'START,END' in degrees (e.g. 0,90), got {angles!r}")
    return Acquisition(task, views, span, accel, mask, geometry)


STEPS_HELP = "Steps per DiT run (NFE = steps x runs averaged; default: the tuned setting, NFE 30)."


SAFEGUARD_OPT = typer.Option(True, "--safeguard/--no-safeguard", help="Check each DiT slice against the "
                             "measurements and back off to TV where it is less consistent than the noise allows.")


def _settings(task: str, steps: int | None, safeguard: bool = True):
    """The tuned settings of `task`, with `steps` when given and the safeguard on or off; checked."""
    from ditlab.medical.reconstruct import defaults

    s = defaults(task) if steps is None else defaults(task).replace(steps=steps)
    s = s.replace(safeguard=safeguard)
    s.check()
    return s


def _check_out(out: Path) -> None:
    from ditlab.medical.io import NIFTI_SUFFIXES

    if not out.name.lower().endswith(NIFTI_SUFFIXES):
        raise UsageError(f"--out must end with .nii or .nii.gz, got {out}")


def _check_adapter(adapter: Path | None, weights: Path | None) -> None:
    """Refuse an adapter file that is missing, not an adapter, or made for another prior, before any volume is read."""
    if adapter is not None:
        from ditlab.medical.models import check_adapter

        check_adapter(adapter, weights)


def _figures(vol, truth, meas, res) -> dict:
    """The metrics of a reconstruction (against the truth when the input was a volume) and the safeguard's verdict."""
    from ditlab.medical.metrics import evaluate

    figures = evaluate(vol.data, truth, meas, res) if truth is not None else {"seconds": res.seconds,
                                                                              "nfe": float(res.nfe)}
    if res.safeguard.status != "off":
        figures["safeguard"] = res.safeguard.status
        figures["safeguard_backed_off"] = res.safeguard.backed_off
        figures["safeguard_message"] = res.safeguard.message
    return figures


def _measure(path: Path, acq, noise: float, seed: int):
    """A measurement file as it is, or a volume measured with `acq`: (Measurement, ground truth or None)."""
    from ditlab.medical.io import load_measurement, load_volume
    from ditlab.medical.reconstruct import simulate_volume

    if path.suffix.lower() == ".npz":
        return load_measurement(path), None
    vol = load_volume(path)
    return simulate_volume(vol, acq, noise=noise, seed=seed), vol.data


ADAPTER_OPT = typer.Option(None, "--adapter", help="A fine-tuning adapter (.safetensors from `ditlab medical "
                           "finetune`) applied to the prior; one made for another prior is refused.")


class _Prior:
    """The packaged prior (or --weights, with --adapter), loaded once when a DiT method first needs it, computing
    in --precision (None: auto; the mode it runs is printed once)."""

    def __init__(self, weights: Path | None, seed: int, device: str = "auto", adapter: Path | None = None,
                 precision: str | None = None) -> None:
        self.weights, self.seed, self.device, self.adapter, self._prior = weights, seed, device, adapter, None
        self.precision = precision

    def __call__(self, method: str):
        from ditlab.medical.reconstruct import DIT_METHODS

        if method not in DIT_METHODS:
            return None
        if self._prior is None:
            import torch

            from ditlab.medical.models import SlicePrior, load_prior

            model = load_prior(self.weights, device=self.device, adapter=self.adapter)
            self._prior = SlicePrior(model, generator=torch.Generator().manual_seed(self.seed),
                                     precision=self.precision)
            typer.echo(f"prior: {self._prior.prepared(grad=method == 'dps').line}", err=True)
        return self._prior


@app.command()
def info() -> None:
    """Print the package version, the tasks and methods, and the packaged prior."""
    from ditlab.medical import METHODS, TASKS

    typer.echo(f"ditlab-medical {__version__}")
    typer.echo(f"tasks: {', '.join(TASKS)}; methods: {', '.join(METHODS)}")
    typer.echo("prior: packaged 'ct-prior' (see its model card: python -c \"import ditlab.medical, pathlib; "
               "print(pathlib.Path(ditlab.medical.__file__).parent / 'weights/ct-prior/README.md')\")")


TASK_OPT = typer.Option("sparse-view", help="sparse-view | limited-angle | mri")
VIEWS_OPT = typer.Option(8, help="CT views, 2 to 720.")
ANGLES_OPT = typer.Option(None, help="CT angular range 'START,END' in degrees (limited-angle default 0,90).")
ACCEL_OPT = typer.Option(4.0, help="MRI acceleration (>= 1).")
MASK_OPT = typer.Option("uniform1d", help="MRI mask: uniform1d | gaussian1d | random1d | uniform2d | ...")
GEOMETRY_OPT = typer.Option("parallel", help="CT geometry: parallel | fan")
NOISE_OPT = typer.Option(0.01, help="Measurement noise, relative to the RMS measurement.")


@app.command()
def simulate(
    volume: Path = typer.Argument(..., help="A NIfTI volume (.nii/.nii.gz) or a DICOM series folder, in HU."),
    out: Path = typer.Option(..., help="Measurement file to write (.npz)."),
    gt: Path = typer.Option(None, help="Ground-truth NIfTI to write (default: OUT with _gt.nii.gz)."),
    task: str = TASK_OPT, views: int = VIEWS_OPT, angles: str = ANGLES_OPT, accel: float = ACCEL_OPT,
    mask: str = MASK_OPT, geometry: str = GEOMETRY_OPT, noise: float = NOISE_OPT,
    seed: int = SEED_OPT,
) -> None:
    """Measure a volume: sinograms or k-space (simulated at 2x, with noise) + the ground truth volume."""
    from ditlab.medical.io import load_volume, save_measurement, save_volume
    from ditlab.medical.reconstruct import simulate_volume

    acq = _acquisition(task, views, angles, accel, mask, geometry)
    if out.suffix.lower() != ".npz":
        raise UsageError(f"--out must end with .npz, got {out}")
    gt = gt or out.with_name(out.name[:-4] + "_gt.nii.gz")
    _check_out(gt)
    vol = load_volume(volume)
    meas = simulate_volume(vol, acq, noise=noise, seed=seed)
    save_volume(vol, gt)
    save_measurement(meas, out)
    typer.echo(f"{acq.describe()} of {volume} ({'x'.join(map(str, vol.data.shape))}): wrote {out} "
               f"(measurements {tuple(meas.y.shape)}) and {gt}")


@app.command()
def reconstruct(
    source: Path = typer.Argument(..., help="A volume (.nii/.nii.gz or DICOM folder) to measure and reconstruct, "
                                   "or a measurement file (.npz) from `ditlab medical simulate`."),
    out: Path = typer.Option(..., help="Reconstruction to write (.nii/.nii.gz; same affine and orientation)."),
    method: str = typer.Option("dds", help="dds | dps | reddiff (DiT prior) | fbp | sirt | tv | tv3d"),
    task: str = TASK_OPT, views: int = VIEWS_OPT, angles: str = ANGLES_OPT, accel: float = ACCEL_OPT,
    mask: str = MASK_OPT, geometry: str = GEOMETRY_OPT, noise: float = NOISE_OPT,
    steps: int = typer.Option(None, help=STEPS_HELP), safeguard: bool = SAFEGUARD_OPT,
    cache: str = CACHE_OPT, weights: Path = WEIGHTS_OPT, adapter: Path = ADAPTER_OPT, seed: int = SEED_OPT,
    threads: int = THREADS_OPT, device: str = DEVICE_OPT, precision: str = PRECISION_OPT,
    metrics: Path = JSON_OPT,
) -> None:
    """Reconstruct one volume. A volume input is measured first (--task ...) and scored against itself. The DiT
    methods' result is checked against the measurements (the safeguard) and the verdict printed."""
    from ditlab.core.files import write_json
    from ditlab.medical.io import save_volume
    from ditlab.medical.reconstruct import reconstruct_volume

    _check_out(out)
    acq = _acquisition(task, views, angles, accel, mask, geometry)
    _settings(acq.task, steps)  # bad options fail before the volume is read
    policy = cache_policy(cache)
    precision = check_precision_option(precision)
    _check_adapter(adapter, weights)
    dev = setup_run(threads, device)
    meas, truth = _measure(source, acq, noise, seed)
    settings = _settings(meas.acquisition.task, steps, safeguard)  # a measurement file brings its own task
    with typer.progressbar(length=1, label=f"{method} on {meas.acquisition.describe()}") as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        prior = _Prior(weights, seed, dev, adapter, precision)(method)
        vol, res = reconstruct_volume(meas, method, settings, prior=prior,
                                      seed=seed, progress=progress, cache=policy)
    save_volume(vol, out)
    figures = _figures(vol, truth, meas, res)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, float)))
    if res.safeguard.status != "off":
        typer.echo(res.safeguard.message)
    if metrics is not None:
        write_json(metrics, figures)


@app.command()
def batch(
    in_dir: Path = typer.Argument(..., help="Folder of volumes (.nii/.nii.gz, DICOM series sub-folders) or .npz."),
    out_dir: Path = typer.Argument(..., help="Folder for <name>_<method>.nii.gz and manifest.jsonl."),
    method: str = typer.Option("dds", help="dds | dps | reddiff | fbp | sirt | tv | tv3d"),
    task: str = TASK_OPT, views: int = VIEWS_OPT, angles: str = ANGLES_OPT, accel: float = ACCEL_OPT,
    mask: str = MASK_OPT, geometry: str = GEOMETRY_OPT, noise: float = NOISE_OPT,
    steps: int = typer.Option(None, help=STEPS_HELP), safeguard: bool = SAFEGUARD_OPT,
    cache: str = CACHE_OPT, weights: Path = WEIGHTS_OPT, adapter: Path = ADAPTER_OPT, seed: int = SEED_OPT,
    threads: int = THREADS_OPT, device: str = DEVICE_OPT, precision: str = PRECISION_OPT,
    engine: str = typer.Option("local", help="local | ray"),
    resume: bool = typer.Option(True, help="Skip inputs already done according to the manifest."),
) -> None:
    """Reconstruct every volume of a folder; a failing file is recorded in the manifest and the batch goes on. The
    safeguard's verdict of each DiT reconstruction is printed and recorded in the manifest."""
    from ditlab.core.batch import items_from_folder, run_batch
    from ditlab.medical.io import MEASUREMENT_SUFFIX, NIFTI_SUFFIXES, save_volume, volume_stem
    from ditlab.medical.reconstruct import METHODS, reconstruct_volume

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; expected one of {METHODS}")
    acq = _acquisition(task, views, angles, accel, mask, geometry)
    _settings(acq.task, steps)
    cache_policy(cache)  # an unknown name fails before the first volume
    precision = check_precision_option(precision)
    _check_adapter(adapter, weights)
    dev = setup_run(threads, device)
    items = items_from_folder(in_dir, out_dir, (*NIFTI_SUFFIXES, MEASUREMENT_SUFFIX),
                              lambda p: f"{volume_stem(p)}_{method}.nii.gz", include_dirs=True)
    prior = _Prior(weights, seed, dev, adapter, precision)

    def predict(item) -> dict:
        meas, truth = _measure(Path(item.input), acq, noise, seed)
        vol, res = reconstruct_volume(meas, method, _settings(meas.acquisition.task, steps, safeguard),
                                      prior=prior(method),
                                      seed=seed, cache=cache_policy(cache))
        save_volume(vol, item.output)
        return _figures(vol, truth, meas, res)

    def echo(rec: dict) -> None:
        status = "ok" if rec["status"] == "ok" else f"FAILED ({rec['error']})"
        guard = f"; {rec['safeguard_message']}" if "safeguard_message" in rec else ""
        typer.echo(f"{rec['id']}: {status} in {rec['seconds']:.1f} s{guard}")

    report = run_batch(items, predict, out_dir, engine=engine, resume=resume, on_item=echo)
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)


@app.command()
def benchmark(
    quick: bool = typer.Option(False, help="64x64x32 volumes and fewer methods (a few minutes)."),
    json_path: Path = JSON_OPT,
    threads: int = THREADS_OPT,
    only: str = typer.Option(None, "--only", help="precision: only DDS in fp32, issue 11's default and auto."),
) -> None:
    """Reconstruction quality, time and memory of every method side by side, with the issue's goals."""
    from ditlab.medical.bench import run_benchmark

    run_benchmark(quick=quick, json_path=json_path, threads=threads, only=only)


@app.command()
def finetune(
    scans: Path = typer.Argument(..., help="Folder of your own reconstructed scans (.nii/.nii.gz files or DICOM "
                                 "series sub-folders), at least 2, in HU."),
    out: Path = typer.Option(..., help="Adapter file to write (.safetensors, a few hundred KB)."),
    steps: int = typer.Option(None, help="Optimizer steps (default: the recipe's 400; a resumed run continues)."),
    minutes: float = typer.Option(None, help="Stop after this many minutes of training (the adapter is written)."),
    weights: Path = WEIGHTS_OPT, threads: int = THREADS_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Fine-tune the CT prior on your own scans into a small adapter (resumable: rerun the same command).
    Use it with --adapter on `reconstruct` and `batch`."""
    from ditlab.core.files import write_json
    from ditlab.medical.finetune import RECIPE, load_scans
    from ditlab.medical.finetune import finetune as run

    if not out.name.endswith(".safetensors"):
        raise UsageError(f"--out must end with .safetensors, got {out}")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    if minutes is not None and minutes <= 0:
        raise UsageError(f"--minutes must be > 0, got {minutes}")
    setup_run(threads, "cpu")
    data = load_scans(scans)
    if data.resampled:
        typer.echo(f"resampled {len(data.resampled)} of {len(data.sources)} scans in-plane to {data.spacing:.3g} mm")
    total = steps or RECIPE.steps
    with typer.progressbar(length=total, label=f"fine-tuning on {len(data.sources)} scans ({data.n_slices} slices)") \
            as bar:
        def progress(step: int, _total: int, _loss: float) -> None:
            bar.update(step - bar.pos)

        report = run(data, out, steps=total, weights=weights, minutes=minutes, progress=progress)
    typer.echo(f"wrote {out}: {report['adapter_bytes'] / 1024:.0f} KB, {report['step']} steps in "
               f"{report['seconds']:.0f} s, loss {report['loss']:.4g}, for {report['base']} "
               f"(sha256 {report['base_sha256'][:12]})")
    if json_path is not None:
        write_json(json_path, report)


@app.command()
def train(
    out: Path = typer.Option(Path.home() / ".cache/ditlab/ct-prior", help="Run folder (checkpoint + log); resumed."),
    steps: int = typer.Option(..., help="Total optimizer steps to reach (a resumed run continues to this)."),
    threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads (0: torch's default)."),
    resume_file: Path = typer.Option(None, help="A resume file to start from when it is further along than OUT's "
                                     "checkpoint (default: training/ct-prior.resume.safetensors of this checkout, "
                                     "found from the working directory or $DITLAB_TRAINING_DIR)."),
    export: bool = typer.Option(False, help="Afterwards pack weights + EMA (fp16) into the resume file."),
    package: bool = typer.Option(False, help="Afterwards write the EMA weights as the packaged ct-prior."),
) -> None:
    """Train the CT slice prior with the shipped recipe (resumable; see ditlab.medical.train)."""
    from ditlab.medical import train as recipe

    run_training(recipe.train_prior, steps, out, threads, export=recipe.export_prior_resume if export else None,
                 package=recipe.package_prior if package else None, resume_file=resume_file)
