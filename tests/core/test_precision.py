import contextlib

import pytest
import torch

from ditlab.core.accel import precision
from ditlab.core.accel.precision import autocast, bf16_supported, compile_blocks, optimize, quantize
from ditlab.core.models import DiT


def tiny_dit() -> DiT:
    """A 2-block DiT over 8x8 images (16 tokens) with every weight perturbed, so the output is not zero."""
    model = DiT.from_preset("tiny/2", token_kind="2d", in_channels=2, input_size=[8, 8], depth=2, hidden_size=64,
                            num_heads=4, num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs():
    return torch.randn(2, 2, 8, 8), torch.tensor([10.0, 700.0]), torch.tensor([0, 2])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


@torch.no_grad()
def test_bf16_autocast_is_close_to_fp32():
    ok, why = bf16_supported("cpu")
    if not ok:
        pytest.skip(why)
    model, args = tiny_dit(), inputs()
    ref = model(*args)
    with autocast("cpu", "bf16"):
        out = model(*args)
    assert rel_err(out, ref) < 5e-2
    assert isinstance(autocast("cpu", "fp32"), contextlib.nullcontext)


def test_bf16_without_hardware_support_says_why(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set())
    ok, why = bf16_supported("cpu")
    assert not ok and "avx512_bf16" in why
    with pytest.raises(RuntimeError, match="avx512_bf16"):
        autocast("cpu", "bf16")
    with pytest.warns(RuntimeWarning, match="fp32"):
        ctx = autocast("cpu", "bf16", allow_fallback=True)
    assert isinstance(ctx, contextlib.nullcontext)
    with pytest.raises(ValueError, match="fp32"):
        autocast("cpu", "fp16")


def test_compile_blocks_compiles_only_the_blocks():
    model = compile_blocks(tiny_dit())  # compilation itself waits for the first call
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert model._compiled_call_impl is None and model.final_layer._compiled_call_impl is None


@pytest.mark.slow  # one Inductor compile of a tiny block: 20 s to 2 min on a busy 2-core CPU
@torch.no_grad()
def test_compile_blocks_matches_eager():
    model, args = tiny_dit(), inputs()
    ref = model(*args)
    compile_blocks(model)
    torch.testing.assert_close(model(*args), ref, atol=1e-5, rtol=1e-5)


def test_compile_without_compiler_raises_or_falls_back(monkeypatch):
    monkeypatch.setattr(precision, "_compiler_missing", lambda device: "no C++ compiler found")
    model = tiny_dit()
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        compile_blocks(model)
    with pytest.warns(RuntimeWarning, match="eagerly"):
        assert compile_blocks(model, allow_fallback=True) is model
    assert all(block._compiled_call_impl is None for block in model.blocks)


@torch.no_grad()
def test_int8_weight_only_is_close():
    model, args = tiny_dit(), inputs()
    ref = model(*args)
    quantize(model, "int8_weight_only")
    assert type(model.blocks[0].x.qkv.weight).__name__ == "Int8Tensor"
    assert rel_err(model(*args), ref) < 5e-2


@torch.no_grad()
def test_int8_dynamic_is_close():
    model, args = tiny_dit(), inputs()
    ref = model(*args)
    quantize(model, "int8_dynamic")
    assert type(model.blocks[0].x.qkv.weight) is not torch.nn.Parameter
    assert rel_err(model(*args), ref) < 5e-2


def test_quantize_changes_no_global_matmul_precision():
    torch._inductor.config.coordinate_descent_tuning = False
    before = torch.get_float32_matmul_precision()
    try:
        for scheme in ("int8_weight_only", "int8_dynamic"):
            quantize(tiny_dit(), scheme)
            assert torch.get_float32_matmul_precision() == before  # torchao's own default would set "high"
            assert torch._inductor.config.coordinate_descent_tuning is False
    finally:
        torch.set_float32_matmul_precision(before)


def test_fp8_on_cpu_names_compute_capability():
    model = tiny_dit()
    with pytest.raises(RuntimeError, match="compute capability >= 8.9"):
        quantize(model, "fp8")
    with pytest.warns(RuntimeWarning, match="compute capability"):
        quantize(model, "fp8", allow_fallback=True)
    assert type(model.blocks[0].x.qkv.weight) is torch.nn.Parameter


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(ValueError, match="int8_weight_only.*int8_dynamic.*fp8"):
        quantize(tiny_dit(), "int4", allow_fallback=True)


def test_missing_torchao_says_how_to_install(monkeypatch):
    def missing():
        raise ImportError("No module named 'torchao'")

    monkeypatch.setattr(precision, "_import_torchao", missing)
    with pytest.raises(RuntimeError, match=r"ditlab-core\[accel\]"):
        quantize(tiny_dit(), "int8_weight_only")
    with pytest.warns(RuntimeWarning, match="unquantized"):
        quantize(tiny_dit(), "int8_weight_only", allow_fallback=True)


def test_optimize_checks_up_front_and_returns_the_context(monkeypatch):
    model = tiny_dit()
    same, ctx = optimize(model)
    assert same is model and isinstance(ctx(), contextlib.nullcontext)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set())
    with pytest.raises(RuntimeError, match="bf16"):
        optimize(model, precision="bf16")
    with pytest.warns(RuntimeWarning, match="fp32"):
        _, ctx = optimize(model, precision="bf16", quantize="fp8", allow_fallback=True)
    assert isinstance(ctx(), contextlib.nullcontext)
