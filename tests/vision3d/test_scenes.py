import math

import numpy as np
import pytest

from ditlab.core.errors import InputError
from ditlab.vision3d.data import open3d_module
from ditlab.vision3d.io import to_range_image
from ditlab.vision3d.scenes import (
    KINDS,
    SPLIT_SIZE,
    STYLES,
    SensorSpec,
    build_world,
    ray_directions,
    scan,
    scans,
    split_seed,
)


def lidm_pixels(points: np.ndarray, sensor: SensorSpec) -> tuple[np.ndarray, np.ndarray]:
    """LiDM's projection of points to (row, column)."""
    r = np.linalg.norm(points, axis=1)
    yaw, pitch = -np.arctan2(points[:, 1], points[:, 0]), np.arcsin(points[:, 2] / r)
    fov_down, fov = math.radians(abs(sensor.fov_down)), math.radians(sensor.fov_up - sensor.fov_down)
    u = np.floor(0.5 * (yaw / np.pi + 1.0) * sensor.width).astype(int)
    v = np.floor((1.0 - (pitch + fov_down) / fov) * sensor.beams).astype(int)
    return v, u


def test_scans_are_seeded():
    a, b, c = scan(3), scan(3), scan(4)
    assert a.depth.shape == a.intensity.shape == a.label.shape == (64, 1024) and a.depth.dtype == np.float32
    assert np.array_equal(a.depth, b.depth) and np.array_equal(a.intensity, b.intensity)
    assert not np.array_equal(a.depth, c.depth)
    assert not np.array_equal(scan(3, "suburban").depth, a.depth)
    w, v = build_world(5, "suburban"), build_world(5, "suburban")
    assert np.array_equal(w.vertices, v.vertices) and w.pose == v.pose


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", [0, 11])
def test_scans_look_like_a_street(style, seed):
    s = scan(seed, style)
    assert (s.depth > 0).mean() > 0.4 and 0 <= s.depth.min() and s.depth.max() <= 80.0
    bottom = s.depth[-1][s.depth[-1] > 0]  # pitch -24.8 deg from 1.73 m: flat ground at 4.13 m
    assert abs(np.median(bottom) - 1.73 / math.sin(math.radians(24.78))) < 0.3
    assert {KINDS[k] for k in np.unique(s.label[s.depth > 0])} >= {"road", "building"}
    top = s.label[0]  # the top beam rises: buildings, trees, poles or the sky
    assert set(np.unique(top)) <= {-1, KINDS.index("building"), KINDS.index("vegetation"), KINDS.index("pole")}
    assert np.isin(top, (-1, KINDS.index("building"))).mean() > 0.6
    assert 0 <= s.intensity.min() and s.intensity.max() <= 1 and (s.intensity[s.depth == 0] == 0).all()
    assert s.intensity[s.depth > 0].mean() > 0.02


@pytest.mark.parametrize("sensor", [SensorSpec(), SensorSpec(beams=16, width=512, fov_up=15.0, fov_down=-15.0)])
def test_points_reproject_to_their_pixels(sensor):
    s = scan(2, "urban", sensor)
    n = int((s.depth > 0).sum())
    assert s.points.shape == (n, 3) and s.points.dtype == np.float32
    assert s.point_intensity.shape == s.ring.shape == (n,)
    v, u = lidm_pixels(s.points, sensor)
    assert (v == s.ring).all()
    rows, cols = np.nonzero(s.depth > 0)
    assert np.mean((v == rows) & (u == cols)) > 0.99
    assert np.allclose(np.linalg.norm(s.points, axis=1), s.depth[rows, cols], atol=1e-3)
    assert np.array_equal(s.point_intensity, s.intensity[rows, cols])
    assert np.allclose(s.points[:, 2].min(), -sensor.height, atol=0.1)  # the ground


@pytest.mark.parametrize("sensor", [SensorSpec(), SensorSpec(beams=16, width=512, fov_up=15.0, fov_down=-15.0,
                                                              max_range=30.0)])
def test_sensor_range_spec_is_the_image_its_scans_are(sensor):
    spec = sensor.range_spec()
    assert (spec.height, spec.width, spec.fov_up, spec.fov_down) == (sensor.beams, sensor.width, sensor.fov_up,
                                                                      sensor.fov_down)
    assert spec.max_depth == min(56.0, sensor.max_range)
    s = scan(3, "urban", sensor)
    keep = (s.depth >= spec.min_depth) & (s.depth <= spec.max_depth)
    depth, _ = to_range_image(s.points, spec=spec)
    assert np.mean(np.isclose(depth, np.where(keep, s.depth, 0), atol=1e-3)) > 0.99


def test_ray_directions_follow_lidm():
    sensor = SensorSpec(beams=16, width=256)
    d = ray_directions(sensor)
    assert d.shape == (16, 256, 3) and d.dtype == np.float32 and not d.flags.writeable
    assert ray_directions(sensor) is d
    assert np.allclose(np.linalg.norm(d, axis=-1), 1, atol=1e-6)
    v, u = lidm_pixels(d.reshape(-1, 3), sensor)
    assert np.array_equal(v.reshape(16, 256), np.repeat(np.arange(16)[:, None], 256, 1))
    assert np.array_equal(u.reshape(16, 256), np.repeat(np.arange(256)[None], 16, 0))
    assert d[0, 0, 2] > 0 > d[-1, 0, 2] and d[0, 128, 0] > 0.99  # row 0 on top, the middle column forward


def test_noise_and_ray_drop():
    sensor = SensorSpec()
    clean, noisy = scan(6, noise=0.0), scan(6, noise=0.05)
    world = build_world(6)
    x, y, yaw = world.pose
    c, s = math.cos(yaw), math.sin(yaw)
    dirs = ray_directions(sensor) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], np.float32)
    rays = np.concatenate([np.broadcast_to(np.float32([x, y, sensor.height]), dirs.shape), dirs], -1)
    t = world.scene().cast_rays(open3d_module().core.Tensor(np.ascontiguousarray(rays)))["t_hit"].numpy()
    hit, kept = t <= sensor.max_range, clean.depth > 0
    assert np.allclose(clean.depth[kept], t[kept], atol=1e-4) and not (kept & ~hit).any()
    assert 0.005 < 1 - kept.sum() / hit.sum() < 0.035
    assert np.array_equal(noisy.depth > 0, kept)
    assert 0.04 < np.std(noisy.depth[kept] - clean.depth[kept]) < 0.06
    short = scan(6, sensor=SensorSpec(max_range=20.0))
    assert short.depth.max() <= 20.0 and (short.depth > 0).mean() < (clean.depth > 0).mean()


def test_splits_and_batches():
    seeds = {s: {split_seed(s, i) for i in (0, 1, SPLIT_SIZE - 1)} for s in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"])
    assert not (seeds["train"] & seeds["test"])
    sensor = SensorSpec(beams=16, width=128)
    depth, intensity = scans("val", 2, "suburban", start=3, sensor=sensor)
    assert depth.shape == intensity.shape == (2, 16, 128) and depth.dtype == intensity.dtype == np.float32
    assert np.array_equal(depth[1], scan(split_seed("val", 4), "suburban", sensor).depth)
    assert scans("test", 0)[0].shape == (0, 64, 1024)


def test_bad_requests_are_refused():
    with pytest.raises(InputError, match="unknown split 'holdout'"):
        scans("holdout", 1)
    with pytest.raises(InputError, match="unknown scene style 'rural'"):
        scan(0, "rural")
    with pytest.raises(InputError, match="unknown scene style"):
        build_world(0, "rural")
    with pytest.raises(InputError, match="scene index"):
        split_seed("train", SPLIT_SIZE)
    with pytest.raises(InputError, match="seed"):
        scan(-1)
    with pytest.raises(InputError, match="count"):
        scans("train", -1)
    with pytest.raises(InputError, match="noise"):
        scan(0, noise=-0.1)
    with pytest.raises(InputError, match="SensorSpec"):
        scan(0, sensor=64)


@pytest.mark.parametrize("bad, match", [
    ({"beams": 0}, "beams"), ({"beams": 2.5}, "beams"), ({"width": True}, "width"),
    ({"fov_up": -30.0}, "field of view"), ({"fov_down": -95.0}, "field of view"),
    ({"fov_up": "3"}, "field of view"),
    ({"height": 0.0}, "height"), ({"max_range": -1.0}, "max_range"), ({"max_range": float("nan")}, "max_range"),
])
def test_sensor_spec_is_validated(bad, match):
    with pytest.raises(InputError, match=match):
        SensorSpec(**bad)
