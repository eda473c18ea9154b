"""Volumes on disk: read NIfTI files and DICOM series, validate them, write NIfTI atomically.

A loaded `Volume` holds its voxels in RAS+ order (nibabel's closest canonical orientation: axes
flipped and permuted, never resampled) and remembers the file's own affine, so `save_volume` writes a
reconstruction back in the orientation and with the affine the input had.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from ditlab.core.errors import FileFormatError
from ditlab.core.files import atomic_write, split_suffix
from ditlab.medical.acquisition import Acquisition, Measurement

MAX_SHAPE = (1024, 1024, 2048)
"""Largest volume accepted, voxels per axis in RAS order (X, Y, Z): 8 GiB of float32 at most."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class VolumeError(FileFormatError):
    """An input volume or file that cannot be used: the message says what was wrong and what was expected."""


@dataclass
class Volume:
    """A 3D image in HU (float32, voxel axes RAS+) with the metadata needed to write results back."""

    data: np.ndarray  # (X, Y, Z)
    affine: np.ndarray  # 4x4 voxel -> world (RAS, mm) of `data`
    spacing: tuple[float, float, float]  # mm along the axes of `data`
    source: str = ""
    original_affine: np.ndarray | None = None  # the file's affine: save_volume writes in that orientation


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each axis: the lengths of the affine's first three columns."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def validate_volume(data: np.ndarray, what: str = "volume") -> np.ndarray:
    """Check that `data` is a finite 3D array within `MAX_SHAPE`; return it as float32."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise VolumeError(f"{what}: expected a 3D volume (X, Y, Z), got shape {tuple(data.shape)}")
    _check_shape(data.shape, what)
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise VolumeError(f"{what}: expected real numbers, got dtype {data.dtype}")
    data = data.astype(np.float32, copy=False)
    bad = ~np.isfinite(data)
    if bad.any():
        raise VolumeError(f"{what}: {int(bad.sum())} voxels are NaN or Inf; expected finite values")
    return data


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    if any(int(n) < 1 for n in shape) or any(int(n) > m for n, m in zip(shape, MAX_SHAPE, strict=True)):
        raise VolumeError(f"{what}: shape {tuple(int(n) for n in shape)} is outside the supported sizes "
                          f"1..{MAX_SHAPE} voxels (X, Y, Z)")


def _check_affine(affine: np.ndarray, what: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{what}: expected a finite, invertible 4x4 affine, got {affine.tolist()}")
    return affine


def _suffix(path: Path) -> str:
    return split_suffix(path, NIFTI_SUFFIXES)[1] or path.suffix.lower()


def volume_stem(path: str | Path) -> str:
    """A volume or measurement file's name without its suffix (`scan.nii.gz` -> `scan`); a DICOM folder's name."""
    return split_suffix(path, (*NIFTI_SUFFIXES, MEASUREMENT_SUFFIX))[0]


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip and permute voxel axes to the closest RAS+ orientation; the affine follows so world positions stay."""
    ornt = orientations.io_orientation(affine)
    ras = np.ascontiguousarray(orientations.apply_orientation(data, ornt))
    return ras, affine @ orientations.inv_ornt_aff(ornt, data.shape)


def load_volume(path: str | Path) -> Volume:
    """Read a `.nii` / `.nii.gz` file or a folder holding one DICOM series into a RAS+ `Volume` in HU."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        data, affine = _read_dicom_series(path)
    elif _suffix(path) in NIFTI_SUFFIXES:
        data, affine = _read_nifti(path)
    else:
        raise VolumeError(f"{path}: unsupported file type {_suffix(path)!r}; expected one of {NIFTI_SUFFIXES} "
                          "or a folder holding a DICOM series")
    data = validate_volume(data, str(path))
    ras, ras_affine = to_ras(data, affine)
    return Volume(ras, ras_affine, spacing_of(ras_affine), source=str(path), original_affine=affine)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for foreign or damaged headers
        raise VolumeError(f"{path}: not a readable NIfTI file ({e})") from e
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:  # (X, Y, Z, 1): a 3D volume stored with a singleton time axis
        shape = shape[:3]
    if len(shape) != 3:
        raise VolumeError(f"{path}: expected a 3D volume (X, Y, Z), got shape {tuple(shape)}")
    _check_shape(shape, str(path))  # before reading the voxels: an absurd header allocates nothing
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)  # applies scl_slope / scl_inter
    except Exception as e:  # truncated files fail here (EOFError, zlib.error, ValueError ...)
        raise VolumeError(f"{path}: the voxel data could not be read, the file may be truncated ({e})") from e
    return data, _check_affine(img.affine, str(path))


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one DICOM series: slices sorted along their normal, stored values rescaled to HU, LPS -> RAS."""
    import pydicom

    slices = []
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # not a DICOM file: other files may sit beside a series
            continue
        if "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise VolumeError(f"{folder}: no DICOM images found; expected a folder holding one DICOM series")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise VolumeError(f"{folder}: holds {len(series)} DICOM series {sorted(series)}; expected exactly one")
    if len(slices) < 2:
        raise VolumeError(f"{folder}: one DICOM slice; expected a series of at least 2 slices for a 3D volume")
    try:
        iop = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
        row_dir, col_dir = iop[:3], iop[3:]
        normal = np.cross(row_dir, col_dir)
        slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=np.float64))))
        positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=np.float64)
        row_spacing, col_spacing = (float(s) for s in slices[0].PixelSpacing)
        planes = [ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1.0))
                  + float(getattr(ds, "RescaleIntercept", 0.0)) for ds in slices]
    except Exception as e:  # missing geometry tags, damaged pixel data
        raise VolumeError(f"{folder}: the DICOM series could not be read ({e})") from e
    if len({p.shape for p in planes}) > 1 or planes[0].ndim != 2:
        raise VolumeError(f"{folder}: DICOM slices have shapes {sorted({p.shape for p in planes})}; "
                          "expected one 2D shape for the whole series")
    steps = np.diff(positions, axis=0)
    if np.linalg.norm(steps - steps.mean(axis=0), axis=1).max() > 1e-3 * max(np.linalg.norm(steps[0]), 1e-6):
        raise VolumeError(f"{folder}: DICOM slice positions are not evenly spaced; expected a regular series")
    _check_shape((planes[0].shape[1], planes[0].shape[0], len(planes)), str(folder))
    # voxel (i, j, k) = column i, row j of slice k; DICOM world axes are LPS
    data = np.stack([p.T for p in planes], axis=-1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = steps.mean(axis=0)
    lps[:3, 3] = positions[0]
    return data, _check_affine(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, str(folder))


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Write `volume` as NIfTI (`.nii` or `.nii.gz`) in the orientation of its source, atomically.

    Everything is checked before anything is written; the file appears complete or not at all.
    """
    path = Path(path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise VolumeError(f"{path}: cannot write file type {_suffix(path)!r}; expected one of {NIFTI_SUFFIXES}")
    data = validate_volume(volume.data, f"volume to write to {path}")
    affine = _check_affine(volume.affine, f"affine of the volume to write to {path}")
    if volume.original_affine is not None:
        original = _check_affine(volume.original_affine, f"original affine of the volume to write to {path}")
        back = orientations.ornt_transform(orientations.io_orientation(affine), orientations.io_orientation(original))
        data = np.ascontiguousarray(orientations.apply_orientation(data, back))
        affine = affine @ orientations.inv_ornt_aff(back, volume.data.shape)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    atomic_write(path, lambda p: p.write_bytes(gzip.compress(raw, compresslevel=4, mtime=0)
                                               if _suffix(path) == ".nii.gz" else raw))
    return path


MEASUREMENT_SUFFIX = ".npz"


def save_measurement(meas: Measurement, path: str | Path) -> Path:
    """Write a `Measurement` as `.npz` (numpy arrays only, no pickle), atomically."""
    import json

    path = Path(path)
    if path.suffix.lower() != MEASUREMENT_SUFFIX:
        raise VolumeError(f"{path}: measurements are written as {MEASUREMENT_SUFFIX}, got {path.suffix!r}")
    y = meas.y.detach().cpu().numpy()
    meta = {"acquisition": meas.acquisition.to_dict(), "shape": list(meas.shape), "noise": meas.noise,
            "seed": meas.seed, "source": meas.source, "format": "ditlab.medical.measurement/1"}
    arrays = {"y": y, "affine": np.asarray(meas.affine, np.float64), "meta": np.array(json.dumps(meta))}
    if meas.original_affine is not None:
        arrays["original_affine"] = np.asarray(meas.original_affine, np.float64)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)
    return path


def load_measurement(path: str | Path) -> Measurement:
    """Read a measurement file written by `save_measurement` (or `ditlab medical simulate`)."""
    import json
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such measurement file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        acq = Acquisition(**{k: tuple(v) if k == "angles" and v is not None else v
                             for k, v in meta["acquisition"].items()})
        meas = Measurement(torch.from_numpy(arrays["y"]), acq, tuple(int(n) for n in meta["shape"]),
                           _check_affine(arrays["affine"], str(path)),
                           arrays.get("original_affine"), float(meta["noise"]), int(meta["seed"]),
                           str(meta.get("source", path)))
    except (KeyError, ValueError, OSError, EOFError, TypeError, zipfile.BadZipFile) as e:
        raise VolumeError(f"{path}: not a readable ditlab measurement file ({e}); expected one written by "
                          "`ditlab medical simulate`") from e
    _check_shape(meas.shape, str(path))
    expected = (meas.shape[2], *meas.operator.shape)
    if tuple(meas.y.shape) != expected:
        raise VolumeError(f"{path}: measurements have shape {tuple(meas.y.shape)}, expected {expected} for "
                          f"{meas.acquisition.describe()} of a {meas.shape} volume")
    if not torch.isfinite(torch.view_as_real(meas.y) if meas.y.is_complex() else meas.y).all():
        raise VolumeError(f"{path}: measurements contain NaN or Inf; expected finite values")
    return meas
