"""Fast tests of ditlab.core.training on a tiny seeded regression problem (CPU, fp32 unless said)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ditlab.core.training import EMA, TrainConfig, Trainer, load_checkpoint

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
