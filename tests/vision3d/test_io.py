import math

import numpy as np
import pytest

from ditlab.core.errors import FileFormatError, InputError
from ditlab.vision3d.io import (
    FORMATS,
    NO_RETURN,
    THRESHOLD,
    VALID_LOW,
    PointCloud,
    RangeSpec,
    beam_mask,
    beam_subsample,
    exp_depth,
    from_range_image,
    log_depth,
    read_points,
    to_range_image,
    write_points,
)


def _cloud(n=50, seed=0, intensity=True, ring=False):
    rng = np.random.default_rng(seed)
    return PointCloud((rng.normal(size=(n, 3)) * 10).astype(np.float32),
                      rng.uniform(0, 1, n).astype(np.float32) if intensity else None,
                      rng.integers(0, 32, n) if ring else None)


def _direction(yaw_deg, pitch_deg, r):
    """The point(s) at LiDM's yaw (-atan2(y, x)) and pitch in degrees, `r` metres away."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    return np.stack([r * np.cos(pitch) * np.cos(yaw), -r * np.cos(pitch) * np.sin(yaw), r * np.sin(pitch)], -1)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.ply", "a.pcd", "A.PLY"])
def test_ply_and_pcd_round_trip_with_intensity_and_ring(tmp_path, name):
    cloud = _cloud(ring=True)
    back = read_points(write_points(tmp_path / name, cloud))
    assert back.points.dtype == np.float32 and np.allclose(back.points, cloud.points, atol=1e-6)
    assert np.allclose(back.intensity, cloud.intensity, atol=1e-6) and np.array_equal(back.ring, cloud.ring)


@pytest.mark.parametrize("name", ["a.xyz", "a.npy"])
def test_xyz_and_npy_round_trip_points(tmp_path, name):
    cloud = _cloud(intensity=False)
    back = read_points(write_points(tmp_path / name, cloud.points))  # a plain (N, 3) array
    assert np.allclose(back.points, cloud.points, atol=1e-5) and back.intensity is None and back.ring is None


def test_npy_carries_intensity_as_a_fourth_column(tmp_path):
    cloud = _cloud()
    write_points(tmp_path / "a.npy", cloud)
    assert np.load(tmp_path / "a.npy").shape == (50, 4)
    back = read_points(tmp_path / "a.npy")
    assert np.array_equal(back.points, cloud.points) and np.array_equal(back.intensity, cloud.intensity)


def test_kitti_bin_round_trip_with_reflectance(tmp_path):
    cloud = _cloud()
    path = write_points(tmp_path / "000000.bin", cloud)
    raw = np.fromfile(path, dtype="<f4")
    assert raw.size == 50 * 4 and np.array_equal(raw.reshape(-1, 4)[:, 3], cloud.intensity)
    back = read_points(path)
    assert np.array_equal(back.points, cloud.points) and np.array_equal(back.intensity, cloud.intensity)
    assert back.ring is None
    write_points(tmp_path / "plain.bin", cloud.points)  # no intensity given: zeros
    assert np.array_equal(read_points(tmp_path / "plain.bin").intensity, np.zeros(50, np.float32))


def test_nuscenes_pcd_bin_round_trip_with_ring(tmp_path):
    cloud = _cloud(ring=True)
    path = write_points(tmp_path / "sweep.pcd.bin", cloud)
    assert path.stat().st_size == 50 * 20
    back = read_points(path)
    assert np.array_equal(back.points, cloud.points) and np.array_equal(back.intensity, cloud.intensity)
    assert back.ring.dtype == np.int32 and np.array_equal(back.ring, cloud.ring)
    write_points(tmp_path / "plain.pcd.bin", cloud.points)  # intensity and ring zeros
    plain = read_points(tmp_path / "plain.pcd.bin")
    assert not plain.intensity.any() and not plain.ring.any()


def test_pcd_bin_is_not_read_as_kitti(tmp_path):
    cloud = _cloud(n=4, ring=True)  # 80 bytes: also a whole number of KITTI records (5)
    back = read_points(write_points(tmp_path / "x.PCD.BIN", cloud))
    assert len(back) == 4 and np.array_equal(back.ring, cloud.ring)
    assert ".pcd.bin" in FORMATS and ".bin" in FORMATS


def test_truncated_raw_files_are_refused(tmp_path):
    (tmp_path / "scan.bin").write_bytes(b"\0" * 17)
    with pytest.raises(FileFormatError, match=r"scan.bin: 17 bytes is not a multiple of the KITTI record size 16"):
        read_points(tmp_path / "scan.bin")
    (tmp_path / "scan.pcd.bin").write_bytes(b"\0" * 24)
    with pytest.raises(FileFormatError, match="24 bytes is not a multiple of the nuScenes record size 20"):
        read_points(tmp_path / "scan.pcd.bin")
    bad_ring = np.zeros((3, 5), "<f4")
    bad_ring[1, 4] = 0.5
    bad_ring.tofile(tmp_path / "ring.pcd.bin")
    with pytest.raises(FileFormatError, match="ring column"):
        read_points(tmp_path / "ring.pcd.bin")


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"unknown point-cloud format; expected a file ending in .ply, .pcd"):
        read_points(tmp_path / "scan.las")
    with pytest.raises(InputError, match="unknown point-cloud format"):
        write_points(tmp_path / "scan.las", _cloud().points)
    with pytest.raises(FileNotFoundError):
        read_points(tmp_path / "missing.ply")
    assert not list(tmp_path.iterdir())


def test_empty_clouds_are_refused(tmp_path):
    with pytest.raises(InputError, match="no points"):
        write_points(tmp_path / "a.ply", np.zeros((0, 3)))
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(InputError, match="no points"):
        read_points(tmp_path / "empty.bin")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(InputError, match="no points"):
        read_points(tmp_path / "empty.npy")


def test_non_finite_points_are_refused_or_dropped(tmp_path):
    data = np.random.default_rng(1).normal(size=(10, 4)).astype("<f4")
    data[[2, 7], 1] = [np.nan, np.inf]
    data.tofile(tmp_path / "nan.bin")
    with pytest.raises(InputError, match=r"2 of 10 points have non-finite .*drop_nonfinite=True"):
        read_points(tmp_path / "nan.bin")
    kept = read_points(tmp_path / "nan.bin", drop_nonfinite=True)
    keep = np.isfinite(data[:, :3]).all(1)
    assert len(kept) == 8 and np.array_equal(kept.points, data[keep, :3])
    assert np.array_equal(kept.intensity, data[keep, 3])
    np.full((3, 4), np.nan, "<f4").tofile(tmp_path / "allnan.bin")
    with pytest.raises(InputError, match="no points"):
        read_points(tmp_path / "allnan.bin", drop_nonfinite=True)


@pytest.mark.parametrize("name", ["a.bin", "a.npy", "a.ply"])
def test_point_cap(tmp_path, name):
    path = write_points(tmp_path / name, _cloud(n=10))
    assert len(read_points(path, max_points=10)) == 10
    with pytest.raises(InputError, match="10 points is more than the cap of 5"):
        read_points(path, max_points=5)


def test_garbage_files_are_format_errors(tmp_path):
    (tmp_path / "bad.ply").write_bytes(b"this is not a ply file\n" * 4)
    with pytest.raises(FileFormatError, match=r"bad.ply: open3d read no points .* valid PLY"):
        read_points(tmp_path / "bad.ply")
    (tmp_path / "bad.npy").write_bytes(b"garbage" * 10)
    with pytest.raises(FileFormatError, match="not a NumPy .npy array"):
        read_points(tmp_path / "bad.npy")
    np.save(tmp_path / "flat.npy", np.zeros((5, 2)))
    with pytest.raises(FileFormatError, match=r"expected an \(N, 3\) or \(N, 4\)"):
        read_points(tmp_path / "flat.npy")


@pytest.mark.parametrize("name", ["a.ply", "a.xyz", "a.bin", "a.pcd.bin", "a.npy"])
def test_failed_writes_leave_nothing_behind(tmp_path, name):
    points = _cloud().points
    points[3] = np.nan
    with pytest.raises(InputError, match="1 of 50 points have non-finite"):
        write_points(tmp_path / name, points)
    assert not list(tmp_path.iterdir())


def test_open3d_failure_keeps_the_old_file(tmp_path, monkeypatch):
    import open3d as o3d

    def broken(filename, cloud, **kw):
        open(filename, "wb").write(b"ply\nhalf")
        return False

    target = tmp_path / "a.ply"
    target.write_bytes(b"old")
    monkeypatch.setattr(o3d.t.io, "write_point_cloud", broken)
    with pytest.raises(OSError, match="could not write a PLY file"):
        write_points(target, _cloud())
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"old"


def test_point_cloud_checks_its_arrays():
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        PointCloud(np.zeros((4, 2)))
    with pytest.raises(InputError, match="one value per point"):
        PointCloud(np.zeros((4, 3)), intensity=np.zeros(3))
    with pytest.raises(InputError, match="whole number"):
        PointCloud(np.zeros((2, 3)), ring=[0.5, 1])


# ----------------------------------------------------------------------------------------------
# Range images
# ----------------------------------------------------------------------------------------------

def _scan(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    yaw, pitch = rng.uniform(-180, 180, n), rng.uniform(-25, 3, n)
    r = rng.uniform(1.5, 55, n)
    return _direction(yaw, pitch, r).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)


def test_projection_round_trip_keeps_pixels_and_depths():
    points, intensity = _scan()
    depth, inten = to_range_image(points, intensity)
    assert depth.shape == inten.shape == (64, 1024) and depth.dtype == np.float32
    occupied = depth > 0
    assert 5_000 < occupied.sum() < 20_000  # collisions happen
    cloud = from_range_image(depth, inten)
    assert len(cloud) == occupied.sum() and np.array_equal(cloud.ring, np.nonzero(occupied)[0])
    assert np.allclose(np.linalg.norm(cloud.points, axis=1), depth[occupied], rtol=1e-5)
    depth2, inten2 = to_range_image(cloud.points, cloud.intensity)
    assert np.array_equal(depth2 > 0, occupied)
    assert np.allclose(depth2, depth, rtol=1e-5) and np.array_equal(inten2, inten)


def test_nearest_point_wins_a_pixel():
    near, far = _direction(10, -5, 5.0), _direction(10, -5, 20.0)
    for pts, inten in (([far, near], [0.2, 0.9]), ([near, far], [0.9, 0.2])):
        depth, intensity = to_range_image(np.array(pts), np.array(inten))
        assert (depth > 0).sum() == 1
        assert np.isclose(depth.max(), 5.0) and np.isclose(intensity.max(), 0.9)


def test_rows_and_columns_follow_lidm():
    spec = RangeSpec()
    rows = {}
    for pitch in (spec.fov_up - 0.01, spec.fov_down + 0.01):
        depth, _ = to_range_image(np.array([_direction(30, pitch, 10.0)]))
        rows[pitch] = np.nonzero(depth)[0][0]
    assert list(rows.values()) == [0, spec.height - 1]
    for point, column in (([10, 0, 0], 512), ([0, 10, 0], 256), ([0, -10, 0], 768)):  # forward, left, right
        depth, _ = to_range_image(np.array([point], float))
        v, u = np.nonzero(depth)
        assert u.tolist() == [column] and v.tolist() == [math.floor((1 - 25 / 28) * 64)]
    wide = RangeSpec(height=8, width=16)
    assert to_range_image(np.array([[10.0, 0, 0]]), spec=wide)[0].shape == (8, 16)


def test_depths_outside_the_range_are_dropped():
    depth, _ = to_range_image(np.array([[0.5, 0, 0], [60.0, 0, 0], [0, 0, 0]]))
    assert not depth.any()
    image = np.zeros((64, 1024), np.float32)
    image[10, 20], image[11, 20], image[12, 20] = 0.5, 70.0, 30.0
    cloud = from_range_image(image)
    assert len(cloud) == 1 and cloud.ring.tolist() == [12] and cloud.intensity is None
    with pytest.raises(InputError, match="shape"):
        from_range_image(np.zeros((32, 1024)))


def test_log_depth_round_trip_and_no_return():
    spec = RangeSpec()
    depth = np.zeros((4, 8), np.float32)
    depth[0] = np.linspace(spec.min_depth, spec.max_depth, 8)
    depth[1] = np.geomspace(1.1, 50, 8)
    depth[2, 0] = 0.5  # closer than min_depth: no return
    n = log_depth(depth, spec)
    assert n.dtype == np.float32
    assert np.isclose(n[0, 0], VALID_LOW) and np.isclose(n[0, -1], 1.0)
    assert (n[2:] == NO_RETURN).all() and (n[:2] >= VALID_LOW).all()
    back = exp_depth(n, spec)
    assert np.allclose(back[:2], depth[:2], rtol=1e-5) and not back[2:].any()
    assert np.allclose(exp_depth(np.array([THRESHOLD - 0.01, THRESHOLD + 0.01, -0.7, 1.5])), [0, 1, 1, 56])


def test_beam_subsample_keeps_a_quarter_of_the_rows():
    depth = np.ones((64, 1024), np.float32)
    sparse = beam_subsample(depth)
    kept = np.nonzero(sparse.any(1))[0]
    assert len(kept) == 16 and kept.tolist() == list(range(0, 64, 4)) and depth.all()
    assert np.array_equal(beam_mask(64), sparse[:, 0] > 0)
    assert beam_subsample(np.ones((2, 64, 1024)), keep_every=2).any(-1).sum() == 64
    with pytest.raises(InputError, match="keep_every"):
        beam_mask(64, 0)


@pytest.mark.parametrize("kw, words", [
    ({"height": 0}, "height"), ({"width": 2.5}, "width"), ({"fov_up": -30.0}, "fov_down < fov_up"),
    ({"min_depth": 0.0}, "0 < min_depth < max_depth"), ({"max_depth": 0.5}, "min_depth < max_depth"),
    ({"max_depth": math.inf}, "finite"),
])
def test_range_spec_validation(kw, words):
    with pytest.raises(InputError, match=words):
        RangeSpec(**kw)
