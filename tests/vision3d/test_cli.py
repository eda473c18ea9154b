"""`ditlab vision3d` on tiny networks, in-process through the `ditlab` root's `main` (its exit codes: 2 and one line
for bad input, 1 when some files of several failed): shapes as PLY + GLB, LiDAR generate / complete / densify,
meshing, batches over folders, info."""

import json
from importlib.metadata import entry_points

import numpy as np
import pytest

from ditlab.vision3d.data import CLASSES
from ditlab.vision3d.io import PointCloud, read_points, write_points
from ditlab.vision3d.pipeline import ShapeGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ditlab(vertical_cli):
    """run(*args): `ditlab vision3d ARGS` through the root's `main`, with only this vertical plugged in."""
    return vertical_cli("vision3d")


def errors(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith(("error", "internal error"))]


def assert_refused(r, message: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    (line,) = errors(r)
    assert line.startswith("error: ") and message in line, line


@pytest.fixture(scope="module")
def scans(tiny_scan, tmp_path_factory):
    """Scan files for the tiny sensor: full.bin (KITTI), sparse.bin (every 4th beam), other.npy, cut.bin (17 bytes),
    empty.npy, nan.npy."""
    folder = tmp_path_factory.mktemp("scans")
    cloud = PointCloud(tiny_scan.points, tiny_scan.point_intensity)
    write_points(folder / "full.bin", cloud)
    write_points(folder / "sparse.bin", cloud.select(tiny_scan.ring % 4 == 0))
    np.save(folder / "other.npy", tiny_scan.points[::2])
    (folder / "cut.bin").write_bytes(bytes(17))
    np.save(folder / "empty.npy", np.zeros((0, 3), np.float32))
    bad = tiny_scan.points.copy()
    bad[5, 1] = np.nan
    np.save(folder / "nan.npy", bad)
    return folder


def sphere(n=600, seed=0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)


def rows_as_set(a) -> set:
    return set(map(tuple, np.asarray(a, np.float32).tolist()))


def test_the_root_finds_the_vertical_by_its_entry_point():
    from ditlab.vision3d.cli import app

    (ep,) = [ep for ep in entry_points(group="ditlab.commands") if ep.name == "vision3d"]
    assert ep.load() is app


def test_info_prints_the_classes_and_formats(ditlab):
    r = ditlab("info")
    assert r.returncode == 0, r.stderr
    assert f"shape classes: {', '.join(CLASSES)}" in r.stdout
    assert ".pcd.bin" in r.stdout and "networks:" in r.stdout


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

def test_generate_writes_a_cloud_and_a_surface_per_shape(ditlab, tiny_vision3d, tmp_path):
    out, js = tmp_path / "shapes", tmp_path / "run.json"
    r = ditlab("generate", "--class", "chair", "-n", 2, "--points", 256, "--out", out, "--weights",
               tiny_vision3d["shape"], "--mesh", "ball_pivoting", "--json", js)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chair_000.glb", "chair_000.ply", "chair_001.glb",
                                                     "chair_001.ply"]
    for i in range(2):
        assert (out / f"chair_{i:03d}.glb").read_bytes()[:4] == b"glTF"
    want = ShapeGenerator(tiny_vision3d["shape"]).generate("chair", 2, 256, seed=0)
    for i in range(2):
        assert np.allclose(read_points(out / f"chair_{i:03d}.ply").points, want[i], atol=1e-5)
    record = json.loads(js.read_text())
    assert record["class"] == "chair" and record["count"] == 2 and len(record["files"]) == 4
    assert record["mesh_failed"] == {} and "wrote 2 chair clouds" in r.stdout


def test_generate_without_surfaces_in_another_format_and_seed(ditlab, tiny_vision3d, tmp_path):
    r = ditlab("generate", "--class", "lamp", "--points", 128, "--out", tmp_path, "--weights",
               tiny_vision3d["shape-baseline"], "--mesh", "none", "--format", "npy", "--seed", 3, "--steps", 1)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["lamp_000.npy"]
    want = ShapeGenerator(tiny_vision3d["shape-baseline"], steps=1).generate("lamp", 1, 128, seed=3)[0]
    assert np.allclose(np.load(tmp_path / "lamp_000.npy"), want, atol=1e-5)


def test_shapes_without_a_surface_are_kept_and_reported(ditlab, tiny_vision3d, tmp_path, monkeypatch):
    from ditlab.core.errors import InputError
    from ditlab.vision3d import surfaces

    def no_surface(points, method="poisson", **kw):
        raise InputError("cannot build a surface from 256 points: they are collinear or coincide")

    monkeypatch.setattr(surfaces, "reconstruct", no_surface)
    js = tmp_path / "run.json"
    r = ditlab("generate", "--class", "table", "-n", 2, "--points", 256, "--out", tmp_path / "out", "--weights",
               tiny_vision3d["shape"], "--json", js)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table_000.ply", "table_001.ply"]
    assert "no surface for table_000: cannot build a surface" in r.stderr and not errors(r)
    assert set(json.loads(js.read_text())["mesh_failed"]) == {"table_000", "table_001"}


@pytest.mark.parametrize(("args", "message"), [
    (("--class", "sofa"), "unknown shape class 'sofa'; expected one of"),
    (("--class", "chair", "-n", 0), "shape count must lie in [1, 1000], got 0"),
    (("--class", "chair", "-n", 1001), "shape count must lie in [1, 1000], got 1001"),
    (("--class", "chair", "--points", 4), "points per shape must lie in"),
    (("--class", "chair", "--mesh", "marching"), "--mesh must be one of"),
    (("--class", "chair", "--format", "obj"), "--format must be one of"),
    (("--class", "chair", "--steps", 0), "steps must lie in [1, 1000]"),
    (("--class", "chair", "--guidance", 50), "guidance must lie in [0, 20]"),
    (("--class", "chair", "--precision", "fp64"), "fp64"),
])
def test_bad_generate_requests_exit_2_with_one_line_and_write_nothing(ditlab, tiny_vision3d, tmp_path, args,
                                                                      message):
    out = tmp_path / "out"
    r = ditlab("generate", *args, "--out", out, "--weights", tiny_vision3d["shape"])
    assert_refused(r, message)
    assert not out.exists()


def test_generate_with_missing_weights_names_the_folder(ditlab, tmp_path):
    r = ditlab("generate", "--class", "chair", "--out", tmp_path / "out", "--weights", tmp_path / "no-such-net")
    assert_refused(r, "no-such-net")


# ----------------------------------------------------------------------------------------------
# LiDAR
# ----------------------------------------------------------------------------------------------

def test_lidar_generate_writes_kitti_scans_and_views(ditlab, tiny_vision3d, tmp_path):
    js = tmp_path / "run.json"
    r = ditlab("lidar", "generate", "-n", 2, "--out", tmp_path, "--weights", tiny_vision3d["lidar"], "--views",
               "--json", js)
    assert r.returncode == 0, r.stderr
    for i in range(2):
        path = tmp_path / f"scan_{i:03d}.bin"
        assert path.stat().st_size > 0 and path.stat().st_size % 16 == 0
        cloud = read_points(path)
        r_ = np.linalg.norm(cloud.points, axis=1)
        assert (r_ >= 1 - 1e-3).all() and (r_ <= 56 + 1e-3).all()  # the network sensor's depth range
        for tag in ("bev", "range"):
            assert (tmp_path / f"scan_{i:03d}_{tag}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text())["count"] == 2


def test_lidar_generate_other_formats(ditlab, tiny_vision3d, tmp_path):
    r = ditlab("lidar", "generate", "--out", tmp_path, "--weights", tiny_vision3d["lidar"], "--format", "pcd.bin")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "scan_000.pcd.bin"
    assert path.stat().st_size % 20 == 0 and len(read_points(path)) > 0


def test_lidar_complete_keeps_the_rest_of_the_scan(ditlab, tiny_vision3d, scans, tmp_path):
    out, js = tmp_path / "done.bin", tmp_path / "figures.json"
    r = ditlab("lidar", "complete", scans / "full.bin", "--out", out, "--weights", tiny_vision3d["lidar"],
               "--sector", 90, 180, "--json", js)
    assert r.returncode == 0, r.stderr
    src, done = read_points(scans / "full.bin"), read_points(out)
    azimuth = np.degrees(np.arctan2(src.points[:, 1], src.points[:, 0])) % 360
    outside = (azimuth < 85) | (azimuth > 185)  # a column's width (5.6 deg) away from the sector's edges
    assert rows_as_set(src.points[outside]) <= rows_as_set(done.points)
    figures = json.loads(js.read_text())
    assert figures["input_points"] == len(src) and figures["output_points"] == len(done)
    assert 0 < figures["generated_points"] < len(done)


def test_lidar_densify_adds_beams(ditlab, tiny_vision3d, scans, tmp_path):
    out = tmp_path / "dense.ply"
    r = ditlab("lidar", "densify", scans / "sparse.bin", "--out", out, "--weights", tiny_vision3d["lidar"])
    assert r.returncode == 0, r.stderr
    src, dense = read_points(scans / "sparse.bin"), read_points(out)
    assert len(dense) > len(src) and rows_as_set(src.points) <= rows_as_set(dense.points)
    assert f"wrote {out}" in r.stdout


@pytest.mark.parametrize(("name", "message"), [
    ("cut.bin", "cut.bin: 17 bytes is not a multiple of the KITTI record size 16"),
    ("empty.npy", "empty.npy: no points"),
    ("nan.npy", "nan.npy: 1 of"),
    ("missing.bin", "missing.bin"),
])
@pytest.mark.parametrize("task", ["complete", "densify"])
def test_bad_scan_files_exit_2_and_leave_no_output(ditlab, tiny_vision3d, scans, tmp_path, name, message, task):
    out = tmp_path / "out.bin"
    r = ditlab("lidar", task, scans / name, "--out", out, "--weights", tiny_vision3d["lidar"])
    assert_refused(r, message)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


@pytest.mark.parametrize(("args", "message"), [
    (("complete", "--sector", 30, 30), "is empty"),
    (("complete", "--sector", "nan", 30), "must be finite"),
    (("densify", "--keep-every", 3), "keep_every must be >= 2 and divide the network's 16 beams, got 3"),
    (("complete", "--format", "las"), "--format must be one of"),
    (("complete", "--device", "tpu"), "--device must be cpu, cuda, cuda:N or auto"),
])
def test_bad_lidar_options_exit_2(ditlab, tiny_vision3d, scans, tmp_path, args, message):
    r = ditlab("lidar", args[0], scans / "full.bin", *args[1:], "--out", tmp_path / "o.bin", "--weights",
               tiny_vision3d["lidar"])
    assert_refused(r, message)
    assert not (tmp_path / "o.bin").exists()


def test_a_non_point_file_output_is_refused(ditlab, tiny_vision3d, scans, tmp_path):
    r = ditlab("lidar", "complete", scans / "full.bin", "--out", tmp_path / "o.las", "--weights",
               tiny_vision3d["lidar"])
    assert_refused(r, "--out must be a point file")
    assert list(tmp_path.iterdir()) == []


def test_one_output_file_for_several_inputs_is_refused(ditlab, tiny_vision3d, scans, tmp_path):
    r = ditlab("lidar", "complete", scans / "full.bin", scans / "sparse.bin", "--out", tmp_path / "o.bin",
               "--weights", tiny_vision3d["lidar"])
    assert not (tmp_path / "o.bin").exists()
    assert_refused(r, "--out must be a point file")


def test_several_scans_with_a_bad_one_record_it_and_go_on(ditlab, tiny_vision3d, scans, tmp_path):
    out = tmp_path / "done"
    r = ditlab("lidar", "complete", scans / "full.bin", scans / "cut.bin", scans / "other.npy", "--out", out,
               "--weights", tiny_vision3d["lidar"], "--format", "npy")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["full_completed.npy", "manifest.jsonl", "other_completed.npy"]
    records = {x["id"]: x for x in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert records["cut.bin"]["status"] == "error" and "17 bytes" in records["cut.bin"]["error"]
    assert records["full.bin"]["status"] == records["other.npy"]["status"] == "ok"
    assert records["full.bin"]["output_points"] == len(np.load(out / "full_completed.npy"))
    assert "FAILED" in r.stdout and "cut.bin" in r.stdout


def test_two_inputs_with_one_stem_are_refused(ditlab, tiny_vision3d, scans, tmp_path):
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "full.npy", np.ones((4, 3), np.float32))
    r = ditlab("lidar", "complete", scans / "full.bin", tmp_path / "in" / "full.npy", "--out", tmp_path / "done",
               "--weights", tiny_vision3d["lidar"])
    assert_refused(r, "two inputs would write the same output name")
    assert not (tmp_path / "done").exists()


# ----------------------------------------------------------------------------------------------
# Meshes and batches
# ----------------------------------------------------------------------------------------------

def test_mesh_writes_a_glb_around_the_cloud(ditlab, tmp_path):
    write_points(tmp_path / "ball.ply", sphere())
    js = tmp_path / "m.json"
    r = ditlab("mesh", tmp_path / "ball.ply", "--out", tmp_path / "ball.glb", "--json", js)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ball.glb").read_bytes()[:4] == b"glTF"
    figures = json.loads(js.read_text())
    assert figures["method"] == "poisson" and figures["triangles"] > 500 and figures["points"] == 600


def test_mesh_refuses_a_bad_method_and_a_bad_output(ditlab, tmp_path):
    write_points(tmp_path / "ball.ply", sphere())
    assert_refused(ditlab("mesh", tmp_path / "ball.ply", "--out", tmp_path / "b.glb", "--method", "alpha"),
                   "--method must be one of")
    assert_refused(ditlab("mesh", tmp_path / "ball.ply", "--out", tmp_path / "b.gif"), "--out must be a mesh file")
    assert not list(tmp_path.glob("b.*"))


def test_batch_mesh_records_the_bad_file_and_goes_on(ditlab, scans, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_points(src / "ball.ply", sphere())
    write_points(src / "other.xyz", sphere(seed=1) * 2)
    (src / "cut.bin").write_bytes(bytes(17))
    (src / "notes.txt").write_text("not a cloud")  # not a point file: not an input
    r = ditlab("batch", src, out, "--task", "mesh")
    assert r.returncode == 1, (r.stdout, r.stderr)
    records = {x["id"]: x for x in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert set(records) == {"ball.ply", "cut.bin", "other.xyz"}
    assert records["ball.ply"]["status"] == records["other.xyz"]["status"] == "ok"
    assert records["cut.bin"]["status"] == "error" and "record size" in records["cut.bin"]["error"]
    assert sorted(p.name for p in out.glob("*.glb")) == ["ball.glb", "other.glb"]
    assert (out / "ball.glb").read_bytes()[:4] == b"glTF"
    again = ditlab("batch", src, out, "--task", "mesh")
    assert again.returncode == 1 and "2 already done" in again.stdout


def test_batch_densify_over_a_folder(ditlab, tiny_vision3d, scans, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.bin").write_bytes((scans / "sparse.bin").read_bytes())
    r = ditlab("batch", src, out, "--task", "densify", "--weights", tiny_vision3d["lidar"], "--format", "ply")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert len(read_points(out / "a_dense.ply")) > len(read_points(src / "a.bin"))


@pytest.mark.parametrize(("args", "message"), [
    (("batch", "{tmp}", "{tmp}/out", "--task", "upscale"), "--task must be one of"),
    (("batch", "{tmp}/nowhere", "{tmp}/out"), "no such input folder"),
    (("batch", "{tmp}", "{tmp}/out"), "holds no inputs"),
    (("train", "shape-unet", "--steps", 1), "unknown network 'shape-unet"),
    (("benchmark", "--only", "speed,colour"), "--only must be one or more of"),
])
def test_bad_batch_train_and_benchmark_requests_exit_2(ditlab, tmp_path, args, message):
    r = ditlab(*[a.format(tmp=tmp_path) if isinstance(a, str) else a for a in args])
    assert_refused(r, message)
    assert not (tmp_path / "out").exists()
