"""Shape and LiDAR generation on tiny networks: loading, per-sample seeding, input checks, sector completion and
beam densification keeping the input's own points, the range-image encoding and azimuth sectors."""

import json
import shutil

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.core.weights import save_model
from ditlab.vision3d.io import PointCloud, RangeSpec, from_range_image, to_range_image
from ditlab.vision3d.models import PointDiT, PointNetDiffusion, RangeDiT
from ditlab.vision3d.pipeline import (
    MAX_SCANS,
    MAX_SHAPES,
    LidarGenerator,
    LidarScan,
    ShapeGenerator,
    decode_scan,
    encode_scan,
    load_model,
    sector_columns,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = RangeSpec(16, 64)  # the tiny RangeDiT's sensor: default field of view and depth range
POINTS = 64  # points per generated shape: the tiny networks take any number


@pytest.fixture(scope="module")
def shapes(tiny_vision3d):
    return ShapeGenerator(tiny_vision3d["shape"])


@pytest.fixture(scope="module")
def lidar(tiny_vision3d):
    return LidarGenerator(tiny_vision3d["lidar"])


@pytest.fixture(scope="module")
def scan_cloud(tiny_scan):
    return PointCloud(tiny_scan.points, tiny_scan.point_intensity, tiny_scan.ring)


def column_of(points: np.ndarray, width: int = 64) -> np.ndarray:
    """The range-image column of each point (LiDM: x forward lands mid-image, +y to the left of it)."""
    yaw = -np.arctan2(points[:, 1].astype(np.float64), points[:, 0])
    return np.clip(np.floor(0.5 * (yaw / np.pi + 1) * width).astype(int), 0, width - 1)


def rows_as_set(a: np.ndarray) -> set:
    return set(map(tuple, np.asarray(a, np.float32).tolist()))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "cls"), [("shape", PointDiT), ("shape-baseline", PointNetDiffusion),
                                           ("lidar", RangeDiT)])
def test_load_model_builds_the_class_its_config_names(tiny_vision3d, kind, cls):
    model = load_model(tiny_vision3d[kind])
    assert type(model) is cls and not model.training
    assert model.config.sample_steps == 2
    again = load_model(tiny_vision3d[kind])
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same file read twice


def test_load_model_refuses_a_config_naming_an_unknown_class(tiny_vision3d, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_vision3d["shape"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(InputError, match=r"names class 'UNet2DModel'; expected one of \['PointDiT'"):
        load_model(folder)


def test_load_model_of_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_generators_refuse_weights_of_the_other_kind(tiny_vision3d):
    with pytest.raises(InputError, match="expected shape-generation weights, got RangeDiT"):
        ShapeGenerator(tiny_vision3d["lidar"]).generate("chair", 1, POINTS)
    with pytest.raises(InputError, match="expected RangeDiT weights, got PointDiT"):
        LidarGenerator(tiny_vision3d["shape"]).generate(1)


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["shape", "shape-baseline"])
def test_generate_gives_seeded_clouds_of_the_asked_size(tiny_vision3d, kind):
    gen = ShapeGenerator(tiny_vision3d[kind])
    seen = []
    a = gen.generate("chair", 3, POINTS, seed=7, progress=lambda done, total: seen.append((done, total)))
    assert a.shape == (3, POINTS, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    assert seen[-1] == (3, 3)
    assert np.allclose(gen.generate("chair", 3, POINTS, seed=7), a, atol=1e-6)
    assert not np.allclose(a[0], a[1], atol=1e-3)  # each shape its own noise
    assert not np.allclose(gen.generate("chair", 3, POINTS, seed=8), a, atol=1e-3)
    assert 0.05 < a.std() < 1.0  # scaled back from the network's data_scale (4): noise of std ~1/4


def test_shape_i_is_the_same_in_any_batch(tiny_vision3d):
    one = ShapeGenerator(tiny_vision3d["shape"], batch=1).generate("car", 3, POINTS, seed=3)
    three = ShapeGenerator(tiny_vision3d["shape"], batch=3).generate("car", 3, POINTS, seed=3)
    two = ShapeGenerator(tiny_vision3d["shape"], batch=2).generate("car", 5, POINTS, seed=3)
    assert np.allclose(one, three, atol=1e-5)
    assert np.allclose(two[:3], three, atol=1e-5)


def test_class_steps_and_guidance_change_the_shapes(tiny_vision3d, shapes):
    base = shapes.generate("chair", 2, POINTS, seed=1)
    assert not np.allclose(shapes.generate("lamp", 2, POINTS, seed=1), base, atol=1e-5)
    assert not np.allclose(ShapeGenerator(tiny_vision3d["shape"], steps=1).generate("chair", 2, POINTS, seed=1), base,
                           atol=1e-5)
    guided = ShapeGenerator(tiny_vision3d["shape"], guidance=4.0).generate("chair", 2, POINTS, seed=1)
    assert not np.allclose(guided, base, atol=1e-5)
    # guidance 1 is the conditional prediction alone: the network's own guidance_scale of 1
    assert np.allclose(ShapeGenerator(tiny_vision3d["shape"], guidance=1.0).generate("chair", 2, POINTS, seed=1),
                       base, atol=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (("sofa", 1, POINTS), "unknown shape class 'sofa'"),
    (("chair", 0, POINTS), "shape count must lie in"),
    (("chair", MAX_SHAPES + 1, POINTS), "shape count must lie in"),
    (("chair", 1, 8), "points per shape must lie in"),
])
def test_generate_refuses_bad_requests(shapes, args, message):
    with pytest.raises(InputError, match=message):
        shapes.generate(*args)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps must lie in"), ({"steps": 1001}, "steps must lie in"),
    ({"guidance": -0.5}, "guidance must lie in"), ({"guidance": 21.0}, "guidance must lie in"),
    ({"batch": 0}, "batch must be"), ({"precision": "fp64"}, "fp64"),
])
def test_shape_generator_refuses_bad_settings(tiny_vision3d, kwargs, message):
    with pytest.raises(InputError, match=message):
        ShapeGenerator(tiny_vision3d["shape"], **kwargs)


@pytest.fixture(scope="module")
def two_classes(tiny_builders, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-classes")
    torch.manual_seed(0)
    save_model(tiny_builders["shape"](num_classes=2, classes=("chair", "car")).eval(), folder)
    return ShapeGenerator(folder)


def test_weights_for_fewer_classes_refuse_the_others(two_classes):
    assert two_classes.classes == ("chair", "car")
    assert two_classes.generate("car", 1, POINTS).shape == (1, POINTS, 3)
    with pytest.raises(InputError, match=r"these weights generate \('chair', 'car'\), not 'lamp"):
        two_classes.generate("lamp", 1, POINTS)


def test_a_message_ending_with_a_quoted_name_keeps_its_quote(two_classes):
    with pytest.raises(InputError) as e:
        two_classes.generate("lamp", 1, POINTS)
    assert str(e.value).endswith("not 'lamp'")


# ----------------------------------------------------------------------------------------------
# LiDAR generation
# ----------------------------------------------------------------------------------------------

def test_the_lidar_sensor_is_the_networks(lidar):
    assert lidar.spec == SPEC


def test_generate_scans_of_the_network_size(lidar):
    seen = []
    scans = lidar.generate(2, seed=4, progress=lambda done, total: seen.append((done, total)))
    assert len(scans) == 2 and seen[-1] == (2, 2)
    for s in scans:
        assert isinstance(s, LidarScan) and s.spec == SPEC
        assert s.depth.shape == s.intensity.shape == s.known.shape == (16, 64)
        assert s.depth.dtype == np.float32 and not s.known.any() and s.source is None
        hit = s.depth > 0
        assert hit.any() and (s.depth[hit] >= 1).all() and (s.depth[hit] <= 56).all()
        assert (s.intensity >= 0).all() and (s.intensity <= 1).all() and (s.intensity[~hit] == 0).all()
        pts = s.points
        assert len(pts) == hit.sum() == len(s.generated)
        assert np.allclose(np.linalg.norm(pts.points, axis=1), s.depth[hit], rtol=1e-4)  # a point per return
    assert not np.allclose(scans[0].depth, scans[1].depth)


def test_scan_i_is_the_same_in_any_batch(tiny_vision3d, lidar):
    two = lidar.generate(2, seed=5)
    alone = LidarGenerator(tiny_vision3d["lidar"], batch=1).generate(1, seed=5)[0]
    assert np.allclose(alone.depth, two[0].depth, atol=1e-4)
    assert not np.allclose(lidar.generate(1, seed=6)[0].depth, two[0].depth)


@pytest.mark.parametrize("n", [0, MAX_SCANS + 1])
def test_generate_refuses_scan_counts_out_of_range(lidar, n):
    with pytest.raises(InputError, match="scan count must lie in"):
        lidar.generate(n)


def test_lidar_generator_refuses_bad_steps(tiny_vision3d):
    with pytest.raises(InputError, match="steps must lie in"):
        LidarGenerator(tiny_vision3d["lidar"], steps=0)


# ----------------------------------------------------------------------------------------------
# Completion
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sector", [(135.0, 225.0), (315.0, 45.0), (10.0, 100.0)])
def test_complete_keeps_the_points_outside_the_sector_and_regenerates_inside(lidar, scan_cloud, sector):
    done = lidar.complete(scan_cloud, sector, seed=1)
    cols = sector_columns(64, *sector)
    assert 0 < cols.sum() < 64
    assert np.array_equal(done.known, np.broadcast_to(~cols, (16, 64)))  # False exactly on the sector's columns
    inside = cols[column_of(scan_cloud.points)]
    kept = scan_cloud.select(~inside)
    out = done.points
    assert len(out) == len(kept) + len(done.generated)
    assert np.array_equal(out.points[:len(kept)], kept.points)  # unchanged, not re-projected
    assert np.array_equal(out.intensity[:len(kept)], kept.intensity)
    assert not rows_as_set(scan_cloud.select(inside).points) & rows_as_set(out.points)  # the sector is new
    gen = done.generated
    assert len(gen) > 0 and cols[column_of(gen.points)].all()  # and only the sector is generated


def test_complete_puts_the_input_into_the_known_pixels(lidar, scan_cloud):
    done = lidar.complete(scan_cloud, (90.0, 180.0))
    depth, inten = to_range_image(scan_cloud.points, scan_cloud.intensity, SPEC)
    known = done.known
    assert np.allclose(done.depth[known], depth[known], rtol=1e-4, atol=1e-4)
    assert np.allclose(done.intensity[known], inten[known], atol=1e-5)


def test_complete_accepts_a_bare_array(lidar, tiny_scan):
    done = lidar.complete(tiny_scan.points, (0.0, 90.0))
    assert done.depth.shape == (16, 64) and len(done.points) > len(done.generated)
    assert (done.points.intensity[:len(done.points) - len(done.generated)] == 0).all()  # no intensity given


@pytest.mark.parametrize(("sector", "message"), [
    ((30.0, 30.0), "is empty"), ((float("nan"), 90.0), "must be finite"), ((0.0, float("inf")), "must be finite"),
])
def test_complete_refuses_bad_sectors(lidar, scan_cloud, sector, message):
    with pytest.raises(InputError, match=message):
        lidar.complete(scan_cloud, sector)


def _ring_at(pitch_deg, r, n=60):
    yaw = np.linspace(-np.pi, np.pi, n, endpoint=False)
    p = np.radians(pitch_deg)
    return np.stack([r * np.cos(p) * np.cos(yaw), r * np.cos(p) * np.sin(yaw), np.full(n, r * np.sin(p))], 1)


@pytest.mark.parametrize(("cloud", "message"), [
    (np.zeros((0, 3), np.float32), "no points"),
    (_ring_at(-10, 100.0), "no point of the scan lies within"),  # beyond max_depth
    (_ring_at(-10, 0.5), "no point of the scan lies within"),  # nearer than min_depth
    (np.array([[1.0, np.nan, 0.0], [5.0, 1.0, 0.0]]), "NaN"),
])
@pytest.mark.parametrize("task", ["complete", "densify"])
def test_scans_that_give_nothing_to_work_on_are_refused(lidar, cloud, message, task):
    with pytest.raises(InputError, match=message):
        getattr(lidar, task)(cloud)


@pytest.mark.parametrize("pitch", [60.0, -70.0])
def test_a_cloud_outside_the_vertical_field_of_view_is_refused(lidar, pitch):
    with pytest.raises(InputError, match="field of view"):
        lidar.complete(_ring_at(pitch, 10.0))


# ----------------------------------------------------------------------------------------------
# Densification
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_every", [4, 8])
def test_densify_keeps_every_nth_beam_and_fills_the_others(lidar, scan_cloud, keep_every):
    sparse = scan_cloud.select(scan_cloud.ring % keep_every == 0)
    dense = lidar.densify(sparse, keep_every, seed=2)
    rows = np.arange(16) % keep_every == 0
    assert np.array_equal(dense.known, np.broadcast_to(rows[:, None], (16, 64)))
    # the input's rows are placed at rows 0, n, 2n, ...: its projection with 16 / n beams over the same view
    small, _ = to_range_image(sparse.points, sparse.intensity, RangeSpec(16 // keep_every, 64))
    assert np.allclose(dense.depth[rows], small, rtol=1e-4, atol=1e-4)
    gen = dense.generated
    assert len(gen) > 0 and set(np.unique(gen.ring)) <= set(np.nonzero(~rows)[0])  # new points between the beams
    out = dense.points
    assert len(out) == len(sparse) + len(gen)
    assert np.array_equal(out.points[:len(sparse)], sparse.points)  # the input's own points, all of them


@pytest.mark.parametrize("keep_every", [1, 3, 5, 32])
def test_densify_refuses_a_beam_step_that_does_not_divide_the_beams(lidar, scan_cloud, keep_every):
    with pytest.raises(InputError, match="keep_every must be >= 2 and divide the network's 16 beams"):
        lidar.densify(scan_cloud, keep_every)


# ----------------------------------------------------------------------------------------------
# Range images and sectors
# ----------------------------------------------------------------------------------------------

def test_encode_then_decode_gives_the_scan_back(tiny_scan):
    values = encode_scan(tiny_scan.depth, tiny_scan.intensity, SPEC)
    assert values.shape == (2, 16, 64) and values.dtype == np.float32
    assert values.min() >= -1 and values.max() <= 1
    valid = (tiny_scan.depth >= 1) & (tiny_scan.depth <= 56)
    assert valid.any() and (~valid & (tiny_scan.depth > 0)).any()  # some returns lie beyond 56 m
    assert (values[1][~valid] == -1).all()  # no return: no intensity either
    depth, inten = decode_scan(values, SPEC)
    assert np.allclose(depth[valid], tiny_scan.depth[valid], rtol=1e-4)
    assert (depth[~valid] == 0).all()
    assert np.allclose(inten[valid], tiny_scan.intensity[valid], atol=1e-6) and (inten[~valid] == 0).all()


def test_decode_reads_below_the_threshold_as_no_return():
    values = np.stack([np.linspace(-1, 1, 64 * 16).reshape(16, 64)] * 2).astype(np.float32)
    depth, inten = decode_scan(values, SPEC)
    assert (depth[values[0] < -0.8] == 0).all() and (depth[values[0] >= -0.8] >= 1).all()
    assert (inten[depth == 0] == 0).all() and depth.max() == pytest.approx(56, rel=1e-4)


def test_sectors_are_counter_clockwise_from_straight_ahead_and_wrap():
    ahead = sector_columns(64, 315, 45)
    assert np.array_equal(np.nonzero(ahead)[0], np.arange(24, 40))  # around column W/2
    assert to_range_image(np.array([[10.0, 0.0, 0.0]]), spec=SPEC)[0][:, 32].any()  # x forward lands at W/2
    assert np.array_equal(sector_columns(64, -45, 45), ahead)
    left = sector_columns(64, 80, 100)
    assert left[16] and left.sum() in (3, 4)  # 90 deg (+y) is column W/4
    assert to_range_image(np.array([[0.0, 10.0, 0.0]]), spec=SPEC)[0][:, 16].any()
    behind = sector_columns(64, 170, 190)
    assert set(np.nonzero(behind)[0]) == {0, 1, 62, 63}  # through 180 deg: the image's two edges
    assert sector_columns(64, 0, 360).all() and sector_columns(64, 45, 315).sum() == 48
    assert np.array_equal(sector_columns(64, 45, 315), ~ahead)


def test_scans_without_a_source_are_their_range_image():
    depth = np.zeros((16, 64), np.float32)
    depth[3, 10], depth[9, 40] = 12.0, 30.0
    scan = LidarScan(depth, np.full((16, 64), 0.5, np.float32), np.zeros((16, 64), bool), SPEC)
    pts = scan.points
    assert len(pts) == 2 and np.array_equal(pts.ring, [3, 9])
    assert np.allclose(np.linalg.norm(pts.points, axis=1), [12, 30], rtol=1e-5)
    back = from_range_image(depth, spec=SPEC)
    assert np.allclose(pts.points, back.points)


# ----------------------------------------------------------------------------------------------
# Benchmark harness
# ----------------------------------------------------------------------------------------------

def test_the_speed_benchmark_runs_on_given_networks(tiny_vision3d, tmp_path):
    from ditlab.vision3d.bench import DIT, POINTNET, run_benchmark

    lines = []
    result = run_benchmark(only="speed", nets=tiny_vision3d, json_path=tmp_path / "bench.json", echo=lines.append)
    rows = {(r["method"], r["metric"]): r["value"] for r in result["rows"]}
    for method in (DIT, POINTNET):
        seconds, rate = rows[(f"{method}, 2 steps", "seconds")], rows[(f"{method}, 2 steps", "shapes_per_s")]
        assert seconds > 0 and rate == pytest.approx(100 / seconds, rel=1e-3)
    (goal,) = result["goals"]
    assert goal["name"] == "100 shapes of 2048 points (s)" and goal["value"] == rows[(f"{DIT}, 2 steps", "seconds")]
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == result["rows"]
    assert any(line.startswith("speed: 100 chairs") for line in lines)


def test_the_benchmark_refuses_unknown_parts():
    from ditlab.core.errors import UsageError
    from ditlab.vision3d.bench import run_benchmark

    with pytest.raises(UsageError, match="--only must be one or more of"):
        run_benchmark(only="speed,colour", echo=lambda line: None)
