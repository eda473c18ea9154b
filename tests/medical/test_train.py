"""The prior's training recipe: data that is a function of the step, and the resume file between machines."""

import json

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from safetensors import safe_open
from safetensors.torch import load_file

from ditlab.core.training import TrainConfig, Trainer, load_checkpoint
from ditlab.medical.data import make_phantom
from ditlab.medical.models import TILE, prior_model
from ditlab.medical.operators import hu_to_unit
from ditlab.medical.train import (
    POOL,
    QUICK_SEED,
    REFRESH,
    SLIDE,
    TRAIN_SEED,
    SliceData,
    export_resume,
    import_resume,
    prior_loss,
)

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
    cfg = TrainConfig(steps=steps, lr=1e-3, ema_decay=0.9, mixed_precision="no", output_dir=str(out_dir),
                      progress=False)
    trainer = Trainer(prior_model(hidden=32, depth=1, heads=1), prior_loss, tiny_data(batch=2), cfg)
    trainer.train()
    return trainer


def test_export_and_import_resume_round_trip(tmp_path):
    train_tiny(tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint"
    file = export_resume(tmp_path / "run", tmp_path / "packed" / "ct-prior.resume.safetensors")
    assert file == tmp_path / "packed" / "ct-prior.resume.safetensors"

    originals = {part: load_file(checkpoint / f"{part}.safetensors") for part in ("model", "ema")}
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        state = json.loads(f.metadata()["state"])
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys)
    assert keys == {f"{part}.{k}" for part, tensors in originals.items() for k in tensors}
    assert state == json.loads((checkpoint / "state.json").read_text()) and state["step"] == 2

    folder = import_resume(file, tmp_path / "next")
    assert folder == tmp_path / "next" / "checkpoint"
    assert json.loads((folder / "state.json").read_text())["checkpoint_dtype"] == "float32"
    for part, ema in (("model", False), ("ema", True)):
        model = prior_model(hidden=32, depth=1, heads=1)
        assert load_checkpoint(folder, model, ema=ema)["step"] == 2
        for name, value in model.state_dict().items():
            assert value.dtype == torch.float32
            assert torch.equal(value, originals[part][name].half().float()), (part, name)
        assert any(not torch.equal(v, originals[part][k]) for k, v in model.state_dict().items())  # fp16 rounding

    with pytest.warns(UserWarning, match="AdamW moments restart"):
        resumed = Trainer(prior_model(hidden=32, depth=1, heads=1), prior_loss, tiny_data(batch=2),
                          TrainConfig(steps=3, mixed_precision="no", output_dir=str(tmp_path / "next"),
                                      progress=False))
    assert resumed.step == 2


def test_import_resume_leaves_an_existing_checkpoint_and_a_missing_file_alone(tmp_path):
    train_tiny(tmp_path / "run", steps=1)
    file = export_resume(tmp_path / "run", tmp_path / "resume.safetensors")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoint").iterdir()}

    assert import_resume(file, tmp_path / "run") is None
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoint").iterdir()} == before
    assert import_resume(tmp_path / "missing.safetensors", tmp_path / "fresh") is None
    assert not (tmp_path / "fresh").exists()


def test_export_resume_without_a_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to export"):
        export_resume(tmp_path, tmp_path / "resume.safetensors")
    assert not (tmp_path / "resume.safetensors").exists()
