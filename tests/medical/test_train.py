"""The prior's training recipe: data that is a function of the step, and the resume file between machines."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from safetensors import safe_open

import ditlab.medical
from ditlab.core.errors import UsageError
from ditlab.core.training import Trainer, import_resume, load_checkpoint, resume_path
from ditlab.core.training.resume import TRAINING_DIR_ENV
from ditlab.medical.data import make_phantom
from ditlab.medical.models import PRIOR_NAME, TILE, prior_model
from ditlab.medical.operators import hu_to_unit
from ditlab.medical.train import (
    POOL,
    QUICK_SEED,
    RECIPE,
    REFRESH,
    SLIDE,
    TRAIN_SEED,
    SliceData,
    export_prior_resume,
    prior_loss,
    train_prior,
)

REPO = Path(__file__).resolve().parents[2]
FULL, QUICK = (80, 80, 8), (64, 64, 8)  # a full slice is larger than a crop, a quick one is exactly one


def tiny_data(batch: int = 4, quick_share: float = 0.5) -> SliceData:
    return SliceData(batch=batch, quick_share=quick_share, full_shape=FULL, quick_shape=QUICK, pool=2)


def tiles(shape: tuple[int, int, int], seeds: list[int]) -> np.ndarray:
    """Every TILE x TILE window of every axial slice of the phantoms, as is and mirrored (a view, no copy)."""
    vols = [2 * hu_to_unit(np.moveaxis(make_phantom(shape, seed=s), 2, 0)) - 1 for s in seeds]
    slices = np.concatenate([np.concatenate([v, v[:, ::-1]]) for v in vols])
    return sliding_window_view(slices, (TILE, TILE), axis=(1, 2))  # (N, dy, dx, TILE, TILE)


def test_batches_are_a_function_of_step_and_generator_seed():
    data = tiny_data()
    a = data(7, torch.Generator().manual_seed(3))["x"]
    assert a.shape == (4, 1, TILE, TILE) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and a.min() == -1 and a.max() > -1  # air and tissue
    assert torch.equal(a, data(7, torch.Generator().manual_seed(3))["x"])
    assert torch.equal(a, tiny_data()(7, torch.Generator().manual_seed(3))["x"])  # a fresh cache: the same batch
    assert torch.equal(a, data(REFRESH - 1, torch.Generator().manual_seed(3))["x"])  # same pool, same draws
    assert not torch.equal(a, data(7, torch.Generator().manual_seed(4))["x"])
    assert not torch.equal(a, data(REFRESH, torch.Generator().manual_seed(3))["x"])  # the pool has slid


@pytest.mark.parametrize("step", [0, REFRESH])
def test_the_quick_share_comes_first_and_every_sample_is_from_the_live_pool(step):
    data = tiny_data(batch=4, quick_share=0.5)
    x = data(step, torch.Generator().manual_seed(0))["x"][:, 0].numpy()
    quick, full = tiles(QUICK, data.seeds(step, "quick")), tiles(FULL, data.seeds(step, "full"))

    def found(crop: np.ndarray, pool: np.ndarray) -> bool:
        return bool((pool == crop).all(axis=(-2, -1)).any())

    assert data.n_quick == 2
    assert [found(c, quick) for c in x] == [True, True, False, False]
    assert [found(c, full) for c in x] == [False, False, True, True]
    assert tiny_data(batch=32, quick_share=0.25).n_quick == 8


def test_the_seed_pool_slides_and_never_meets_validation_or_test_seeds():
    data = SliceData()  # seeds() generates nothing
    full0 = data.seeds(0, "full")
    assert full0 == list(range(TRAIN_SEED, TRAIN_SEED + POOL))
    assert data.seeds(0, "quick") == list(range(QUICK_SEED, QUICK_SEED + POOL))
    assert data.seeds(REFRESH - 1, "full") == full0
    assert data.seeds(REFRESH, "full") == [s + SLIDE for s in full0]
    assert len(set(full0) & set(data.seeds(REFRESH, "full"))) == POOL - SLIDE
    assert data.seeds(7 * REFRESH + 3, "quick") == [s + 7 * SLIDE for s in data.seeds(0, "quick")]
    assert tiny_data().seeds(REFRESH, "full") == [TRAIN_SEED + SLIDE, TRAIN_SEED + SLIDE + 1]

    held_out = set(range(200))  # test seeds 0..99, validation seeds 100..199
    for step in range(0, 2_000_000, 9_999):
        full, quick = set(data.seeds(step, "full")), set(data.seeds(step, "quick"))
        assert not (full | quick) & held_out
        assert not full & quick


def train_tiny(out_dir, steps: int = 2) -> Trainer:
    torch.manual_seed(0)
    cfg = replace(RECIPE, lr=1e-3, ema_decay=0.9, precision="no").train_config(out_dir, steps=steps, progress=False)
    trainer = Trainer(prior_model(hidden=32, depth=1, heads=1), prior_loss, tiny_data(batch=2), cfg)
    trainer.train()
    return trainer


def test_the_recipe_trains_with_the_shipped_settings():
    cfg = RECIPE.train_config("run", steps=100)
    assert (cfg.lr, cfg.warmup_steps, cfg.ema_decay, cfg.grad_clip, cfg.mixed_precision) == (3e-4, 200, 0.999, 1.0,
                                                                                               "bf16")
    assert (cfg.checkpoint_every, cfg.log_every, cfg.output_dir, RECIPE.batch) == (100, 25, "run", 32)


def test_export_prior_resume_writes_the_training_folders_file(tmp_path, monkeypatch):
    train_tiny(tmp_path / "run")
    (tmp_path / "training").mkdir()
    monkeypatch.setenv(TRAINING_DIR_ENV, str(tmp_path / "training"))
    file = export_prior_resume(tmp_path / "run")
    assert file == tmp_path / "training" / "ct-prior.resume.safetensors"
    with safe_open(str(file), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 2
    assert export_prior_resume(tmp_path / "run", tmp_path / "other.safetensors") == tmp_path / "other.safetensors"


COMMITTED = REPO / "training" / "ct-prior.resume.safetensors"


def test_the_resume_file_is_found_from_the_checkout_outside_every_package(monkeypatch):
    monkeypatch.delenv(TRAINING_DIR_ENV, raising=False)
    monkeypatch.chdir(REPO / "packages" / "medical")  # a package folder, with a pyproject.toml of its own
    file = resume_path(PRIOR_NAME)
    assert file == COMMITTED
    assert REPO / "packages" not in file.parents  # in no package, so in no wheel
    assert Path(ditlab.medical.__file__).parent not in file.parents


def test_an_exported_resume_file_resumes_a_prior_run_at_its_step(tmp_path):
    """What a committed `training/ct-prior.resume.safetensors` is for (the file itself is gone with the finished
    training): a run exported by `export_prior_resume` goes on from its step in a fresh run folder."""
    train_tiny(tmp_path / "run")
    file = export_prior_resume(tmp_path / "run", tmp_path / "ct-prior.resume.safetensors")
    folder = import_resume(file, tmp_path / "new" / "checkpoint")
    model = prior_model(hidden=32, depth=1, heads=1)
    step = load_checkpoint(folder, model)["step"]
    cfg = replace(RECIPE, precision="no").train_config(tmp_path / "new", steps=step + 1, progress=False)
    with pytest.warns(UserWarning, match="AdamW moments restart"):
        trainer = Trainer(prior_model(hidden=32, depth=1, heads=1), prior_loss, tiny_data(batch=2), cfg)
    assert step > 0 and trainer.step == step


def test_train_prior_outside_a_checkout_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(TRAINING_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=f"no training/ folder .*{TRAINING_DIR_ENV}"):
        train_prior(tmp_path / "run", steps=1)
    with pytest.raises(FileNotFoundError, match="resume file not found"):
        train_prior(tmp_path / "run", steps=1, resume_file=tmp_path / "missing.resume.safetensors")
    assert not (tmp_path / "run").exists()
