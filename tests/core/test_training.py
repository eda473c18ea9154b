"""Fast tests of ditlab.core.training on a tiny seeded regression problem (CPU, fp32 unless said)."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ditlab.core.errors import FileFormatError, UsageError
from ditlab.core.training import (
    EMA,
    Recipe,
    TrainConfig,
    Trainer,
    export_resume,
    import_resume,
    load_checkpoint,
    resume_path,
    training_dir,
)
from ditlab.core.training.resume import TRAINING_DIR_ENV

W_TRUE = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 1.5], [-1.0, 1.0]])


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def synthetic(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 4, generator=generator)
    return x, x @ W_TRUE


def mse(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
    x, y = batch
    noise = 0.01 * torch.randn(y.shape, generator=generator, device=generator.device)
    return (model(x) - y - noise).pow(2).mean()


def config(**overrides) -> TrainConfig:
    base = dict(
        steps=20, lr=1e-2, warmup_steps=3, weight_decay=0.01, ema_decay=0.9, progress=False, log_every=5
    )
    return TrainConfig(**{**base, **overrides})


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0, msg=name)


def test_loss_decreases():
    model = tiny_mlp()
    x, y = synthetic(0, torch.Generator().manual_seed(123))
    before = mse(model.eval(), (x, y), torch.Generator()).item()
    result = Trainer(model, mse, synthetic, config(steps=150)).train()
    after = mse(model.eval(), (x, y), torch.Generator()).item()
    assert result["step"] == 150
    assert after < 0.2 * before
    assert result["loss"] < before and result["steps_per_s"] > 0 and result["samples_per_s"] > 0


def test_resume_is_exact(tmp_path):
    straight = tiny_mlp()
    Trainer(straight, mse, synthetic, config(output_dir=str(tmp_path / "a"))).train()
    straight_ema = Trainer(tiny_mlp(), mse, synthetic, config(output_dir=str(tmp_path / "a"))).ema_model

    first = tiny_mlp()
    Trainer(first, mse, synthetic, config(steps=10, output_dir=str(tmp_path / "b"))).train()
    resumed = tiny_mlp(seed=1)  # other initial weights: everything must come from the checkpoint
    trainer = Trainer(resumed, mse, synthetic, config(output_dir=str(tmp_path / "b")))
    assert trainer.step == 10
    result = trainer.train()

    assert result["step"] == 20
    assert_same_weights(straight, resumed)
    assert_same_weights(straight_ema, trainer.ema_model)
    log = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [5, 10, 15, 20]


def test_resume_is_exact_with_a_shuffled_dataloader(tmp_path):
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, x @ W_TRUE), batch_size=8, shuffle=True)  # 5 batches per epoch

    straight = tiny_mlp()
    Trainer(straight, mse, loader, config(steps=12)).train()
    Trainer(tiny_mlp(), mse, loader, config(steps=7, output_dir=str(tmp_path))).train()
    resumed = tiny_mlp(seed=1)
    Trainer(resumed, mse, loader, config(steps=12, output_dir=str(tmp_path))).train()
    assert_same_weights(straight, resumed)


def test_checkpoint_is_safetensors_and_json_in_half_precision(tmp_path):
    model = tiny_mlp()
    cfg = config(steps=4, checkpoint_every=2, checkpoint_dtype="float16", output_dir=str(tmp_path))
    trainer = Trainer(model, mse, synthetic, cfg)
    trainer.train()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "train_log.jsonl"]  # no temp folders
    folder = tmp_path / "checkpoint"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    for name in names[:3]:
        raw = (folder / name).read_bytes()
        header = int.from_bytes(raw[:8], "little")
        assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header])  # safetensors header, not a pickle
    assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {torch.float16}
    assert {t.dtype for t in load_file(folder / "ema.safetensors").values()} == {torch.float16}
    assert {t.dtype for t in load_file(folder / "optimizer.safetensors").values()} == {torch.float32}
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 4 and state["checkpoint_dtype"] == "float16"

    restored = tiny_mlp(seed=1)
    assert load_checkpoint(folder, restored)["step"] == 4
    assert_same_weights(trainer.ema_model, restored, atol=1e-2)  # half precision: approximate


def test_ema_update_is_a_lerp_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.75)
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(5, 3))  # moves the BatchNorm running statistics
    ema.update(model)

    new = model.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(ema.state_dict()[name], 0.75 * old[name] + 0.25 * new[name])
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        torch.testing.assert_close(ema.state_dict()[name], new[name])
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_jsonl_log_lines(tmp_path):
    Trainer(tiny_mlp(), mse, synthetic, config(steps=7, log_every=3, output_dir=str(tmp_path))).train()
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6, 7]
    for line in lines:
        assert set(line) == {"step", "loss", "lr", "steps_per_s", "samples_per_s", "elapsed_s"}
        assert line["samples_per_s"] == pytest.approx(8 * line["steps_per_s"])
    assert lines[0]["lr"] == pytest.approx(1e-2)  # warmup of 3 steps is over after step 3


def test_bf16_autocast_on_cpu():
    result = Trainer(tiny_mlp(), mse, synthetic, config(steps=3, mixed_precision="bf16")).train()
    assert result["step"] == 3 and torch.isfinite(torch.tensor(result["loss"]))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    from ditlab.core.training import trainer

    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "bf16_supported", lambda device: (native, "patched"))
    t = Trainer(tiny_mlp(), mse, synthetic, config(steps=1, mixed_precision="auto"))
    assert t.accelerator.mixed_precision == ("bf16" if native else "no")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("steps", 0, ">= 1"),
        ("lr", 0.0, "> 0"),
        ("ema_decay", 1.0, "[0, 1)"),
        ("ema_decay", -0.1, "[0, 1)"),
        ("mixed_precision", "fp16", "'auto', 'no', 'bf16'"),
        ("checkpoint_dtype", "int8", "'float32', 'float16', 'bfloat16'"),
        ("grad_clip", 0.0, "None or > 0"),
    ],
)
def test_bad_config_names_the_valid_range(field, value, expected):
    with pytest.raises(ValueError, match=field) as info:
        TrainConfig(**{field: value})
    assert expected in str(info.value)


def test_resume_from_weights_only_checkpoint(tmp_path):
    Trainer(tiny_mlp(), mse, synthetic, config(steps=4, output_dir=str(tmp_path))).train()
    (tmp_path / "checkpoint" / "optimizer.safetensors").unlink()
    with pytest.warns(UserWarning, match="AdamW moments restart"):
        trainer = Trainer(tiny_mlp(seed=1), mse, synthetic, config(steps=6, output_dir=str(tmp_path)))
    assert trainer.step == 4 and trainer.train()["step"] == 6


def test_recipe_is_the_one_mapping_to_train_config(tmp_path):
    recipe = Recipe(batch=8, lr=2e-3, warmup=5, weight_decay=0.01, grad_clip=None, ema_decay=0.9, seed=3,
                    precision="bf16", checkpoint_every=4, log_every=2)
    cfg = recipe.train_config(tmp_path, steps=12, progress=False)
    assert (cfg.steps, cfg.lr, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip, cfg.ema_decay) == (
        12, 2e-3, 5, 0.01, None, 0.9)
    assert (cfg.seed, cfg.mixed_precision, cfg.checkpoint_every, cfg.log_every) == (3, "bf16", 4, 2)
    assert cfg.output_dir == str(tmp_path) and cfg.progress is False
    assert recipe.train_config(None, steps=1).output_dir is None
    assert replace(recipe, steps=7).train_config(None).steps == 7
    assert recipe.to_dict() == {"batch": 8, "lr": 2e-3, "steps": None, "warmup": 5, "weight_decay": 0.01,
                                "grad_clip": None, "ema_decay": 0.9, "seed": 3, "precision": "bf16",
                                "checkpoint_every": 4, "log_every": 2}


def test_recipe_errors_name_the_field():
    recipe = Recipe(batch=8, lr=1e-3)
    with pytest.raises(UsageError, match="no steps: pass steps="):
        recipe.train_config(None)
    with pytest.raises(UsageError, match=r"unknown TrainConfig fields \['warmup'\].*dataclasses.replace"):
        recipe.train_config(None, steps=3, warmup=10)
    with pytest.raises(UsageError, match="TrainConfig.mixed_precision"):
        replace(recipe, precision="fp16").train_config(None, steps=3)
    with pytest.raises(UsageError, match="Recipe.batch must be >= 1"):
        Recipe(batch=0, lr=1e-3)


@pytest.mark.parametrize("ema_decay", [0.9, 0.0])
def test_exported_resume_file_lets_a_trainer_continue(tmp_path, ema_decay):
    first = Trainer(tiny_mlp(), mse, synthetic, config(steps=6, ema_decay=ema_decay, output_dir=str(tmp_path / "a")))
    first.train()
    file = export_resume(tmp_path / "a" / "checkpoint", tmp_path / "packed" / "mlp.resume.safetensors")
    assert file == tmp_path / "packed" / "mlp.resume.safetensors"
    with safe_open(str(file), framework="pt") as f:
        parts = {key.split(".")[0] for key in f.keys()}
        assert {f.get_tensor(key).dtype for key in f.keys()} == {torch.float16}
        assert json.loads(f.metadata()["state"])["step"] == 6
    assert parts == ({"model", "ema"} if ema_decay else {"model"})  # no optimizer moments

    folder = import_resume(file, tmp_path / "b" / "checkpoint")
    assert folder == tmp_path / "b" / "checkpoint"
    assert json.loads((folder / "state.json").read_text())["checkpoint_dtype"] == "float32"
    with pytest.warns(UserWarning, match="AdamW moments restart"):
        resumed = Trainer(tiny_mlp(seed=1), mse, synthetic,
                          config(steps=10, ema_decay=ema_decay, output_dir=str(tmp_path / "b")))
    assert resumed.step == 6
    assert resumed.scheduler.last_epoch == first.scheduler.last_epoch
    assert_same_weights(first.accelerator.unwrap_model(first.model), resumed.accelerator.unwrap_model(resumed.model),
                        atol=2e-3)  # float16 rounding
    assert_same_weights(first.ema_model, resumed.ema_model, atol=2e-3)
    assert resumed.train()["step"] == 10
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 10


def test_import_resume_keeps_a_checkpoint_as_far_along_and_replaces_an_older_one(tmp_path):
    Trainer(tiny_mlp(), mse, synthetic, config(steps=4, output_dir=str(tmp_path / "run"))).train()
    file = export_resume(tmp_path / "run" / "checkpoint", tmp_path / "m.resume.safetensors")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoint").iterdir()}
    assert import_resume(file, tmp_path / "run" / "checkpoint") is None
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoint").iterdir()} == before

    Trainer(tiny_mlp(), mse, synthetic, config(steps=2, output_dir=str(tmp_path / "old"))).train()
    assert import_resume(file, tmp_path / "old" / "checkpoint") == tmp_path / "old" / "checkpoint"
    assert json.loads((tmp_path / "old" / "checkpoint" / "state.json").read_text())["step"] == 4
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["checkpoint", "train_log.jsonl"]


def test_resume_files_that_are_missing_or_foreign_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trainer checkpoint"):
        export_resume(tmp_path / "checkpoint", tmp_path / "m.resume.safetensors")
    assert not (tmp_path / "m.resume.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="resume file not found"):
        import_resume(tmp_path / "m.resume.safetensors", tmp_path / "checkpoint")
    save_file(tiny_mlp().state_dict(), str(tmp_path / "weights.safetensors"))  # a weights file, not a resume file
    with pytest.raises(FileFormatError, match=r"holds the tensor '0\.(weight|bias)'; expected a resume file"):
        import_resume(tmp_path / "weights.safetensors", tmp_path / "checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FileFormatError, match="not a readable safetensors"):
        import_resume(tmp_path / "junk.safetensors", tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()


def test_training_dir_is_found_from_the_working_directory_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TRAINING_DIR_ENV, raising=False)
    repo = tmp_path / "repo"
    (repo / "training").mkdir(parents=True)
    (repo / "packages" / "medical").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    (repo / "packages" / "medical" / "pyproject.toml").write_text("")  # a package: no training/ of its own
    monkeypatch.chdir(repo / "packages" / "medical")
    assert training_dir() == repo.resolve() / "training"
    assert resume_path("ct-prior") == repo.resolve() / "training" / "ct-prior.resume.safetensors"
    with pytest.raises(ValueError, match="plain name"):
        resume_path("../ct-prior")

    monkeypatch.setenv(TRAINING_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(UsageError, match="not a folder"):
        training_dir()
    (tmp_path / "elsewhere").mkdir()
    assert training_dir() == tmp_path / "elsewhere"

    monkeypatch.delenv(TRAINING_DIR_ENV)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=f"no training/ folder .* set \\${TRAINING_DIR_ENV}"):
        training_dir()


def test_resume_run_goes_on_from_the_checkout_file_or_a_given_one(tmp_path, monkeypatch):
    from ditlab.core.training import export_run, resume_run

    monkeypatch.setenv(TRAINING_DIR_ENV, str(tmp_path / "training"))
    (tmp_path / "training").mkdir()
    assert resume_run("mlp", tmp_path / "fresh") is None  # no resume file in the checkout: a fresh run
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(FileNotFoundError, match="resume file not found"):
        resume_run("mlp", tmp_path / "fresh", tmp_path / "nowhere.resume.safetensors")
    Trainer(tiny_mlp(), mse, synthetic, config(steps=3, output_dir=str(tmp_path / "run"))).train()
    file = export_run("mlp", tmp_path / "run")
    assert file == tmp_path / "training" / "mlp.resume.safetensors" and file.is_file()
    assert resume_run("mlp", tmp_path / "next") == tmp_path / "next" / "checkpoint"
    assert json.loads((tmp_path / "next" / "checkpoint" / "state.json").read_text())["step"] == 3
    other = export_run("mlp", tmp_path / "run", tmp_path / "other.resume.safetensors")
    assert resume_run("mlp", tmp_path / "third", other) == tmp_path / "third" / "checkpoint"
