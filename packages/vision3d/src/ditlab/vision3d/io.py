"""Point-cloud files and LiDAR range images.

Files: `read_points` / `write_points` pick the format from the suffix (`FORMATS`, case-insensitive): PLY, PCD and
XYZ through open3d's tensor I/O (PLY and PCD carry the `intensity` and `ring` attributes, XYZ only x, y, z), KITTI
`.bin` (float32 x, y, z, reflectance), nuScenes `.pcd.bin` (float32 x, y, z, intensity, ring) and NumPy `.npy`
((N, 3) points or (N, 4) points and intensity). Every cloud read or written is checked: at least one point, finite
coordinates, at most `max_points` points on reading. Writes are atomic.

Range images follow LiDM's projection (yaw = -atan2(y, x) along the columns, pitch = asin(z / r) down the rows,
nearest return per pixel), with 0 for "no return"; `log_depth` / `exp_depth` scale depth for networks.

    from ditlab.vision3d.io import read_points, to_range_image, from_range_image
    cloud = read_points("000000.bin")                          # KITTI: points and reflectance
    depth, intensity = to_range_image(cloud.points, cloud.intensity)   # (64, 1024) each
    back = from_range_image(depth, intensity)                   # one point per occupied pixel
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ditlab.core.errors import FileFormatError, InputError
from ditlab.core.files import atomic_write, split_suffix
from ditlab.vision3d.data import MAX_POINTS, open3d_module

FORMATS = (".ply", ".pcd", ".xyz", ".bin", ".pcd.bin", ".npy")
"""Point-cloud file suffixes `read_points` and `write_points` know (`.pcd.bin` is nuScenes, not KITTI `.bin`)."""

_OPEN3D = {".ply": "PLY", ".pcd": "PCD", ".xyz": "XYZ"}
_RECORDS = {".bin": (4, "KITTI", "x, y, z, reflectance"), ".pcd.bin": (5, "nuScenes", "x, y, z, intensity, ring")}
"""Raw float32 formats: columns per point, dataset name, column names."""

NO_RETURN = -1.0
"""`log_depth` value of a pixel without a return. It lies apart from the valid range [VALID_LOW, 1] so a network can
say "nothing there" distinctly from "something at the minimum depth"."""
VALID_LOW = -0.6
"""`log_depth` value of the minimum depth; the maximum depth maps to 1."""
THRESHOLD = -0.8
"""`exp_depth` reads values below this (halfway between NO_RETURN and VALID_LOW) as no return."""


# ----------------------------------------------------------------------------------------------
# Point clouds
# ----------------------------------------------------------------------------------------------

def _whole(a: np.ndarray) -> bool:
    """True when every value of `a` is a whole number (NaN and Inf are not)."""
    return a.dtype.kind in "iu" or bool(np.all(np.isfinite(a) & (a == np.round(a))))


@dataclass
class PointCloud:
    """Points (N, 3) float32 with optional per-point intensity (N,) float32 and laser ring (N,) int32; arrays are
    converted on construction and their lengths checked."""

    points: np.ndarray
    intensity: np.ndarray | None = None
    ring: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise InputError(f"points must be an (N, 3) array of x, y, z, got shape {self.points.shape}")
        n = len(self.points)
        if self.intensity is not None:
            self.intensity = np.asarray(self.intensity, dtype=np.float32).reshape(-1)
            if len(self.intensity) != n:
                raise InputError(f"intensity must hold one value per point ({n}), got {len(self.intensity)}")
        if self.ring is not None:
            ring = np.asarray(self.ring).reshape(-1)
            if len(ring) != n or not _whole(ring):
                raise InputError(f"ring must hold one whole number per point ({n}), got {len(ring)} values")
            self.ring = ring.astype(np.int32)

    def __len__(self) -> int:
        return len(self.points)

    def select(self, keep: np.ndarray) -> PointCloud:
        """The points where boolean `keep` is true, with their intensity and ring."""
        return PointCloud(self.points[keep], None if self.intensity is None else self.intensity[keep],
                          None if self.ring is None else self.ring[keep])


def _format(path: Path) -> str:
    _, suffix = split_suffix(path, FORMATS)
    if not suffix:
        raise InputError(f"{path.name}: unknown point-cloud format; expected a file ending in {', '.join(FORMATS)}")
    return suffix


def _checked(cloud: PointCloud, name: str, drop_nonfinite: bool = False) -> PointCloud:
    """`cloud` if it has points and finite coordinates (those that are not dropped with `drop_nonfinite`)."""
    finite = np.isfinite(cloud.points).all(axis=1)
    bad = len(cloud) - int(finite.sum())
    if bad and not drop_nonfinite:
        raise InputError(f"{name}: {bad} of {len(cloud)} points have non-finite (NaN or Inf) coordinates; "
                         "expected finite x, y, z (drop_nonfinite=True drops them)")
    if bad:
        cloud = cloud.select(finite)
    if not len(cloud):
        raise InputError(f"{name}: no points; expected at least one point with finite coordinates")
    return cloud


def _check_count(n: int, name: str, max_points: int) -> None:
    if n > max_points:
        raise InputError(f"{name}: {n} points is more than the cap of {max_points} (max_points)")


def _read_raw(path: Path, suffix: str, size: int, max_points: int) -> PointCloud:
    columns, dataset, names = _RECORDS[suffix]
    if size % (4 * columns):
        raise FileFormatError(f"{path.name}: {size} bytes is not a multiple of the {dataset} record size "
                              f"{4 * columns} (float32 {names})")
    _check_count(size // (4 * columns), path.name, max_points)
    data = np.fromfile(path, dtype="<f4").reshape(-1, columns)
    if columns == 4:
        return PointCloud(data[:, :3], data[:, 3])
    if not _whole(data[:, 4]):
        raise FileFormatError(f"{path.name}: the ring column (5th float32) holds values that are not whole numbers; "
                              f"expected {dataset} records (float32 {names})")
    return PointCloud(data[:, :3], data[:, 3], data[:, 4])


def _read_npy(path: Path, max_points: int) -> PointCloud:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise FileFormatError(f"{path.name}: not a NumPy .npy array file; expected an (N, 3) or (N, 4) array "
                              "saved with numpy.save") from e
    if data.ndim != 2 or data.shape[1] not in (3, 4) or data.dtype.kind not in "fiu":
        raise FileFormatError(f"{path.name}: expected an (N, 3) or (N, 4) numeric array (x, y, z[, intensity]), "
                              f"got shape {data.shape} of {data.dtype}")
    _check_count(len(data), path.name, max_points)
    data = np.array(data, dtype=np.float32)
    return PointCloud(data[:, :3], data[:, 3] if data.shape[1] == 4 else None)


def _read_open3d(path: Path, suffix: str, size: int) -> PointCloud:
    o3d = open3d_module()
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):  # we raise our own error
        tcloud = o3d.t.io.read_point_cloud(str(path), format=suffix[1:])
    attrs = tcloud.point
    if "positions" not in attrs or not len(attrs.positions):
        if size:  # open3d answers unreadable files with an empty cloud
            raise FileFormatError(f"{path.name}: open3d read no points from this {size}-byte file; expected a "
                                  f"valid {_OPEN3D[suffix]} point cloud")
        raise InputError(f"{path.name}: no points (the file is empty)")
    return PointCloud(attrs.positions.numpy(), attrs.intensity.numpy() if "intensity" in attrs else None,
                      attrs.ring.numpy() if "ring" in attrs else None)


def read_points(path: str | Path, max_points: int = MAX_POINTS, drop_nonfinite: bool = False) -> PointCloud:
    """The point cloud in `path`, format by suffix (`FORMATS`). Refuses (`InputError`) empty clouds, more than
    `max_points` points and non-finite coordinates; with `drop_nonfinite` the points with a NaN or Inf coordinate
    are dropped instead (some exports pad scans with NaN). Unreadable or truncated files raise `FileFormatError`."""
    path = Path(path)
    suffix = _format(path)
    if max_points < 1:
        raise InputError(f"max_points must be at least 1, got {max_points}")
    with open(path, "rb") as f:  # FileNotFoundError / IsADirectoryError before any format sees the path
        size = os.fstat(f.fileno()).st_size
    if suffix in _RECORDS:
        cloud = _read_raw(path, suffix, size, max_points)
    elif suffix == ".npy":
        cloud = _read_npy(path, max_points)
    else:
        cloud = _read_open3d(path, suffix, size)
        _check_count(len(cloud), path.name, max_points)
    return _checked(cloud, path.name, drop_nonfinite)


def _write_open3d(tmp: Path, cloud: PointCloud, suffix: str) -> None:
    """Write with open3d, which picks the format from the file name, in a private folder, then move into `tmp`."""
    o3d = open3d_module()
    tcloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(cloud.points))
    if suffix != ".xyz":
        if cloud.intensity is not None:
            tcloud.point.intensity = o3d.core.Tensor(cloud.intensity[:, None])
        if cloud.ring is not None:
            tcloud.point.ring = o3d.core.Tensor(cloud.ring[:, None])
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f"{tmp.name}.") as folder:
        out = Path(folder) / f"points{suffix}"
        if not o3d.t.io.write_point_cloud(str(out), tcloud):
            raise OSError(f"open3d could not write a {_OPEN3D[suffix]} file in {tmp.parent}")
        os.replace(out, tmp)


def _write_raw(tmp: Path, cloud: PointCloud, suffix: str) -> None:
    n = len(cloud)
    zeros = np.zeros(n, np.float32)
    columns = [cloud.points, (zeros if cloud.intensity is None else cloud.intensity)[:, None]]
    if _RECORDS[suffix][0] == 5:
        columns.append((zeros if cloud.ring is None else cloud.ring.astype(np.float32))[:, None])
    np.hstack(columns).astype("<f4").tofile(tmp)


def _write_npy(tmp: Path, cloud: PointCloud) -> None:
    data = cloud.points if cloud.intensity is None else np.hstack([cloud.points, cloud.intensity[:, None]])
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, data)


def write_points(path: str | Path, cloud: PointCloud | np.ndarray) -> Path:
    """Write `cloud` (a `PointCloud` or an (N, 3) array) atomically, format by suffix (`FORMATS`); refuses empty
    clouds and non-finite coordinates. KITTI and nuScenes files get zeros for a missing intensity (and ring);
    formats without such columns drop them (XYZ: intensity and ring; NPY: ring). Returns `path`."""
    path = Path(path)
    suffix = _format(path)
    cloud = _checked(cloud if isinstance(cloud, PointCloud) else PointCloud(cloud), path.name)
    if suffix in _RECORDS:
        return atomic_write(path, lambda tmp: _write_raw(tmp, cloud, suffix))
    if suffix == ".npy":
        return atomic_write(path, lambda tmp: _write_npy(tmp, cloud))
    return atomic_write(path, lambda tmp: _write_open3d(tmp, cloud, suffix))


# ----------------------------------------------------------------------------------------------
# Range images
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RangeSpec:
    """A spinning LiDAR's range image: `height` beams (rows, top = `fov_up`) by `width` azimuth columns, vertical
    field of view in degrees, and the depth range in metres kept (points outside are dropped). The defaults are
    LiDM's KITTI-360 / SemanticKITTI image (a 64-beam Velodyne HDL-64E)."""

    height: int = 64
    width: int = 1024
    fov_up: float = 3.0
    fov_down: float = -25.0
    min_depth: float = 1.0
    max_depth: float = 56.0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise InputError(f"RangeSpec {name} must be a whole number of at least 1, got {value!r}")
        if not -90 <= self.fov_down < self.fov_up <= 90:
            raise InputError(f"RangeSpec needs -90 <= fov_down < fov_up <= 90 degrees, got fov_up={self.fov_up}, "
                             f"fov_down={self.fov_down}")
        if not (0 < self.min_depth < self.max_depth and math.isfinite(self.max_depth)):
            raise InputError(f"RangeSpec needs 0 < min_depth < max_depth (finite, metres), got "
                             f"min_depth={self.min_depth}, max_depth={self.max_depth}")

    @property
    def fov(self) -> float:
        """Vertical field of view in radians."""
        return math.radians(self.fov_up - self.fov_down)


def _finite(a, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`a` as float64, checked for `shape` and finite values."""
    a = np.asarray(a, dtype=np.float64)
    if shape is not None and a.shape != shape:
        raise InputError(f"{what} must have shape {shape}, got {a.shape}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise InputError(f"{what}: {bad} values are NaN or Inf; expected finite values")
    return a


def _valid(depth: np.ndarray, spec: RangeSpec) -> np.ndarray:
    return (depth >= spec.min_depth) & (depth <= spec.max_depth)


def azimuth_columns(points: np.ndarray, width: int) -> np.ndarray:
    """(N,) int64: the range-image column of each (N, 3) point, u = floor(0.5 (yaw / pi + 1) W) with
    yaw = -atan2(y, x), clipped into [0, W - 1] (the projection's convention, `to_range_image`)."""
    yaw = -np.arctan2(points[:, 1], points[:, 0])
    return np.clip(np.floor(0.5 * (yaw / np.pi + 1) * width), 0, width - 1).astype(np.int64)


def to_range_image(points, intensity=None, spec: RangeSpec = RangeSpec()) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) points onto the (H, W) range image of `spec`: (depth, intensity), both float32, 0 where no
    point lands. Column u = floor(0.5 (yaw / pi + 1) W) with yaw = -atan2(y, x) (x forward lands mid-image), row
    v = floor((1 - (pitch - fov_down) / fov) H) with pitch = asin(z / r), both clipped into the image. Points with
    r outside [min_depth, max_depth] are dropped; where several share a pixel the nearest wins (LiDM's far-to-near
    overwrite). Intensity zeros when none is given."""
    pts = _finite(points, "points")
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array of x, y, z, got shape {pts.shape}")
    values = np.zeros(len(pts)) if intensity is None else _finite(intensity, "intensity", (len(pts),))
    r = np.linalg.norm(pts, axis=1)
    keep = _valid(r, spec)
    pts, r, values = pts[keep], r[keep], values[keep]
    pitch = np.arcsin(np.clip(pts[:, 2] / r, -1, 1))
    u = azimuth_columns(pts, spec.width)
    v = np.floor((1 - (pitch - math.radians(spec.fov_down)) / spec.fov) * spec.height)
    pixel = np.clip(v, 0, spec.height - 1).astype(np.int64) * spec.width + u
    order = np.lexsort((r, pixel))  # by pixel, nearest first
    first = order[np.diff(pixel[order], prepend=-1) != 0]
    depth, inten = np.zeros((2, spec.height * spec.width), np.float32)
    depth[pixel[first]], inten[pixel[first]] = r[first], values[first]
    return depth.reshape(spec.height, spec.width), inten.reshape(spec.height, spec.width)


def from_range_image(depth, intensity=None, spec: RangeSpec = RangeSpec()) -> PointCloud:
    """Back-project a (H, W) depth image: one point per pixel with depth in [min_depth, max_depth] (0 = no return),
    at the pixel's centre direction, so `to_range_image` puts it back in the same pixel. Ring = the row; intensity
    is read from the (H, W) `intensity` image when given."""
    shape = (spec.height, spec.width)
    d = _finite(depth, "depth", shape)
    v, u = np.nonzero(_valid(d, spec))
    r = d[v, u]
    yaw = (2 * (u + 0.5) / spec.width - 1) * np.pi
    pitch = (1 - (v + 0.5) / spec.height) * spec.fov + math.radians(spec.fov_down)
    points = np.stack([r * np.cos(pitch) * np.cos(yaw), -r * np.cos(pitch) * np.sin(yaw), r * np.sin(pitch)], 1)
    values = None if intensity is None else _finite(intensity, "intensity", shape)[v, u]
    return PointCloud(points, values, v)


def log_depth(depth, spec: RangeSpec = RangeSpec()) -> np.ndarray:
    """LiDM-style log scaling of a depth image for networks (float32): depths in [min_depth, max_depth] map to
    VALID_LOW + (1 - VALID_LOW) log2(d - min + 1) / log2(max - min + 1), in [VALID_LOW, 1]; other pixels (0 = no
    return) to NO_RETURN."""
    d = _finite(depth, "depth")
    valid = _valid(d, spec)
    span = math.log2(spec.max_depth - spec.min_depth + 1)
    x = np.log2(np.where(valid, d, spec.min_depth) - spec.min_depth + 1) / span
    return np.where(valid, VALID_LOW + (1 - VALID_LOW) * x, NO_RETURN).astype(np.float32)


def exp_depth(values, spec: RangeSpec = RangeSpec()) -> np.ndarray:
    """The depth image (float32) of `log_depth` values: below THRESHOLD no return (0); others are clipped into
    [VALID_LOW, 1] (a network's overshoot) and inverted, giving depths in [min_depth, max_depth]."""
    n = _finite(values, "log-depth values")
    x = (np.clip(n, VALID_LOW, 1) - VALID_LOW) / (1 - VALID_LOW)
    d = np.exp2(x * math.log2(spec.max_depth - spec.min_depth + 1)) - 1 + spec.min_depth
    return np.where(n < THRESHOLD, 0.0, d).astype(np.float32)


def beam_mask(height: int, keep_every: int = 4) -> np.ndarray:
    """(height,) bool: the rows kept when only every `keep_every`-th beam is read (v % keep_every == 0), e.g. the
    16 of 64 beams of a 16-beam LiDAR."""
    if not isinstance(keep_every, int | np.integer) or keep_every < 1:
        raise InputError(f"keep_every must be a whole number of at least 1, got {keep_every!r}")
    return np.arange(height) % keep_every == 0


def beam_subsample(image, keep_every: int = 4) -> np.ndarray:
    """A copy of `image` (..., H, W) (depth, intensity, a batch) with the rows `beam_mask` drops set to 0
    (no return): the sparse-beam view of a scan, for upsampling."""
    image = np.array(image)
    if image.ndim < 2:
        raise InputError(f"beam_subsample needs an image of shape (..., H, W), got shape {image.shape}")
    image[..., ~beam_mask(image.shape[-2], keep_every), :] = 0
    return image
