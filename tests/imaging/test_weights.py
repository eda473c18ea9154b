"""The shipped imaging networks load from safetensors with their recorded sha256 and carry a model card."""

import json

import pytest
import torch

from ditlab.core.weights import packaged_root, recorded_digests
from ditlab.imaging.models import EDSR, SRDiT, load_model

SHIPPED = {"sr-x4": (SRDiT, 4), "restore-x1": (SRDiT, 1), "edsr-x4": (EDSR, 4)}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_network_loads_and_runs(name):
    cls, scale = SHIPPED[name]
    assert name in recorded_digests("ditlab.imaging")
    model = load_model(name)
    assert isinstance(model, cls) and model.scale == scale
    card = (packaged_root("ditlab.imaging") / name / "README.md").read_text()
    for part in ("**Data.**", "**Recipe.**", "**Metrics.**", "**Limits.**"):
        assert part in card
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(lr, torch.tensor([0])) if cls is EDSR else model(
            torch.nn.functional.interpolate(lr, scale_factor=scale) if scale > 1 else lr, 500.0, lr,
            task=torch.tensor([0]))
    assert out.shape == (1, 3, 32 * scale, 32 * scale) and torch.isfinite(out).all()
    if cls is SRDiT:  # the validated steps are read back, not replaced by the constructor's default
        saved = json.loads((packaged_root("ditlab.imaging") / name / "config.json").read_text())["sample_steps"]
        assert saved and [model.default_steps(k) for k in range(len(saved))] == saved
