"""Fast tests of ditlab.core.training.peft (LoRA, DiffFit, adapter files) on tiny seeded DiTs (CPU)."""

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditlab.core.errors import FileFormatError, InputError, UsageError
from ditlab.core.models import DiT
from ditlab.core.training import (
    LoRALinear,
    PeftConfig,
    TrainConfig,
    Trainer,
    adapter_config,
    apply_peft,
    load_adapter,
    load_checkpoint,
    merge_adapter,
    parameter_counts,
    read_adapter_meta,
    save_adapter,
    trainable_parameters,
)
from ditlab.core.training.peft import GatedModulation
from ditlab.core.weights import save_model

D, DEPTH = 32, 2


def tiny_dit(seed: int = 0, **overrides) -> DiT:
    """A tiny DiT with every weight moved off DiT's zero initialisation, as a trained base would be (a fresh DiT
    predicts 0 and passes no gradient to its blocks)."""
    torch.manual_seed(seed)
    kw = dict(token_kind="2d", in_channels=1, input_size=[16, 16], patch_size=4, hidden_size=D, depth=DEPTH,
              num_heads=2)
    model = DiT(**{**kw, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 16, 16, generator=g), torch.rand(3, generator=g)


def perturb_adapter(model: DiT, seed: int = 2) -> None:
    """Give every trainable tensor a value it could have after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def lora_count(rank: int, targets=("qkv", "proj", "fc1", "fc2")) -> int:
    """rank * (in + out) per adapted Linear: qkv D -> 3D, proj D -> D, fc1 D -> 4D, fc2 4D -> D."""
    sizes = {"qkv": 4 * D, "proj": 2 * D, "fc1": 5 * D, "fc2": 5 * D}
    return DEPTH * rank * sum(sizes[t] for t in targets)


@pytest.fixture
def base_file(tmp_path):
    """A saved base model and the sha256 of its weights file."""
    return save_model(tiny_dit(), tmp_path / "base")


@pytest.mark.parametrize("method", ["difffit", "lora", "difffit+lora"])
def test_starts_as_the_base_model(method):
    x, t = inputs()
    model = tiny_dit()
    base = model(x, t)
    apply_peft(model, PeftConfig(method=method, targets=("qkv", "proj", "fc1", "fc2", "adaLN_modulation.1")))
    torch.testing.assert_close(model(x, t), base)
    perturb_adapter(model)
    assert not torch.allclose(model(x, t), base, atol=1e-3)  # the adapter does change the output once trained


def test_lora_trains_only_its_matrices_with_the_rank_formula():
    model = apply_peft(tiny_dit(), PeftConfig(method="lora", rank=4, gates=False))
    names = trainable_parameters(model)
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)
    trainable, total = parameter_counts(model)
    assert trainable == lora_count(4) == 4096
    assert total == sum(p.numel() for p in tiny_dit().parameters()) + trainable
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4 * DEPTH


def test_difffit_trains_biases_norm_scales_and_gates():
    base = tiny_dit(qk_norm=True)
    biases = sum(p.numel() for n, p in base.named_parameters() if n.endswith(".bias"))
    norms = sum(p.numel() for n, p in base.named_parameters() if "_norm." in n)
    model = apply_peft(base, PeftConfig(method="difffit"))
    names = trainable_parameters(model)
    assert "final_layer.linear.bias" in names and "blocks.0.x.q_norm.weight" in names
    assert "blocks.1.x.adaLN_modulation.gamma" in names
    assert not any(n.endswith("weight") and "_norm." not in n for n in names)  # no Linear or conv weight
    assert parameter_counts(model)[0] == biases + norms + DEPTH * 2 * D


def test_both_methods_add_up():
    lora = parameter_counts(apply_peft(tiny_dit(), PeftConfig(method="lora", rank=2, gates=False)))[0]
    difffit = parameter_counts(apply_peft(tiny_dit(), PeftConfig(method="difffit")))[0]
    both = parameter_counts(apply_peft(tiny_dit(), PeftConfig(rank=2)))[0]
    assert both == lora + difffit


def test_one_step_reaches_lora_b_and_not_the_base():
    model = apply_peft(tiny_dit(), PeftConfig(method="lora", rank=2))
    x, t = inputs()
    model(x, t).square().mean().backward()
    lora_b = [p for n, p in model.named_parameters() if n.endswith("lora_B")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_forward_and_backward_under_bf16_autocast():
    model = apply_peft(tiny_dit(), PeftConfig())
    x, t = inputs()
    reference = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)
    out.float().square().mean().backward()
    assert model.blocks[0].x.qkv.lora_B.grad.abs().sum() > 0


def test_config_is_checked():
    with pytest.raises(UsageError, match="method is 'ia3'; expected one of .*'difffit\\+lora'"):
        PeftConfig(method="ia3")
    with pytest.raises(UsageError, match="rank is 0; expected an integer >= 1"):
        PeftConfig(rank=0)
    with pytest.raises(UsageError, match="targets is 'qkv'; expected a tuple"):
        PeftConfig(targets="qkv")
    with pytest.raises(UsageError, match="at least one Linear"):
        PeftConfig(method="lora", targets=())
    assert PeftConfig(rank=4).alpha == 4.0 and PeftConfig(method="difffit", targets=()).targets == ()
    with pytest.raises(InputError, match="'attn' names no nn.Linear .*'x.qkv'"):
        apply_peft(tiny_dit(), PeftConfig(targets=("attn",)))


def test_applying_twice_is_refused():
    model = apply_peft(tiny_dit(), PeftConfig())
    with pytest.raises(UsageError, match="already has a difffit\\+lora adapter"):
        apply_peft(model, PeftConfig(method="lora"))
    with pytest.raises(InputError, match="expected a ditlab DiT"):
        apply_peft(torch.nn.Linear(2, 2))


def test_merge_gives_a_plain_model_with_the_same_output():
    x, t = inputs()
    plain = tiny_dit()
    model = apply_peft(tiny_dit(), PeftConfig(targets=("qkv", "proj", "fc1", "fc2", "adaLN_modulation.1")))
    perturb_adapter(model)
    adapted = model(x, t)
    merge_adapter(model)
    assert adapter_config(model) is None
    assert not any(isinstance(m, LoRALinear | GatedModulation) for m in model.modules())
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(plain(x, t), adapted, atol=1e-5, rtol=1e-4)
    apply_peft(model, PeftConfig(method="lora"))  # a merged model can be adapted again


def test_adapter_roundtrip_on_a_fresh_base(tmp_path, base_file):
    x, t = inputs()
    model = apply_peft(tiny_dit(), PeftConfig(rank=4))
    perturb_adapter(model)
    adapted = model(x, t)
    path = save_adapter(model, tmp_path / "ct.adapter.safetensors", base_file, "tiny-base")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ct.adapter.safetensors"]  # no temp file left

    meta = read_adapter_meta(path)
    assert meta["format"] == "ditlab-adapter" and meta["version"] == "1"
    assert meta["config"] == PeftConfig(rank=4)
    assert meta["base_name"] == "tiny-base" and meta["base_sha256"] == base_file
    assert set(meta["keys"]) == set(trainable_parameters(model))
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert not any(k.endswith(("qkv.weight", "fc1.weight")) for k in f.keys())

    fresh = tiny_dit()
    assert not torch.allclose(fresh(x, t), adapted, atol=1e-3)
    load_adapter(fresh, path, expect_digest=base_file, expect_name="tiny-base")
    assert adapter_config(fresh) == PeftConfig(rank=4)
    torch.testing.assert_close(fresh(x, t), adapted, atol=2e-3, rtol=2e-3)  # float16 adapter tensors


def test_adapter_of_another_base_is_refused(tmp_path, base_file):
    path = save_adapter(apply_peft(tiny_dit(), PeftConfig()), tmp_path / "a.safetensors", base_file, "ct-prior")
    other = "ab" * 32
    model = tiny_dit()
    with pytest.raises(InputError) as err:
        load_adapter(model, path, expect_digest=other, expect_name="mr-prior")
    message = str(err.value)
    assert "'ct-prior'" in message and "'mr-prior'" in message
    assert base_file[:12] in message and other[:12] in message
    assert adapter_config(model) is None and not any(isinstance(m, LoRALinear) for m in model.modules())


def test_adapter_that_does_not_fit_is_refused_before_changing_the_model(tmp_path, base_file):
    path = save_adapter(apply_peft(tiny_dit(), PeftConfig()), tmp_path / "a.safetensors", base_file, "tiny")
    wider = tiny_dit(hidden_size=64)
    with pytest.raises(FileFormatError, match="does not fit this DiT: shape mismatches"):
        load_adapter(wider, path, expect_digest=None)
    deeper = tiny_dit(depth=3)
    with pytest.raises(FileFormatError, match="missing keys .*blocks.2"):
        load_adapter(deeper, path, expect_digest=None)
    assert adapter_config(wider) is None and adapter_config(deeper) is None


def test_files_that_are_not_adapters_are_refused(tmp_path):
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights), metadata={"format": "pt"})
    expected = f"{weights} is a safetensors file but not a ditlab adapter (metadata format 'pt')"
    with pytest.raises(FileFormatError, match=re.escape(expected)):
        read_adapter_meta(weights)
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file\n" * 20)
    with pytest.raises(FileFormatError, match=re.escape(f"{text} is not a readable safetensors file")):
        load_adapter(tiny_dit(), text, expect_digest=None)
    with pytest.raises(FileNotFoundError):
        read_adapter_meta(tmp_path / "missing.safetensors")


def test_save_checks_its_arguments(tmp_path, base_file):
    model = apply_peft(tiny_dit(), PeftConfig())
    with pytest.raises(UsageError, match="no adapter to save"):
        save_adapter(tiny_dit(), tmp_path / "a.safetensors", base_file, "tiny")
    with pytest.raises(InputError, match="64 lowercase hex"):
        save_adapter(model, tmp_path / "a.safetensors", "abc", "tiny")
    with pytest.raises(UsageError, match="adapted with"):
        save_adapter(model, tmp_path / "a.safetensors", base_file, "tiny", PeftConfig(method="lora"))
    assert not list(tmp_path.glob("*.safetensors"))


def test_adapter_of_the_medical_prior_is_under_a_megabyte(tmp_path):
    torch.manual_seed(0)
    prior = DiT(token_kind="2d", in_channels=1, input_size=[64, 64], patch_size=4, hidden_size=192, depth=6,
                num_heads=3, pos_embed="rope", window_size=16, window_blocks=list(range(6)))
    model = apply_peft(prior, PeftConfig(rank=8))
    path = save_adapter(model, tmp_path / "ct.safetensors", "0" * 64, "ct-prior")
    size = path.stat().st_size
    assert 2 * parameter_counts(model)[0] < size < 1_000_000
    x = torch.randn(1, 1, 64, 64)
    assert model(x, torch.tensor([0.5])).shape == x.shape


def flow_loss(model, batch, generator):
    x0 = batch
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.rand(x0.shape[0], generator=generator)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    return (model(xt, t) - (noise - x0)).square().mean()


def images(step, generator):
    return torch.randn(4, 1, 16, 16, generator=generator)


def train_config(steps: int, output_dir=None) -> TrainConfig:
    return TrainConfig(steps=steps, lr=1e-2, ema_decay=0.9, progress=False, log_every=2,
                       output_dir=None if output_dir is None else str(output_dir))


def peft_dit(lora_seed: int = 5) -> DiT:
    model = tiny_dit()
    torch.manual_seed(lora_seed)  # LoRA A's initialisation
    return apply_peft(model, PeftConfig(rank=2)).train()


def test_trainer_changes_only_the_adapter_and_resumes(tmp_path):
    frozen = {n: p.detach().clone() for n, p in tiny_dit().named_parameters()}
    straight = peft_dit()
    Trainer(straight, flow_loss, images, train_config(6)).train()
    trained = trainable_parameters(straight)
    for name, p in straight.named_parameters():
        if name in trained:
            continue
        torch.testing.assert_close(p, frozen[name], msg=name)
    assert all(not torch.allclose(p, torch.zeros_like(p)) for n, p in trained.items() if n.endswith("lora_B"))
    assert not torch.allclose(trained["blocks.0.x.adaLN_modulation.gamma"], torch.ones(2, D))

    Trainer(peft_dit(), flow_loss, images, train_config(3, tmp_path)).train()
    resumed = peft_dit(lora_seed=6)  # other LoRA weights: everything must come from the checkpoint
    trainer = Trainer(resumed, flow_loss, images, train_config(6, tmp_path))
    assert trainer.step == 3
    trainer.train()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)

    restored = peft_dit(lora_seed=7)
    assert load_checkpoint(tmp_path / "checkpoint", restored)["step"] == 6  # the EMA weights
    for (name, a), (_, b) in zip(trainer.ema_model.state_dict().items(), restored.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
