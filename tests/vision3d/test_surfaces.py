import json
import struct

import numpy as np
import pytest

from ditlab.core.errors import InputError
from ditlab.vision3d import surfaces
from ditlab.vision3d.data import open3d_module, shape_points
from ditlab.vision3d.surfaces import bev_image, point_figure, range_view_image, reconstruct, write_mesh


@pytest.fixture(scope="module")
def sphere_points():
    o3d = open3d_module()
    o3d.utility.random.seed(0)
    return np.asarray(o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=30).sample_points_poisson_disk(2048)
                      .points)


@pytest.fixture(scope="module")
def chair_surface():
    return reconstruct(shape_points("chair", 0, 2048))


@pytest.mark.parametrize("method", surfaces.METHODS)
def test_sphere_is_reconstructed_on_the_sphere(sphere_points, method):
    s = reconstruct(sphere_points, method=method)
    assert (s.method_used, s.fallback, s.note) == (method, False, "")
    r = np.linalg.norm(np.asarray(s.mesh.vertices), axis=1)
    assert np.abs(r - 1).mean() < 0.01 and np.abs(r - 1).max() < 0.1
    assert 2000 < len(s.mesh.triangles) < 20000  # ~2 per point


def test_chair_gives_a_mesh_around_the_chair(chair_surface):
    s = chair_surface
    assert s.method_used == "poisson" and not s.fallback and len(s.mesh.triangles) > 1000
    v = np.asarray(s.mesh.vertices)
    assert np.abs(v).max() < 0.56  # the cropped, slightly enlarged canonical box


def test_duplicated_points_are_merged(sphere_points):
    s = reconstruct(np.repeat(sphere_points[:500], 2, axis=0), method="ball_pivoting")
    assert s.method_used == "ball_pivoting" and len(np.asarray(s.mesh.vertices)) <= 500


def test_too_few_triangles_falls_back_to_the_other_method():
    pts = np.random.default_rng(0).normal(size=(10, 3))  # ball pivoting closes only a few triangles on 10 points
    s = reconstruct(pts, method="ball_pivoting")
    assert s.method_used == "poisson" and s.fallback
    assert "ball_pivoting gave" in s.note and "used poisson instead" in s.note


def _fail(*args, **kwargs):
    raise RuntimeError("no surface today\nsecond line")


def test_both_methods_failing_gives_the_convex_hull(monkeypatch, sphere_points):
    o3d = open3d_module()
    monkeypatch.setattr(o3d.geometry.TriangleMesh, "create_from_point_cloud_poisson", _fail)
    monkeypatch.setattr(o3d.geometry.TriangleMesh, "create_from_point_cloud_ball_pivoting",
                        lambda *a, **k: o3d.geometry.TriangleMesh())
    s = reconstruct(sphere_points[:200])
    assert s.method_used == "convex_hull" and s.fallback and len(s.mesh.triangles) > 100
    assert "poisson failed (no surface today)" in s.note and "ball_pivoting gave 0 triangles" in s.note
    flat = np.c_[np.random.default_rng(0).random((100, 2)), np.zeros(100)]
    with pytest.raises(InputError, match="cannot build a surface from 100 points: .*convex hull failed"):
        reconstruct(flat)  # no hull of coplanar points


def test_bad_clouds_are_refused():
    with pytest.raises(InputError, match="at least 4 points"):
        reconstruct(np.eye(3))
    with pytest.raises(InputError, match="cannot build a surface from 8 points: only 3 are distinct"):
        reconstruct(np.tile(np.eye(3), (3, 1))[:8])
    with pytest.raises(InputError, match="cannot build a surface from 50 points: they are collinear"):
        reconstruct(np.outer(np.linspace(0, 1, 50), [1.0, 2.0, 3.0]))
    pts = np.random.default_rng(0).normal(size=(20, 3))
    pts[3, 1] = np.nan
    with pytest.raises(InputError, match="finite"):
        reconstruct(pts)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        reconstruct(np.zeros((10, 2)))
    with pytest.raises(InputError, match="unknown surface method 'marching'"):
        reconstruct(np.random.default_rng(0).normal(size=(20, 3)), method="marching")


def _glb(path):
    """(header, JSON, BIN) of a .glb, checking the chunk layout."""
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert (magic, version, length) == (b"glTF", 2, len(data))
    jlen, jtype = struct.unpack("<I4s", data[12:20])
    blen, btype = struct.unpack("<I4s", data[20 + jlen:28 + jlen])
    assert (jtype, btype) == (b"JSON", b"BIN\0") and jlen % 4 == 0 and 28 + jlen + blen == len(data)
    return json.loads(data[20:20 + jlen]), data[28 + jlen:]


def test_glb_is_a_valid_gltf_binary_that_reads_back(tmp_path, chair_surface):
    o3d = open3d_module()
    mesh = chair_surface.mesh
    path = write_mesh(tmp_path / "chair.glb", mesh)
    assert path.read_bytes()[:4] == b"glTF"
    gltf, blob = _glb(path)
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert set(attributes) == {"POSITION", "NORMAL", "COLOR_0"}
    indices = gltf["accessors"][0]
    view = gltf["bufferViews"][indices["bufferView"]]
    idx = np.frombuffer(blob, np.uint32, indices["count"], view["byteOffset"])
    assert idx.max() < gltf["accessors"][attributes["POSITION"]]["count"]
    assert indices["count"] == 3 * len(mesh.triangles)
    back = o3d.io.read_triangle_mesh(str(path))
    assert len(back.triangles) == len(mesh.triangles)
    assert not mesh.has_vertex_colors()  # the caller's mesh is left as it was
    gltf_path = write_mesh(tmp_path / "chair.gltf", mesh)
    assert len(o3d.io.read_triangle_mesh(str(gltf_path)).triangles) == len(mesh.triangles)


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl"])
def test_other_formats_read_back(tmp_path, chair_surface, suffix):
    o3d = open3d_module()
    path = write_mesh(tmp_path / f"chair{suffix.upper()}", chair_surface.mesh)
    assert len(o3d.io.read_triangle_mesh(str(path)).triangles) == len(chair_surface.mesh.triangles)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_bad_mesh_writes_leave_nothing_behind(tmp_path, monkeypatch, chair_surface):
    o3d = open3d_module()
    with pytest.raises(InputError, match=r"unknown mesh file type 'chair.fbx'.*\.glb"):
        write_mesh(tmp_path / "chair.fbx", chair_surface.mesh)
    with pytest.raises(InputError, match="empty mesh"):
        write_mesh(tmp_path / "empty.obj", o3d.geometry.TriangleMesh())

    def half_written(path, mesh, **kwargs):
        with open(path, "w") as f:
            f.write("# half")
        return False

    monkeypatch.setattr(o3d.io, "write_triangle_mesh", half_written)
    with pytest.raises(OSError, match="could not write"):
        write_mesh(tmp_path / "chair.obj", chair_surface.mesh)
    monkeypatch.setattr(surfaces, "_gltf_bytes", _fail)
    with pytest.raises(RuntimeError):
        write_mesh(tmp_path / "chair.glb", chair_surface.mesh)
    assert list(tmp_path.iterdir()) == []


def test_point_figure_is_one_scatter_subsampled_deterministically():
    pts = np.random.default_rng(0).normal(size=(5000, 3))
    fig = point_figure(pts, title="cloud", max_points=1000)
    assert len(fig.data) == 1 and fig.data[0].type == "scatter3d" and fig.data[0].mode == "markers"
    assert len(fig.data[0].x) == 1000 and fig.layout.scene.aspectmode == "data"
    assert np.allclose(fig.data[0].marker.color, fig.data[0].y)  # height is y by default
    assert np.array_equal(fig.data[0].x, point_figure(pts, max_points=1000).data[0].x)
    lidar = point_figure(pts[:100], up="z")
    assert np.allclose(lidar.data[0].marker.color, lidar.data[0].z) and lidar.layout.scene.camera.up.z == 1
    values = np.arange(100.0)
    assert np.allclose(point_figure(pts[:100], colors=values).data[0].marker.color, values)
    with pytest.raises(InputError, match="one value per point"):
        point_figure(pts[:100], colors=np.zeros(99))
    with pytest.raises(InputError, match="up must be"):
        point_figure(pts, up="x")


def test_bev_image_puts_forward_up_and_left_left():
    pts = np.array([[10.0, 0.0, 1.0], [0.0, 10.0, -1.0], [0.0, 0.0, 0.0]])
    img = bev_image(pts, extent=20.0, cell=1.0)
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8
    lit = {tuple(rc) for rc in np.argwhere(img.any(2))}
    assert lit == {(10, 20), (20, 10), (20, 20)}  # forward: row 10 (up); left: column 10
    assert (img[0, 0] == 0).all()  # an empty cell is black
    assert img[10, 20].astype(int).sum() > img[20, 10].astype(int).sum()  # higher is brighter
    by_intensity = bev_image(pts, intensity=[0.0, 1.0, 0.5], extent=20.0, cell=1.0)
    assert by_intensity[20, 10].astype(int).sum() > by_intensity[10, 20].astype(int).sum()
    assert bev_image(np.zeros((0, 3))).shape == (500, 500, 3)
    with pytest.raises(InputError, match="pixels a side"):
        bev_image(pts, extent=1000.0, cell=0.01)


def test_range_view_image_nearer_is_brighter_and_no_return_is_black():
    depth = np.array([[0.0, 5.0, 40.0, 200.0]] * 3)
    img = range_view_image(depth)
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    assert (img[:, 0] == 0).all() and img[:, 3].any()
    brightness = img[0].astype(int).sum(1)
    assert brightness[1] > brightness[2] > brightness[3]
    with pytest.raises(InputError, match="finite and >= 0"):
        range_view_image(-depth)
    with pytest.raises(InputError, match=r"\(H, W\)"):
        range_view_image(np.zeros(5))
