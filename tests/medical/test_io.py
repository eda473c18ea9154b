"""Reading and writing volumes: orientation and affine kept, DICOM series in HU, clear errors, atomic writes."""

import gzip
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ditlab.medical import io
from ditlab.medical.data import write_phantoms
from ditlab.medical.io import Volume, VolumeError, load_volume, save_volume


def _oblique_lps_affine() -> np.ndarray:
    """LPS-ish axes (x and y flipped), rotated 10 degrees about z, anisotropic voxels, shifted origin."""
    a = np.deg2rad(10)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.7, -0.9, 2.5])
    affine[:3, 3] = [30.0, -12.0, 50.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_orientation_affine_and_spacing(tmp_path, suffix):
    data = np.random.default_rng(0).normal(0, 300, (6, 5, 4)).astype(np.float32)
    affine = _oblique_lps_affine()
    src = tmp_path / f"in{suffix}"
    nib.save(nib.Nifti1Image(data, affine), src)

    vol = load_volume(src)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.spacing == pytest.approx((0.7, 0.9, 2.5), abs=1e-5)
    # the same world point holds the same value: voxel (0, 0, 0) of the file is the far corner in RAS
    assert vol.data[-1, -1, 0] == data[0, 0, 0]
    world = affine @ [0, 0, 0, 1]
    assert np.allclose(vol.affine @ [5, 4, 0, 1], world, atol=1e-4)

    out = save_volume(replace(vol, data=vol.data + 1), tmp_path / f"out{suffix}")
    back = nib.load(out)
    assert back.shape == data.shape
    assert np.allclose(back.affine, affine, atol=1e-4)
    assert np.allclose(back.get_fdata(), data + 1, atol=1e-4)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(affine)


def _write_dicom_series(folder: Path, planes: np.ndarray, spacing=(0.7, 0.8), thickness=2.5, intercept=-1024.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    order = [2, 0, 3, 1]  # files written out of order: the reader sorts by position
    for i in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, i + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, 100.0 + thickness * i]
        ds.PixelSpacing = list(spacing)
        ds.Rows, ds.Columns = planes.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
        ds.PixelData = planes[i].astype(np.uint16).tobytes()
        ds.save_as(folder / f"slice_{i}.dcm", enforce_file_format=True)


def test_dicom_series_loads_in_hu_with_its_spacing(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 2000, (4, 5, 6))  # (slice, row, column)
    _write_dicom_series(tmp_path, stored)
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    vol = load_volume(tmp_path)
    assert vol.data.shape == (6, 5, 4)  # (column, row, slice) -> RAS
    assert vol.spacing == pytest.approx((0.8, 0.7, 2.5))
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    # DICOM columns run to patient left and rows to posterior: RAS flips both
    hu = stored.astype(np.float32) - 1024
    assert np.array_equal(vol.data, hu.transpose(2, 1, 0)[::-1, ::-1, :])
    # the first stored pixel sits at ImagePositionPatient (LPS) of the lowest slice
    assert np.allclose(vol.affine @ [5, 4, 0, 1], [10.0, 20.0, 100.0, 1.0])


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: _nifti(p / "flat.nii.gz", np.zeros((8, 8), np.float32)), "expected a 3D volume"),
    (lambda p: _nifti(p / "five.nii.gz", np.zeros((4, 4, 4, 1, 1), np.float32)), r"got shape \(4, 4, 4, 1, 1\)"),
    (lambda p: _nifti(p / "nan.nii", np.full((4, 4, 4), np.nan, np.float32)), "NaN or Inf"),
    (lambda p: _nifti(p / "huge.nii.gz", np.zeros((1100, 2, 2), np.float32)), "outside the supported sizes"),
    (lambda p: (p / "image.png").write_bytes(b"\x89PNG") and p / "image.png", "unsupported file type '.png'"),
    (lambda p: (p / "junk.nii").write_bytes(b"not a nifti header") and p / "junk.nii", "not a readable NIfTI"),
    (lambda p: p, "no DICOM images found"),
], ids=["2d", "5d", "nan", "too-big", "extension", "garbage", "empty-folder"])
def test_bad_inputs_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(VolumeError, match=message):
        load_volume(make(tmp_path))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_file_is_reported(tmp_path, suffix):
    path = _nifti(tmp_path / f"vol{suffix}", np.random.default_rng(0).random((16, 16, 16), np.float32))
    raw = gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
    cut = raw[: len(raw) // 2]
    path.write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    with pytest.raises(VolumeError, match="truncated"):
        load_volume(path)
    if suffix == ".nii.gz":  # a gzip stream cut short as well
        path.write_bytes(gzip.compress(raw)[:2000])
        with pytest.raises(VolumeError, match="truncated|not a readable"):
            load_volume(path)


def test_a_singleton_fourth_axis_is_a_3d_volume(tmp_path):
    data = np.random.default_rng(0).random((6, 5, 4, 1), np.float32)
    vol = load_volume(_nifti(tmp_path / "t1.nii.gz", data))
    assert vol.data.shape == (6, 5, 4)
    with pytest.raises(VolumeError, match=r"got shape \(6, 5, 4, 2\)"):
        load_volume(_nifti(tmp_path / "t2.nii.gz", np.repeat(data, 2, axis=3)))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_volume("/nonexistent/volume.nii.gz")


def test_failed_saves_leave_no_file(tmp_path, monkeypatch):
    good = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), (1.0, 1.0, 1.0))
    bad = replace(good, data=np.full((4, 4, 4), np.inf, np.float32))
    with pytest.raises(VolumeError, match="NaN or Inf"):
        save_volume(bad, tmp_path / "bad.nii.gz")
    with pytest.raises(VolumeError, match="expected a 3D volume"):
        save_volume(replace(good, data=np.zeros((4, 4))), tmp_path / "flat.nii.gz")
    with pytest.raises(VolumeError, match="cannot write file type '.mha'"):
        save_volume(good, tmp_path / "out.mha")

    def broken_write(self, data):  # the disk fills up halfway through
        with open(self, "wb") as f:
            f.write(data[:10])
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(OSError, match="No space left"):
        save_volume(good, tmp_path / "partial.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_size_cap_is_documented_and_checked():
    assert io.MAX_SHAPE == (1024, 1024, 2048)
    with pytest.raises(VolumeError, match="outside the supported sizes"):
        io.validate_volume(np.zeros((2, 2, 2049), np.float32))


def test_written_phantoms_load_with_their_spacing(tmp_path):
    (path,) = write_phantoms(tmp_path, n=1, size=(32, 32, 12), seed=5)
    vol = load_volume(path)
    assert path.name == "phantom_0005.nii.gz"
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.data.shape == (32, 32, 12) and vol.data.min() >= -1000 and vol.data.max() <= 1000
