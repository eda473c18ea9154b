"""The medical app reconstructs a phantom through its API, scores and serves the results, and reports bad input."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ditlab.medical.data import phantom_affine
from ditlab.medical.reconstruct import defaults

QUICK = "phantom quick 64x64x32"
FULL_WINDOW = "full [-1000, 1000]"


@pytest.fixture(scope="module")
def client(serve_app):
    with serve_app("medical.py") as c:
        yield c


def reconstruct(client, upload=None, task="sparse-view", views=8, accel=4.0, methods=("fbp", "tv", "dds"), steps=2,
                cache="none"):
    """The app's outputs: (axial, coronal, sagittal, 3 slider values, metrics, notes, files)."""
    return client.predict(upload, QUICK, task, views, accel, 0.01, list(methods), steps, 0, FULL_WINDOW, cache,
                          api_name="/reconstruct")


def test_reconstructs_the_quick_phantom(client):
    axial, coronal, sagittal, *slices, metrics, notes, files = reconstruct(client)
    table = {row[0]: dict(zip(metrics["headers"], row, strict=True)) for row in metrics["data"]}
    assert list(table) == ["FBP", "TV", "DDS (DiT)"]
    assert table["TV"]["PSNR (dB)"] > table["FBP"]["PSNR (dB)"] + 3  # 8 views: TV well above FBP's streaks
    samples = defaults("sparse-view").samples  # the slider's NFE is split into averaged runs x steps
    assert table["DDS (DiT)"]["NFE"] == max(1, round(2 / samples)) * samples and table["FBP"]["NFE"] == 0
    # the slice sliders span (X, Y, Z) = (64, 64, 32) and start mid-volume: axial, coronal, sagittal
    assert [(s["maximum"], s["value"]) for s in slices] == [(31, 16), (63, 32), (63, 32)]
    img = np.asarray(Image.open(axial))
    assert img.shape[1] > 3 * img.shape[0] and img.std() > 10  # ground truth + 3 methods side by side
    assert "8 views" in notes
    names = sorted(Path(f).name for f in files)
    assert names == sorted(f"phantom-quick-64x64x32_{n}.nii.gz" for n in ("ground-truth", "fbp", "tv", "dds"))
    tv = nib.load(next(f for f in files if f.endswith("_tv.nii.gz")))
    assert tv.shape == (64, 64, 32) and np.allclose(tv.affine, phantom_affine((64, 64, 32)))


def test_a_feature_cache_spends_fewer_network_evaluations(client):
    *_, metrics, notes, files = reconstruct(client, methods=("dds",), steps=8, cache="taylorseer")
    row = dict(zip(metrics["headers"], metrics["data"][0], strict=True))
    assert row["NFE"] == 8 and row["NFE spent"] < 8  # TaylorSeer(4, 2): full calls 0, 1, 5 per chunk
    assert "cache: taylorseer" in notes
    with pytest.raises(Exception, match="ras"):  # not offered: the prior's window attention refuses RAS
        reconstruct(client, methods=("dds",), steps=2, cache="ras")


def test_mri_skips_fbp_with_a_note(client):
    *_, metrics, notes, files = reconstruct(client, task="mri", methods=("fbp", "dds"), steps=1)
    assert [row[0] for row in metrics["data"]] == ["DDS (DiT)"]
    assert "FBP skipped" in notes


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))
    return path


def test_reports_a_2d_upload(client, tmp_path):
    from gradio_client import handle_file

    path = _nifti(tmp_path / "slice.nii.gz", np.zeros((32, 32)))
    with pytest.raises(Exception, match=r"expected a 3D volume \(X, Y, Z\), got shape \(32, 32\)"):
        reconstruct(client, upload=handle_file(str(path)))


def test_reports_nan_voxels_and_truncated_files(client, tmp_path):
    from gradio_client import handle_file

    data = np.zeros((32, 32, 16))
    data[3, 4, 5] = np.nan
    with pytest.raises(Exception, match="1 voxels are NaN or Inf"):
        reconstruct(client, upload=handle_file(str(_nifti(tmp_path / "nan.nii", data))))
    whole = _nifti(tmp_path / "whole.nii", np.ones((32, 32, 16))).read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception, match="may be truncated"):
        reconstruct(client, upload=handle_file(str(cut)))


def test_reports_too_few_views(client):
    with pytest.raises(Exception, match="views must be an integer from 2 to 180, got 1"):
        reconstruct(client, views=1)


def test_refuses_a_file_that_only_pretends_to_be_nifti(client, tmp_path):
    from gradio_client import handle_file

    fake = tmp_path / "scan.nii.gz"
    fake.write_bytes(b"PK\x03\x04" + bytes(400))  # a zip renamed to .nii.gz
    with pytest.raises(Exception, match=r"scan\.nii\.gz: its contents are not a \.nii\.gz file"):
        reconstruct(client, upload=handle_file(str(fake)))
