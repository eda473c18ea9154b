"""The demo data, the shipped demo weights, and (slow) proof that training learns the classes."""

import pytest
import torch

from ditlab.core import demo, weights
from ditlab.core.weights import packaged_root, recorded_digests, sha256_file


def test_rendered_shapes_are_distinct_classes():
    g = torch.Generator().manual_seed(0)
    x = demo.render_shapes(torch.tensor([0, 1, 2, 3]), g)
    assert x.shape == (4, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    filled = (x > 0).float().mean(dim=(1, 2, 3))
    assert (filled > 0.02).all()


def test_shipped_demo_weights_are_recorded_and_load():
    digest = recorded_digests()["demo-shapes"]
    assert sha256_file(packaged_root() / "demo-shapes" / "model.safetensors") == digest
    assert "Recipe" in (packaged_root() / "demo-shapes" / "README.md").read_text()
    x = demo.sample_demo(per_class=1, steps=2, seed=0)
    assert x.shape == (4, 1, 16, 16) and torch.isfinite(x).all()


def test_sample_demo_rejects_bad_classes():
    with pytest.raises(ValueError, match="class indices must lie in"):
        demo.sample_demo(demo.demo_model(), classes=[7], steps=1)


def test_train_demo_packages_its_weights_card_and_sha256_line(tmp_path, monkeypatch):
    """The wiring of recipe, trainer, card and package(), in 2 steps (the classifier is skipped: slow)."""
    monkeypatch.setattr(weights, "packaged_root", lambda package="ditlab.core": tmp_path / package)
    monkeypatch.setattr(demo, "train_classifier", lambda: None)
    monkeypatch.setattr(demo, "evaluate", lambda model, clf=None: 0.5)
    result = demo.train_demo(steps=2, seed=3, progress=False)
    folder = tmp_path / "ditlab.core" / demo.WEIGHTS_NAME
    assert result["folder"] == str(folder) and result["sha256"] == sha256_file(folder / "model.safetensors")
    sums = (tmp_path / "ditlab.core" / "SHA256SUMS").read_text()
    assert sums == f"{result['sha256']}  demo-shapes/model.safetensors\n"
    card = (folder / "README.md").read_text()
    assert "2 AdamW steps, batch 64,\nlr 0.0005, 100 warm-up steps, grad clip 1.0, EMA 0.995" in card
    assert "seed 3" in card and "(Euler, 25 steps, CFG 2.0)" in card


@pytest.mark.slow
def test_shipped_model_samples_are_recognised():
    clf = demo.train_classifier()
    trained = demo.evaluate(demo.load_demo(), clf)
    untrained = demo.evaluate(demo.demo_model().eval(), clf)
    assert trained >= 0.8 and trained >= untrained + 0.4


@pytest.mark.slow
def test_short_training_beats_untrained(tmp_path):
    result = demo.train_demo(out=tmp_path / "w", steps=600, progress=False)
    assert result["sample_accuracy"] >= result["untrained_accuracy"] + 0.25
    assert (tmp_path / "w" / "model.safetensors").exists()
