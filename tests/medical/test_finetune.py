"""Fine-tuning the CT prior on a user's scans: checked inputs, a small adapter for the packaged prior, resumed runs,
adapters of other priors refused, and `ditlab medical finetune` / `--adapter` / the safeguard on the command line."""

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ditlab.medical.finetune as ft
from ditlab.core.errors import InputError
from ditlab.core.training.peft import apply_peft, read_adapter_meta, save_adapter
from ditlab.core.weights import save_model
from ditlab.medical.families import SPLITS, family_affine, make_volume
from ditlab.medical.finetune import finetune, load_scans, prepare_scans, run_folder, scan_paths
from ditlab.medical.io import Volume, VolumeError, save_volume, spacing_of
from ditlab.medical.models import PRIOR_NAME, TILE, load_prior, prior_identity, prior_model

DITLAB = [sys.executable, "-c", "import torch; torch.set_num_threads(1); from ditlab.core.cli import main; main()"]
USER = SPLITS["user"]  # seeds standing in for a user's own scans
FAST = {"steps": 2, "batch": 2}


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*DITLAB, "medical", *map(str, args)], capture_output=True, text=True, timeout=300)


def volume(seed: int, shape=(64, 64, 8), spacing=(1.0, 1.0, 2.0), family: str = "head") -> Volume:
    """A user-like scan in HU, with the family's affine at `spacing` mm."""
    affine = family_affine(family, shape, seed, spacing)
    return Volume(make_volume(family, shape, seed), affine, spacing_of(affine), source=f"{family}-{seed}")


def write_scans(folder: Path, *volumes: Volume) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in enumerate(volumes):
        save_volume(v, folder / f"scan{k}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def scans_dir(tmp_path_factory):
    return write_scans(tmp_path_factory.mktemp("scans"), volume(USER), volume(USER + 1))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """Two 32 x 32 x 8 scans: what the CLI reconstructs quickly (the prior pads them to its 64-pixel window)."""
    return write_scans(tmp_path_factory.mktemp("small"), volume(USER, (32, 32, 8)), volume(USER + 1, (32, 32, 8)))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, scans_dir):
    """An adapter of the packaged prior, fine-tuned with a large step and no EMA so that it changes the prior (the
    EMA copy, decay 0.99, barely moves in 2 steps)."""
    path = tmp_path_factory.mktemp("adapter") / "head.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `one_thread` does for each test: a module fixture runs outside it
    try:
        report = finetune(scans_dir, path, **FAST, lr=0.05, warmup=0, ema_decay=0)
    finally:
        torch.set_num_threads(threads)
    assert report["finished"] and report["step"] == 2
    return path


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory):
    """An adapter of the packaged architecture whose metadata names another prior."""
    path = tmp_path_factory.mktemp("foreign") / "other.safetensors"
    save_adapter(apply_peft(prior_model(), ft.PEFT), path, base_digest="0" * 64, base_name="other-prior")
    return path


# ----------------------------------------------------------------------------------------------
# The scans: what is refused, what is resampled
# ----------------------------------------------------------------------------------------------

def test_an_empty_folder_is_refused_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("not a scan")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path} holds no scans; expected at least 2 volumes")):
        scan_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder of scans"):
        scan_paths(tmp_path / "missing")


def test_one_volume_is_not_enough(tmp_path):
    folder = write_scans(tmp_path / "one", volume(USER))
    with pytest.raises(InputError, match="at least 2 volumes, got 1"):
        load_scans(folder)
    with pytest.raises(InputError, match="at least 2 volumes, got 1"):
        finetune(folder, tmp_path / "a.safetensors", **FAST)
    assert not (tmp_path / "a.safetensors").exists() and not run_folder(tmp_path / "a.safetensors").exists()


def test_nan_voxels_are_refused(tmp_path):
    bad = volume(USER + 1)
    bad.data = bad.data.copy()
    bad.data[3, 4, 5] = np.nan
    bad.source = "nan-scan"
    with pytest.raises(InputError, match="nan-scan: non-finite voxels"):
        prepare_scans([volume(USER), bad])
    folder = write_scans(tmp_path / "scans", volume(USER))  # on disk: load_volume refuses it first
    nib.save(nib.Nifti1Image(bad.data, bad.affine), folder / "nan.nii.gz")
    with pytest.raises(VolumeError, match="nan.nii.gz: 1 voxels are NaN or Inf"):
        load_scans(folder)


def test_mixed_inplane_spacings_are_resampled_to_the_finest(tmp_path):
    folder = write_scans(tmp_path, volume(USER), volume(USER + 1, spacing=(1.03, 1.03, 2.0)),
                         volume(USER + 2, spacing=(2.0, 2.0, 2.0)))
    scans = load_scans(folder)
    assert scans.spacing == pytest.approx(1.0)
    assert scans.resampled == [str(folder / "scan2.nii.gz")]  # within the 5% tolerance: left as it is
    assert [s.shape[1:] for s in scans.slices] == [(64, 64), (64, 64), (128, 128)]
    assert all(s.dtype == np.float32 and -1 <= s.min() and s.max() <= 1 for s in scans.slices)


def test_mixed_shapes_are_accepted_and_small_slices_padded(tmp_path):
    scans = prepare_scans([volume(USER, (96, 80, 10)), volume(USER + 1, (32, 40, 8))])
    assert [s.shape[1:] for s in scans.slices] == [(96, 80), (TILE, TILE)]
    small = scans.slices[1]
    assert np.allclose(small[:, :16], -1) and np.allclose(small[:, :, :12], -1)  # padded with air, centred
    report = finetune(scans, tmp_path / "a.safetensors", **FAST)
    assert report["finished"] and report["volumes"] == 2 and report["slices"] == scans.n_slices


def test_an_adapter_path_must_end_with_safetensors(tmp_path, scans_dir):
    with pytest.raises(InputError, match=r"must end with \.safetensors"):
        finetune(scans_dir, tmp_path / "adapter.pt", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_zero_steps_are_refused(tmp_path, scans_dir, monkeypatch):
    monkeypatch.setattr(ft, "RECIPE", replace(ft.RECIPE, steps=1, batch=2))  # were 0 taken as "not given": 1 step
    with pytest.raises(InputError, match="steps must be >= 1"):
        finetune(scans_dir, tmp_path / "a.safetensors", steps=0)


# ----------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------

def test_a_short_finetune_writes_a_small_adapter_of_the_packaged_prior(tmp_path, scans_dir):
    path = tmp_path / "a.safetensors"
    steps = []
    report = finetune(scans_dir, path, **FAST, progress=lambda step, total, loss: steps.append((step, total)))
    assert steps == [(1, 2), (2, 2)]
    assert path.is_file() and path.stat().st_size < 2**20 and report["adapter_bytes"] == path.stat().st_size
    assert not run_folder(path).exists()  # the run folder goes once the adapter is written
    meta = read_adapter_meta(path)
    assert (meta["base_name"], meta["base_sha256"]) == (PRIOR_NAME, prior_identity()[1])
    assert meta["config"] == ft.PEFT
    assert 0 < report["trainable_params"] < 0.1 * report["params"]
    assert np.isfinite(report["loss"]) and report["volumes"] == 2 and report["slices"] == 16


def test_the_adapter_changes_the_prior(adapter):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 1, TILE, TILE, generator=g), torch.rand(2, generator=g)
    base, tuned = load_prior(), load_prior(adapter=adapter)
    assert type(tuned) is type(base) and not hasattr(tuned, "ditlab_peft")  # merged: a plain DiT
    with torch.no_grad():
        a, b = base(x, t), tuned(x, t)
    assert torch.isfinite(b).all()
    assert not torch.allclose(a, b, atol=1e-3)


def test_a_time_budget_stops_early_writes_the_adapter_and_the_same_call_goes_on(tmp_path, scans_dir):
    path = tmp_path / "a.safetensors"
    report = finetune(scans_dir, path, steps=3, batch=2, minutes=1e-9, checkpoint_every=1)
    assert report["step"] == 1 and not report["finished"]
    assert read_adapter_meta(path)["base_name"] == PRIOR_NAME
    assert run_folder(path).is_dir()  # kept: the budget ended this call, not the run
    report = finetune(scans_dir, path, steps=3, batch=2, checkpoint_every=1)
    assert report["step"] == 3 and report["finished"] and not run_folder(path).exists()


# ----------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------

def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, scans_dir):
    path, scans = tmp_path / "a.safetensors", load_scans(scans_dir)
    resume = {"steps": 3, "batch": 2, "checkpoint_every": 1}

    def interrupt(step, total, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(scans, path, progress=interrupt, **resume)
    run_dir = run_folder(path)
    assert run_dir == tmp_path / "a.safetensors.run"
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not path.exists()

    seen = []
    report = finetune(scans, path, progress=lambda step, total, loss: seen.append((step, total)), **resume)
    assert seen == [(3, 3)]  # goes on from step 2
    assert report["step"] == 3 and report["finished"]
    assert path.is_file() and not run_dir.exists()


def test_a_leftover_run_on_other_scans_is_refused(tmp_path, scans_dir):
    path = tmp_path / "a.safetensors"

    def interrupt(step, total, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(scans_dir, path, progress=interrupt, steps=3, batch=2, checkpoint_every=1)
    others = prepare_scans([volume(USER + 2), volume(USER + 3)])
    with pytest.raises(InputError, match=r"a\.safetensors\.run holds a fine-tuning run started on other scans"):
        finetune(others, path, steps=3, batch=2, checkpoint_every=1)
    assert not path.exists() and (run_folder(path) / "checkpoint" / "state.json").is_file()  # left for its owner


# ----------------------------------------------------------------------------------------------
# Adapters of other priors
# ----------------------------------------------------------------------------------------------

def test_an_adapter_of_another_prior_is_refused_naming_both(foreign_adapter):
    with pytest.raises(InputError, match=r"belongs to the base 'other-prior' \(sha256 000000000000\), not to "
                                         r"'ct-prior'"):
        load_prior(adapter=foreign_adapter)


def test_the_packaged_priors_adapter_is_refused_on_other_weights(tmp_path):
    digest = save_model(prior_model(hidden=32, depth=2, heads=1), tmp_path / "small-prior")
    assert prior_identity(tmp_path / "small-prior") == (str(tmp_path / "small-prior"), digest)
    path = save_adapter(apply_peft(prior_model(hidden=32, depth=2, heads=1), ft.PEFT), tmp_path / "a.safetensors",
                        base_digest=prior_identity()[1], base_name=PRIOR_NAME)
    with pytest.raises(InputError, match=rf"'ct-prior'.*not to {re.escape(repr(str(tmp_path / 'small-prior')))} "
                                         rf"\(sha256 {digest[:12]}"):
        load_prior(tmp_path / "small-prior", adapter=path)
    assert not hasattr(load_prior(tmp_path / "small-prior"), "ditlab_peft")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

def test_cli_finetune_of_an_empty_folder_exits_2_without_an_adapter(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "a.safetensors"
    r = run("finetune", tmp_path / "empty", "--out", out, "--steps", 2)
    assert r.returncode == 2
    assert f"{tmp_path / 'empty'} holds no scans" in r.stderr
    assert not out.exists() and not run_folder(out).exists()


def test_cli_finetune_refuses_an_adapter_name_not_ending_in_safetensors(tmp_path, scans_dir):
    r = run("finetune", scans_dir, "--out", tmp_path / "a.pt", "--steps", 2)
    assert r.returncode == 2 and "--out must end with .safetensors" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_finetune_writes_the_adapter_and_says_what_it_resampled(tmp_path):
    scans = write_scans(tmp_path / "scans", volume(USER), volume(USER + 1, spacing=(2.0, 2.0, 2.0)))
    out, report = tmp_path / "a.safetensors", tmp_path / "report.json"
    r = run("finetune", scans, "--out", out, "--steps", 2, "--json", report)
    assert r.returncode == 0, r.stderr
    assert "resampled 1 of 2 scans in-plane to 1 mm" in r.stdout
    assert f"wrote {out}" in r.stdout and "for ct-prior" in r.stdout
    assert read_adapter_meta(out)["base_sha256"] == prior_identity()[1]
    figures = json.loads(report.read_text())
    assert figures["step"] == 2 and figures["resampled"] == [str(scans / "scan1.nii.gz")]
    assert not run_folder(out).exists()


@pytest.mark.parametrize("kind", ["foreign", "text", "other-weights"])
def test_cli_refuses_a_wrong_adapter_before_reading_the_volume(tmp_path, scans_dir, foreign_adapter, kind):
    out = tmp_path / "rec.nii.gz"
    extra = []
    if kind == "foreign":
        adapter, expected = foreign_adapter, ["'other-prior'", "'ct-prior'"]
    elif kind == "text":
        adapter, expected = tmp_path / "notes.safetensors", ["not a readable safetensors file"]
        adapter.write_text("not an adapter")
    else:  # the packaged prior's adapter with --weights of another prior
        save_model(prior_model(hidden=32, depth=2, heads=1), tmp_path / "small-prior")
        adapter = save_adapter(apply_peft(prior_model(hidden=32, depth=2, heads=1), ft.PEFT),
                               tmp_path / "a.safetensors", base_digest=prior_identity()[1], base_name=PRIOR_NAME)
        extra, expected = ["--weights", tmp_path / "small-prior"], ["'ct-prior'", str(tmp_path / "small-prior")]
    r = run("reconstruct", scans_dir / "scan0.nii.gz", "--out", out, "--method", "dds", "--steps", 2, "--adapter",
            adapter, *extra)
    assert r.returncode == 2, r.stderr
    assert all(e in r.stderr for e in expected), r.stderr
    assert not out.exists()


def test_cli_reconstruct_with_an_adapter_prints_the_safeguard(tmp_path, small_dir, adapter):
    out, metrics = tmp_path / "rec.nii.gz", tmp_path / "m.json"
    r = run("reconstruct", small_dir / "scan0.nii.gz", "--out", out, "--method", "dds", "--steps", 2, "--views", 16,
            "--adapter", adapter, "--json", metrics)
    assert r.returncode == 0, r.stderr
    guard = [ln for ln in r.stdout.splitlines() if ln.startswith("safeguard:")]
    assert len(guard) == 1 and ("passed" in guard[0] or "BACKED OFF" in guard[0])
    figures = json.loads(metrics.read_text())
    assert figures["safeguard"] in ("passed", "backed off") and figures["safeguard_message"] == guard[0]
    assert figures["nfe"] == 2 and nib.load(out).shape == (32, 32, 8)


def test_cli_reconstruct_with_a_classical_method_prints_no_safeguard(tmp_path, small_dir):
    out, metrics = tmp_path / "rec.nii.gz", tmp_path / "m.json"
    r = run("reconstruct", small_dir / "scan0.nii.gz", "--out", out, "--method", "fbp", "--views", 16, "--json",
            metrics)
    assert r.returncode == 0, r.stderr
    assert "safeguard" not in r.stdout and "safeguard" not in json.loads(metrics.read_text())


def test_cli_batch_records_the_safeguard_in_the_manifest(tmp_path, small_dir):
    out = tmp_path / "out"
    r = run("batch", small_dir, out, "--method", "dds", "--steps", 2, "--views", 16)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(ln["id"] for ln in lines) == ["scan0.nii.gz", "scan1.nii.gz"]
    for ln in lines:
        assert ln["status"] == "ok" and ln["safeguard"] in ("passed", "backed off")
        assert isinstance(ln["safeguard_backed_off"], int) and ln["safeguard_message"].startswith("safeguard:")
        assert (ln["safeguard"] == "passed") == (ln["safeguard_backed_off"] == 0)
        assert f"{ln['id']}: ok in" in r.stdout and ln["safeguard_message"] in r.stdout
