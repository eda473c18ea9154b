"""The training recipes on tiny specs: known-pixel masks, the data pools and batches, the range loss on unknown pixels
only, training with a time budget (resumed), and packaging with the settings validation chose."""

import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ditlab.core.errors import InputError
from ditlab.core.training import Recipe
from ditlab.vision3d import train
from ditlab.vision3d.data import CLASSES
from ditlab.vision3d.io import RangeSpec
from ditlab.vision3d.models import PointNetDiffusion, RangeDiT, n_params

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = Recipe(batch=2, lr=1e-3, warmup=0, ema_decay=0.9, grad_clip=1.0, precision="no", checkpoint_every=0,
              log_every=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private data cache: the pools here are a few shapes and scans, generated in seconds on a fresh machine
    (the shipped recipe's 600 shapes a class and 1000 scans take minutes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def shape_data(cache):
    return train.ShapeData(10, count=2)


@pytest.fixture(scope="module")
def scan_data(cache):
    return train.ScanData(3, count=2)


def tiny_lidar_dit():
    torch.manual_seed(0)  # the shipped sensor (64 x 1024) in 4 x 16 tokens
    return RangeDiT(patch_size=(16, 64), hidden_size=24, depth=1, num_heads=2, window_size=(2, 4), sample_steps=2)


@pytest.fixture
def tiny_specs(monkeypatch, cache, tiny_builders):
    """train.SPECS with tiny networks of every kind on tiny data pools."""
    specs = {
        "tiny-shape": train.Spec("tiny-shape", lambda: tiny_builders["shape"](data_scale=train.DATA_SCALE), "shape",
                                 TINY),
        "tiny-lidar": train.Spec("tiny-lidar", tiny_lidar_dit, "lidar", TINY),
        "tiny-pointnet": train.Spec("tiny-pointnet", lambda: PointNetDiffusion(width=32, num_classes=0,
                                                                           data_scale=train.LIDAR_SCALE),
                                  "lidar-points", TINY),
    }
    monkeypatch.setattr(train, "SPECS", {**train.SPECS, **specs})
    monkeypatch.setattr(train, "ShapeData", functools.partial(train.ShapeData, count=2))
    monkeypatch.setattr(train, "ScanData", functools.partial(train.ScanData, count=2))
    shipped_of = {"tiny-shape": "shape-dit", "tiny-lidar": "lidar-dit", "tiny-pointnet": "lidar-pointnet"}
    for name, shipped in shipped_of.items():
        monkeypatch.setitem(train.WHAT, name, train.WHAT[shipped])
    return specs


# ----------------------------------------------------------------------------------------------
# Masks, data, loss
# ----------------------------------------------------------------------------------------------

def _mode(mask: torch.Tensor, width: int) -> str:
    m = mask[0]
    if not m.any():
        return "generate"
    rows = torch.zeros_like(m)
    rows[::4] = 1
    if torch.equal(m, rows):
        return "densify"
    assert (m == m[:1]).all(), "a completion mask is whole columns"
    unknown = (m[0] == 0).nonzero().view(-1).tolist()
    assert int(width * 30 / 360) <= len(unknown) <= int(width * 180 / 360)
    start = next(c for c in unknown if (c - 1) % width not in unknown)
    assert sorted(unknown) == sorted((start + i) % width for i in range(len(unknown))), "one sector, wrapping"
    return "complete"


def test_training_masks_draw_the_three_conditionings(cache):
    masks = train.training_masks(300, 16, 64, torch.Generator().manual_seed(0))
    assert masks.shape == (300, 1, 16, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    modes = [_mode(m, 64) for m in masks]
    for mode, p in train.MASK_MODES.items():
        assert abs(modes.count(mode) / 300 - p) < 0.1, (mode, modes.count(mode))
    again = train.training_masks(300, 16, 64, torch.Generator().manual_seed(0))
    assert torch.equal(again, masks)
    assert not torch.equal(train.training_masks(300, 16, 64, torch.Generator().manual_seed(1)), masks)


def test_completion_sectors_wrap_around_the_image_edge():
    masks = train.training_masks(400, 4, 64, torch.Generator().manual_seed(3))
    modes = [_mode(m, 64) for m in masks]  # every completion mask is one sector of whole columns
    wrapped = [m for m, mode in zip(masks, modes, strict=True) if mode == "complete" and m[0, 0, 0] == 0
               and m[0, 0, -1] == 0]
    assert wrapped  # and some of them run through column 0


def test_shape_batches_are_class_balanced_scaled_training_shapes(shape_data):
    pool = shape_data.pool
    assert pool.shape == (len(CLASSES), 2, 2048, 3)
    batch = shape_data(0, torch.Generator().manual_seed(0))
    x0, labels = batch["x0"], batch["class_labels"]
    assert x0.shape == (10, 2048, 3) and labels.shape == (10,)
    assert sorted(labels.tolist()) == sorted(list(range(len(CLASSES))) * 2)
    for x, y in zip(x0, labels, strict=True):
        assert any(torch.equal(x, shape * train.DATA_SCALE) for shape in pool[y])
    assert 0.5 < x0.std(dim=(0, 1)).mean() < 2  # data_scale 4: a per-axis std near 1
    again = shape_data(0, torch.Generator().manual_seed(0))
    assert torch.equal(again["x0"], x0) and torch.equal(again["class_labels"], labels)


def _find_roll(x: torch.Tensor, pool: torch.Tensor) -> bool:
    """Whether x is a pool image rolled along azimuth, possibly mirrored first."""
    for image in pool:
        for candidate in (image, image.flip(-1)):
            # columns of the candidate equal to x's first column: the possible shifts
            for s in (candidate == x[..., :1]).all(dim=(0, 1)).nonzero().view(-1).tolist():
                if torch.equal(torch.roll(candidate, -s, dims=-1), x):
                    return True
    return False


def test_scan_batches_are_rolled_mirrored_scans_with_masks(scan_data):
    assert scan_data.pool.shape == (2, 2, 64, 1024) and scan_data.spec == RangeSpec()
    assert scan_data.pool.min() >= -1 and scan_data.pool.max() <= 1
    batch = scan_data(0, torch.Generator().manual_seed(0))
    assert batch["x0"].shape == (3, 2, 64, 1024) and batch["known_mask"].shape == (3, 1, 64, 1024)
    for x in batch["x0"]:
        assert _find_roll(x, scan_data.pool)
    other = scan_data(1, torch.Generator().manual_seed(1))
    assert not torch.equal(other["x0"], batch["x0"])


def test_point_batches_for_the_lidar_baseline(cache):
    data = train.ScanData(2, count=2, points=300)
    x0 = data(0, torch.Generator().manual_seed(0))["x0"]
    assert x0.shape == (2, 300, 3)
    metres = x0.norm(dim=-1) / train.LIDAR_SCALE
    assert metres.min() >= 1 - 1e-3 and metres.max() <= 56 + 1e-3


class Oracle(torch.nn.Module):
    """Knows the answer (it is given the whole clean image as `known`): the true velocity, plus `off_known` on the
    known pixels and `off_unknown` on the others."""

    def __init__(self, off_known: float = 0.0, off_unknown: float = 0.0):
        super().__init__()
        self.off_known, self.off_unknown = off_known, off_unknown

    def forward(self, x, timestep, known, known_mask):
        t = (timestep / train.PATH.time_scale).view(-1, 1, 1, 1)
        v = train.PATH.noise_from_x0(x, t.view(-1), known) - known
        return v + torch.where(known_mask > 0, self.off_known, self.off_unknown)


def test_range_loss_counts_only_the_unknown_pixels():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 16, 64, generator=g) * 2 - 1
    mask = train.training_masks(4, 16, 64, torch.Generator().manual_seed(0))
    mask[0] = 0  # at least one with nothing known
    mask[1, :, ::4] = 1
    batch = {"x0": x0, "known_mask": mask}

    def loss(model):
        return float(train.range_loss(model, batch, torch.Generator().manual_seed(5)))

    assert loss(Oracle()) < 1e-8
    assert loss(Oracle(off_known=10.0)) < 1e-8  # wrong only where the pixels are given: no loss
    assert loss(Oracle(off_unknown=0.5)) == pytest.approx(0.25, rel=1e-4)  # the mean over unknown pixels only
    assert loss(Oracle(off_known=10.0, off_unknown=0.5)) == pytest.approx(0.25, rel=1e-4)


def test_range_loss_trains_a_range_dit(tiny_builders):
    model = tiny_builders["lidar"]()
    x0 = torch.rand(2, 2, 16, 64) * 2 - 1
    mask = torch.zeros(2, 1, 16, 64)
    mask[1, :, ::4] = 1
    value = train.range_loss(model, {"x0": x0, "known_mask": mask}, torch.Generator().manual_seed(0))
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Training runs and packaging
# ----------------------------------------------------------------------------------------------

def test_unknown_networks_are_refused():
    with pytest.raises(InputError, match=r"unknown network 'shape-unet'; trainable: \['lidar-dit'"):
        train.spec("shape-unet")


@pytest.mark.parametrize("name", ["tiny-shape", "tiny-lidar", "tiny-pointnet"])
def test_a_tiny_run_trains_checkpoints_and_reports(tiny_specs, tmp_path, name):
    report = train.train(name, tmp_path / "run", steps=2, progress=False)
    assert report["step"] == 2 and np.isfinite(report["loss"]) and report["loss"] > 0
    assert report["params"] == n_params(tiny_specs[name].build())
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["ema"]
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2] and all(np.isfinite(x["loss"]) for x in log)
    assert log[-1]["samples_per_s"] == pytest.approx(log[-1]["steps_per_s"] * TINY.batch)


def test_a_time_budget_stops_the_run_and_counts_over_resumes(tiny_specs, tmp_path):
    out = tmp_path / "run"
    assert train.train("tiny-shape", out, steps=100, progress=False, seconds=0)["step"] == 1  # spent at once
    assert train.train("tiny-shape", out, steps=2, progress=False)["step"] == 2  # resumed, no budget
    elapsed = json.loads((out / "checkpoint" / "state.json").read_text())["elapsed_s"]
    assert elapsed > 0
    # a budget already spent by the earlier sessions: one more step, then stop
    assert train.train("tiny-shape", out, steps=100, progress=False, seconds=elapsed)["step"] == 3
    # a budget left: the steps end the run first
    assert train.train("tiny-shape", out, steps=5, progress=False, seconds=1e6)["step"] == 5


def test_recipe_changes_reach_the_trainer(tiny_specs, tmp_path):
    with pytest.raises(TypeError):
        train.train("tiny-shape", tmp_path / "bad", steps=1, progress=False, learning_rate=1.0)
    train.train("tiny-shape", tmp_path / "run", steps=1, progress=False, batch=5)
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert line["samples_per_s"] == pytest.approx(line["steps_per_s"] * 5)  # batches of 5


def test_the_shipped_recipes_stay_on_the_shipped_sizes():
    assert train.SPECS["lidar-dit"].recipe.batch == 8 and train.SPECS["shape-dit"].recipe.batch == 16
    with torch.device("meta"):
        dit = train.build("shape-dit")
        assert dit.config.classes == CLASSES and dit.config.data_scale == train.DATA_SCALE
        assert train.build("lidar-dit").shape == (64, 1024)


def test_package_run_writes_the_ema_weights_with_the_chosen_settings(tiny_specs, tmp_path, monkeypatch):
    from ditlab.core import weights

    train.train("tiny-shape", tmp_path / "run", steps=3, progress=False)
    packed = {}

    def fake_package(model, name, package, card, dtype=None):
        packed.update(model=model, name=name, package=package, card=card, dtype=dtype)
        return {"folder": str(tmp_path / name), "sha256": "0" * 64}

    def fake_validate(model, steps, guidance, n=train.VAL_SHAPES):
        score = 50.0 if (steps, guidance) == (16, 2.0) else 60.0 + steps  # not the network's own 2 steps
        return {**{c: score for c in CLASSES}, "mean": score, "mmd": 0.01}

    monkeypatch.setattr(weights, "package", fake_package)
    monkeypatch.setattr(train, "validate_shapes", fake_validate)
    result = train.package_run("tiny-shape", tmp_path / "run")
    model = packed["model"]
    best = (16, 2.0)
    assert (model.config.sample_steps, model.config.guidance_scale) == best
    assert packed["name"] == "tiny-shape" and packed["package"] == "ditlab.vision3d"
    assert packed["dtype"] == torch.float16 and not model.training
    assert f"Chosen: {best[0]} steps, guidance {best[1]:g}" in packed["card"] and "3 steps" in packed["card"]
    assert "Stage 1" not in packed["card"]
    assert result["step"] == 3 and set(result["validation"]) == {str(c) for c in train.SHAPE_CANDIDATES}
    from safetensors.torch import load_file

    ema = load_file(tmp_path / "run" / "checkpoint" / "ema.safetensors")
    for k, v in model.state_dict().items():
        assert torch.allclose(v, ema[k].to(v.dtype)), k


def test_package_run_of_a_baseline_keeps_its_defaults(tiny_specs, tmp_path, monkeypatch):
    from ditlab.core import weights

    train.train("tiny-pointnet", tmp_path / "run", steps=1, progress=False)
    packed = {}
    monkeypatch.setattr(weights, "package", lambda model, name, package, card, dtype=None: packed.update(
        model=model, card=card) or {"folder": "", "sha256": ""})
    monkeypatch.setattr(train, "validate_lidar", lambda *a, **k: pytest.fail("a baseline is not validated"))
    result = train.package_run("tiny-pointnet", tmp_path / "run")
    assert result["validation"] == {} and packed["model"].config.sample_steps == 32
    assert "none: a baseline, sampled with its default 32 steps" in packed["card"]
    assert "the same" in packed["card"] and "as its DiT" in packed["card"]


def test_a_second_stage_starts_from_trained_weights_and_says_so_on_its_card(tiny_specs, tmp_path, monkeypatch):
    from ditlab.core import weights
    from ditlab.core.weights import save_model

    first = tiny_lidar_dit()
    with torch.no_grad():
        for p in first.parameters():
            p.add_(0.01)
    save_model(first, tmp_path / "first", card="# first\n\n**Recipe.** stage one, 7 steps.\n\n**Limits.** none\n")
    headed = lambda: RangeDiT(**{**dict(tiny_lidar_dit().config), "pixel_head": 4})  # noqa: E731
    monkeypatch.setitem(train.SPECS, "tiny-lidar", train.Spec("tiny-lidar", headed, "lidar", TINY))
    model = train.build("tiny-lidar")
    record = train.warm_start(model, tmp_path / "first", tmp_path / "run")
    assert record["new"] == ["head"] and record["recipe"] == "**Recipe.** stage one, 7 steps."
    for k, v in first.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # copied tensors, not computed ones
    with pytest.raises(InputError, match="does not fit"):
        train.warm_start(PointNetDiffusion(width=32, num_classes=0), tmp_path / "first", tmp_path / "other")

    train.train("tiny-lidar", tmp_path / "run2", steps=1, progress=False, init_from=tmp_path / "first")
    packed = {}
    monkeypatch.setattr(weights, "package", lambda model, name, package, card, dtype=None: packed.update(
        card=card) or {"folder": "", "sha256": ""})
    monkeypatch.setattr(train, "validate_lidar", lambda *a, **k: {"complete": 1.0, "densify": 1.0})
    train.package_run("tiny-lidar", tmp_path / "run2")
    card = " ".join(packed["card"].split())
    assert "Stage 1: stage one, 7 steps. Stage 2, from those weights" in card
    assert "new modules, zero-initialised: head" in card and "--init-from" in card
    assert "the final weights are shipped, not the EMA, which after 1 steps of stage 2 still held 90%" in card


def test_the_train_command_runs_a_spec(tiny_specs, tmp_path):
    from typer.testing import CliRunner

    from ditlab.vision3d.cli import app

    r = CliRunner().invoke(app, ["train", "tiny-shape", "--steps", "2", "--out", str(tmp_path / "run"), "--threads",
                                 "1", "--seconds", "1000"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["step"] == 2 and report["params"] > 0
    assert (tmp_path / "run" / "checkpoint" / "state.json").is_file()


@pytest.mark.slow
def test_a_tiny_shape_network_learns(tiny_specs, tmp_path, monkeypatch):
    """A few hundred steps: the loss falls well below its start (flow matching's loss at init is about 2)."""
    monkeypatch.setitem(train.SPECS, "tiny-shape", replace(tiny_specs["tiny-shape"], recipe=replace(
        TINY, batch=8, log_every=50)))
    first = train.train("tiny-shape", tmp_path / "run", steps=50, progress=False)["loss"]
    last = train.train("tiny-shape", tmp_path / "run", steps=400, progress=False)["loss"]
    assert last < 0.8 * first
