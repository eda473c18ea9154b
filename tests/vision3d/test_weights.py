"""The shipped vision3d networks load from safetensors with their recorded sha256, carry a model card, keep their
validated sampling settings and generate finite clouds of the class asked for."""

import json

import numpy as np
import pytest

from ditlab.core.weights import packaged_root, recorded_digests
from ditlab.vision3d.data import CLASSES
from ditlab.vision3d.models import PointDiT, PointNetDiffusion
from ditlab.vision3d.pipeline import ShapeGenerator, load_model

SHIPPED = {"shape-dit": PointDiT, "shape-pointnet": PointNetDiffusion}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_shape_network_loads_and_generates(name):
    assert name in recorded_digests("ditlab.vision3d")
    model = load_model(name)
    assert isinstance(model, SHIPPED[name]) and tuple(model.config.classes) == CLASSES
    folder = packaged_root("ditlab.vision3d") / name
    card = (folder / "README.md").read_text()
    for part in ("**Data.**", "**Recipe.**", "**Validation.**", "**Limits.**"):
        assert part in card
    saved = json.loads((folder / "config.json").read_text())
    assert (model.config.sample_steps, model.config.guidance_scale) == (saved["sample_steps"], saved["guidance_scale"])
    clouds = ShapeGenerator(name, steps=2, precision="fp32").generate("car", 2, points=256)
    assert clouds.shape == (2, 256, 3) and np.isfinite(clouds).all()
    assert np.ptp(clouds, axis=1).max() < 10  # canonical units (longest side ~1), not the network's scaled ones


def test_shipped_lidar_networks_load_and_generate_complete_and_densify():
    from ditlab.vision3d.io import from_range_image
    from ditlab.vision3d.models import RangeDiT
    from ditlab.vision3d.pipeline import LidarGenerator, sector_columns
    from ditlab.vision3d.scenes import cached_scans

    digests = recorded_digests("ditlab.vision3d")
    for name, cls in (("lidar-dit", RangeDiT), ("lidar-pointnet", PointNetDiffusion)):
        assert name in digests and isinstance(load_model(name), cls)
        card = (packaged_root("ditlab.vision3d") / name / "README.md").read_text()
        assert "**Validation.**" in card and "**Limits.**" in card
    gen = LidarGenerator(steps=2)
    (scan,) = gen.generate(1, seed=0)
    assert scan.depth.shape == (64, 1024) and np.isfinite(scan.points.points).all() and len(scan.points.points) > 1000
    depth, inten = cached_scans("val", 2)
    truth = from_range_image(depth[0], inten[0], gen.spec)
    done = gen.complete(truth, (45.0, 135.0), seed=0)
    cols = sector_columns(1024, 45.0, 135.0)
    assert done.known[:, ~cols].all() and not done.known[:, cols].any()
    dense = gen.densify(truth.select(truth.ring % 4 == 0), seed=0)
    assert dense.known[::4].all() and not dense.known[1::4].any()
