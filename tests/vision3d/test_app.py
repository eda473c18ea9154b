"""The vision3d page without a browser: it builds; its handlers generate shapes (point view, GLB, zip of PLYs and
GLBs, notes) and generate / complete / densify LiDAR scans on tiny networks; bad inputs and uploads are refused
with a message naming the problem, writing nothing."""

import importlib.util
import tempfile
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest

from ditlab.core import ui
from ditlab.core.errors import InputError
from ditlab.vision3d import app
from ditlab.vision3d.io import PointCloud, read_points, write_points

APPS = Path(__file__).resolve().parents[2] / "apps"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def page(tiny_vision3d, tmp_path, monkeypatch):
    """The page on the tiny networks, a fresh model cache, its request folders under `tmp_path / "out"`."""
    monkeypatch.setattr(app, "WEIGHTS", {"shape": tiny_vision3d["shape"], "lidar": tiny_vision3d["lidar"]})
    ui.MODELS.clear()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(out))
    yield out
    ui.MODELS.clear()


@pytest.fixture
def uploads(tiny_scan, tmp_path):
    """Scan files as an upload folder would hold them."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    cloud = PointCloud(tiny_scan.points, tiny_scan.point_intensity)
    write_points(folder / "street.bin", cloud)
    write_points(folder / "sparse.pcd", cloud.select(tiny_scan.ring % 4 == 0))
    (folder / "cut.bin").write_bytes(bytes(17))
    (folder / "scan.las").write_bytes(bytes(64))
    np.save(folder / "empty.npy", np.zeros((0, 3), np.float32))
    return folder


def shapes(shape_class="chair", count=2, steps=None, guidance=None, mesh="none", seed=0, show=1):
    return app.run_shapes(shape_class, count, steps, guidance, mesh, seed, show)


def lidar(task="generate", upload=None, start=135, end=225, steps=None, seed=0):
    return app.run_lidar(task, None if upload is None else str(upload), start, end, steps, seed)


def rows_as_set(a) -> set:
    return set(map(tuple, np.asarray(a, np.float32).tolist()))


def test_the_page_and_its_launcher_build():
    assert app.PAGE.route == "vision3d"
    blocks = ui.page_app(app.PAGE)
    assert isinstance(blocks, gr.Blocks)
    assert {"shapes", "lidar"} <= {fn.api_name for fn in blocks.fns.values()}
    spec = importlib.util.spec_from_file_location("vision3d_launcher", APPS / "vision3d.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    assert isinstance(launcher.build(), gr.Blocks)


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

def test_run_shapes_returns_the_view_the_surface_the_zip_and_notes(page):
    fig, glb, zipped, notes = shapes("car", 2, mesh="ball_pivoting", show=2)
    assert isinstance(fig, go.Figure) and "car 2" in fig.layout.title.text
    assert Path(glb).name == "car_001.glb" and Path(glb).read_bytes()[:4] == b"glTF"
    assert Path(glb).is_relative_to(page) and Path(zipped).is_relative_to(page)
    with zipfile.ZipFile(zipped) as z:
        names = sorted(z.namelist())
        assert names == ["car_000.glb", "car_000.ply", "car_001.glb", "car_001.ply"]
        ply = Path(zipped).parent / "car_001.ply"
        assert z.read("car_001.ply") == ply.read_bytes()
    assert read_points(ply).points.shape == (2048, 3)
    assert "**2 cars** of 2048 points" in notes and "showing shape 2" in notes
    assert "2 steps, guidance 1" in notes  # the network's own settings


def test_run_shapes_without_surfaces_zips_the_clouds(page):
    fig, glb, zipped, notes = shapes("lamp", 1, steps=1, guidance=3)
    assert isinstance(fig, go.Figure) and glb is None
    with zipfile.ZipFile(zipped) as z:
        assert z.namelist() == ["lamp_000.ply"]
    assert "**1 lamp** of" in notes and "1 steps, guidance 3" in notes


def test_shapes_are_seeded_and_the_network_loaded_once(page, monkeypatch):
    from ditlab.vision3d import pipeline

    loads = []
    real = pipeline.load_model
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    a, b, c = shapes(seed=4), shapes(seed=4), shapes(seed=5)
    x, y, z = (np.asarray(f[0].data[0].x) for f in (a, b, c))
    assert np.allclose(x, y) and not np.allclose(x, z)
    assert len(loads) == 1  # the page's model cache


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shape_class": "sofa"}, "unknown shape class 'sofa'"),
    ({"count": 0}, "count must be from 1 to 16, got 0"),
    ({"count": 17}, "count must be from 1 to 16, got 17"),
    ({"count": None}, "count is empty"),
    ({"show": 3}, "shape to show must be from 1 to 2, got 3"),
    ({"mesh": "marching"}, "surface method must be one of"),
    ({"steps": 500}, "steps must be from 1 to 200"),
    ({"guidance": 30}, "guidance must lie in [0, 20]"),
    ({"seed": -1}, "seed must be from 0"),
])
def test_bad_shape_requests_are_refused_with_a_message_and_nothing_written(page, kwargs, message):
    with pytest.raises(gr.Error) as e:
        shapes(**kwargs)
    assert message in str(e.value) and "internal error" not in str(e.value)
    assert isinstance(e.value.__cause__, InputError)
    assert list(page.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# LiDAR
# ----------------------------------------------------------------------------------------------

def test_run_lidar_generates_a_scan_with_its_views(page):
    bev, rng, result, notes = lidar("generate", seed=2)
    for p in (bev, rng):
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).is_relative_to(page)
    assert Path(result).name == "generated_generate.bin"
    size = Path(result).stat().st_size
    assert size > 0 and size % 16 == 0
    n = len(read_points(result))
    assert f"**generate**: {n:,} points ({n:,} generated)" in notes


def test_run_lidar_completes_an_upload_keeping_its_points(page, uploads):
    bev, _, result, notes = lidar("complete", uploads / "street.bin", 90, 180, seed=1)
    assert Path(result).name == "street_complete.bin" and Path(bev).name == "street_complete_bev.png"
    src, done = read_points(uploads / "street.bin"), read_points(result)
    azimuth = np.degrees(np.arctan2(src.points[:, 1], src.points[:, 0])) % 360
    outside = (azimuth < 85) | (azimuth > 185)
    assert rows_as_set(src.points[outside]) <= rows_as_set(done.points)
    reflectance = dict(zip(map(tuple, done.points.tolist()), done.intensity.tolist(), strict=True))
    kept = [reflectance[p] for p in map(tuple, src.points[outside].tolist())]
    assert np.array_equal(kept, src.intensity[outside])  # with their own reflectance
    assert "kept as they were" in notes


def test_run_lidar_densifies_an_upload(page, uploads):
    _, _, result, notes = lidar("densify", uploads / "sparse.pcd")
    src, dense = read_points(uploads / "sparse.pcd"), read_points(result)
    assert Path(result).name == "sparse_densify.bin"
    assert len(dense) > len(src) and rows_as_set(src.points) <= rows_as_set(dense.points)
    assert f"{len(dense):,} points ({len(dense) - len(src):,} generated)" in notes


@pytest.mark.parametrize(("task", "upload", "sector", "message"), [
    ("complete", None, (135, 225), "complete needs a scan: upload"),
    ("densify", None, (135, 225), "densify needs a scan: upload"),
    ("complete", "cut.bin", (135, 225), "cut.bin: 17 bytes is not a multiple of the KITTI record size 16"),
    ("densify", "cut.bin", (135, 225), "17 bytes is not a multiple"),
    ("complete", "scan.las", (135, 225), "scan.las: unsupported file type"),
    ("complete", "empty.npy", (135, 225), "empty.npy: no points"),
    ("complete", "gone.bin", (135, 225), "gone.bin: the upload did not arrive"),
    ("complete", "street.bin", (30, 30), "is empty"),
    ("complete", "street.bin", (float("nan"), 30), "must be finite"),
    ("upscale", None, (135, 225), "unknown LiDAR task 'upscale'"),
])
def test_bad_lidar_requests_are_refused_with_a_message_and_nothing_written(page, uploads, task, upload, sector,
                                                                           message):
    with pytest.raises(gr.Error) as e:
        lidar(task, None if upload is None else uploads / upload, *sector)
    assert message in str(e.value) and "internal error" not in str(e.value)
    assert str(uploads) not in str(e.value)  # the server's upload folder is never shown
    assert list(page.iterdir()) == []


def test_uploads_over_the_size_cap_are_refused_before_reading(page, uploads, monkeypatch):
    monkeypatch.setattr(app, "MAX_UPLOAD", 1000)
    with pytest.raises(gr.Error, match="this app accepts at most"):
        lidar("complete", uploads / "street.bin")
    assert list(page.iterdir()) == []


@pytest.mark.parametrize("start", [None, ""])
def test_an_empty_sector_box_gets_a_message(page, uploads, start):
    with pytest.raises(gr.Error) as e:
        lidar("complete", uploads / "street.bin", start, 225)
    assert "internal error" not in str(e.value) and "sector" in str(e.value)
