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
