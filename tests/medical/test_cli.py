"""`ditlab medical`: simulate, reconstruct, batch from the command line; bad inputs exit 2 and write nothing."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from ditlab.medical.data import write_phantoms

DITLAB = [sys.executable, "-c", "import torch; torch.set_num_threads(1); from ditlab.core.cli import main; main()"]
FAST = ["--method", "tv"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*DITLAB, "medical", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    data = write_phantoms(folder, 1, (32, 32, 8), seed=7)[0]
    # store it the way scanners often do: LPS-ish axes flipped, so orientation must survive the round trip
    img = nib.load(data)
    flipped = nib.Nifti1Image(np.asarray(img.dataobj)[::-1, ::-1], img.affine @ np.array(
        [[-1, 0, 0, 31], [0, -1, 0, 31], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float))
    path = folder / "scan.nii.gz"
    nib.save(flipped, path)
    return path


def test_reconstruct_keeps_affine_orientation_and_hu(tmp_path, phantom):
    out, metrics = tmp_path / "rec.nii.gz", tmp_path / "m.json"
    r = run("reconstruct", phantom, "--out", out, "--views", 16, "--json", metrics, *FAST)
    assert r.returncode == 0, r.stderr
    src, rec = nib.load(phantom), nib.load(out)
    assert np.allclose(rec.affine, src.affine)
    assert nib.aff2axcodes(rec.affine) == nib.aff2axcodes(src.affine) == ("L", "P", "S")
    a, b = np.asarray(src.dataobj), np.asarray(rec.dataobj)
    assert b.shape == a.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95  # same voxels in the same places, in HU
    assert -1100 < b.min() and b.max() < 1100
    figures = json.loads(metrics.read_text())
    assert figures["psnr"] > 25 and {"psnr_axial", "psnr_coronal", "psnr_sagittal", "ssim", "residual"} <= set(figures)


def test_simulate_then_reconstruct_from_the_measurement_file(tmp_path, phantom):
    meas = tmp_path / "k.npz"
    r = run("simulate", phantom, "--out", meas, "--task", "mri", "--accel", 4)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k_gt.nii.gz").is_file()
    out = tmp_path / "rec.nii"
    r = run("reconstruct", meas, "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    assert np.allclose(nib.load(out).affine, nib.load(phantom).affine)


@pytest.mark.parametrize(("args", "message"), [
    (["--views", 1], "views must be an integer in [2, 720]"),
    (["--views", 100000], "views must be an integer in [2, 720], got 100000"),
    (["--task", "mri", "--accel", 0.5], "acceleration must be >= 1"),
    (["--task", "tomography"], "unknown task"),
    (["--method", "magic"], "unknown method"),
    (["--angles", "0"], "--angles must be"),
    (["--steps", 0, "--method", "dds"], "steps must be >= 1"),
    (["--cache", "lru"], "unknown cache policy"),
    (["--device", "tpu"], "--device must be"),
    (["--task", "mri", "--method", "fbp"], "fbp is a CT method"),
], ids=["views", "views-cap", "accel", "task", "method", "angles", "steps", "cache", "device", "fbp-mri"])
def test_bad_options_exit_2_without_output(tmp_path, phantom, args, message):
    out = tmp_path / "rec.nii.gz"
    r = run("reconstruct", phantom, "--out", out, *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), p / "a.nii.gz") or p / "a.nii.gz",
     "expected a 3D volume"),
    (lambda p: nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), p / "n.nii") or p / "n.nii",
     "NaN or Inf"),
    (lambda p: (p / "x.png").write_bytes(b"png") and p / "x.png", "unsupported file type"),
    (lambda p: p / "missing.nii.gz", "no such file"),
], ids=["2d", "nan", "extension", "missing"])
def test_bad_volumes_exit_2_without_output(tmp_path, make, message):
    out = tmp_path / "rec.nii.gz"
    r = run("reconstruct", make(tmp_path), "--out", out, *FAST)
    assert r.returncode == 2
    assert message in r.stderr
    assert not out.exists()


def test_bad_output_name(tmp_path, phantom):
    r = run("reconstruct", phantom, "--out", tmp_path / "rec.png", *FAST)
    assert r.returncode == 2 and "--out must end with .nii or .nii.gz" in r.stderr


def test_batch_records_the_bad_file_and_goes_on_then_resumes(tmp_path, phantom):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.nii.gz").write_bytes(phantom.read_bytes())
    (src / "b_broken.nii.gz").write_bytes(phantom.read_bytes()[:300])
    (src / "c.nii.gz").write_bytes(phantom.read_bytes())
    (src / "notes.txt").write_text("ignored")
    r = run("batch", src, out, *FAST)
    assert r.returncode == 1
    assert "2 done, 0 already done, 1 failed" in r.stdout
    assert "b_broken.nii.gz" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_tv.nii.gz", "c_tv.nii.gz", "manifest.jsonl"]
    lines = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]
    status = {ln["id"]: ln["status"] for ln in lines}
    assert status == {"a.nii.gz": "ok", "b_broken.nii.gz": "error", "c.nii.gz": "ok"}
    assert "truncated" in next(ln["error"] for ln in lines if ln["status"] == "error")
    assert next(ln for ln in lines if ln["id"] == "a.nii.gz")["psnr"] > 20
    # fix the broken file and run again: only it is redone
    (src / "b_broken.nii.gz").write_bytes(phantom.read_bytes())
    r = run("batch", src, out, *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 done, 2 already done, 0 failed" in r.stdout


def test_a_bug_is_an_internal_error_not_bad_input(tmp_path, phantom):
    """A TypeError from our code exits 1 as an internal error; --debug adds its traceback."""
    code = ("import sys, torch; torch.set_num_threads(1); import ditlab.medical.reconstruct as r; "
            "r.reconstruct_volume = lambda *a, **k: None + 1; from ditlab.core.cli import main; main()")
    args = ["reconstruct", str(phantom), "--out", str(tmp_path / "rec.nii.gz"), *FAST]
    plain = subprocess.run([sys.executable, "-c", code, "medical", *args], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1 and "internal error: TypeError" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-c", code, "--debug", "medical", *args], capture_output=True, text=True,
                           timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert not (tmp_path / "rec.nii.gz").exists()


def test_batch_of_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    r = run("batch", tmp_path / "in", tmp_path / "out")
    assert r.returncode == 2 and "holds no inputs" in r.stderr
