"""Tiny vision3d networks with seeded random weights, saved as weights folders (config.json + model.safetensors) for
the pipeline, CLI, app and training tests, and small LiDAR inputs for their sensor."""

import pytest
import torch

from ditlab.vision3d.data import CLASSES

TINY_BEAMS, TINY_WIDTH = 16, 64
"""The tiny RangeDiT's range image (the default field of view, +3 to -25 deg)."""


def _waken(model: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised layers (adaLN-Zero gates, final layers, heads) small random weights: an untrained
    network predicts exactly 0, which would hide whether its input reaches its output."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval()


def tiny_point_dit(**kw):
    from ditlab.vision3d.models import PointDiT

    return PointDiT(**{"resolution": 8, "patch_size": 2, "hidden_size": 24, "depth": 2, "num_heads": 2,
                       "window_size": 2, "voxel_channels": 4, "head_hidden": 16, "num_classes": len(CLASSES),
                       "classes": CLASSES, "sample_steps": 2, **kw})


def tiny_pointnet(**kw):
    from ditlab.vision3d.models import PointNetDiffusion

    return PointNetDiffusion(**{"width": 32, "num_classes": len(CLASSES), "classes": CLASSES, "sample_steps": 2,
                                **kw})


def tiny_range_dit(**kw):
    from ditlab.vision3d.models import RangeDiT

    return RangeDiT(**{"beams": TINY_BEAMS, "width": TINY_WIDTH, "patch_size": (4, 8), "hidden_size": 24,
                       "depth": 2, "num_heads": 2, "window_size": (2, 4), "sample_steps": 2, **kw})


@pytest.fixture(scope="session")
def tiny_builders():
    """Fresh tiny networks as they are built (zero-initialised heads): "shape", "shape-baseline", "lidar" ->
    build(**config changes)."""
    return {"shape": tiny_point_dit, "shape-baseline": tiny_pointnet, "lidar": tiny_range_dit}


@pytest.fixture(scope="session")
def tiny_vision3d(tmp_path_factory):
    """Weights folders of tiny vision3d networks: "shape" (PointDiT), "shape-baseline" (PointNetDiffusion), both
    for the five classes, 2 sampling steps; "lidar" (RangeDiT on 16 x 64 range images, 2 steps)."""
    from ditlab.core.weights import save_model

    root = tmp_path_factory.mktemp("vision3d-nets")
    for name, build in (("shape", tiny_point_dit), ("shape-baseline", tiny_pointnet), ("lidar", tiny_range_dit)):
        torch.manual_seed(0)
        save_model(_waken(build()), root / name)
    return {k: str(root / k) for k in ("shape", "shape-baseline", "lidar")}


@pytest.fixture(scope="session")
def tiny_scan():
    """A street scan ray-cast with the tiny network's sensor (16 beams, 64 columns): `scenes.Scan`."""
    from ditlab.vision3d.scenes import SensorSpec, scan

    return scan(0, sensor=SensorSpec(beams=TINY_BEAMS, width=TINY_WIDTH))

