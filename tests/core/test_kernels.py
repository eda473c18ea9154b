"""Fused kernels: Triton (under TRITON_INTERPRET=1 on the CPU, fp32) against the torch reference,
the dispatcher's choices and errors, torch.compile without graph breaks, and fp16/bf16 on a GPU."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ditlab.core import kernels
from ditlab.core.kernels import reference

# Runs in a fresh interpreter: TRITON_INTERPRET must be set before triton is imported.
INTERPRETED = textwrap.dedent("""
    import json
    import torch
    from ditlab.core import kernels
    from ditlab.core.kernels import reference

    torch.manual_seed(0)
    diffs = {}

    def record(name, got, want):
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        diffs[name] = max((g - w).abs().max().item() for g, w in zip(got, want))

    for b, t, d in [(2, 3, 48), (1, 1, 64), (3, 2, 130)]:
        x, y = torch.randn(b, t, d), torch.randn(b, t, d)
        gate, shift, scale, w = torch.randn(b, d), torch.randn(b, d), torch.randn(b, d), torch.randn(d)
        record(f"layernorm_modulate {b, t, d}", kernels.layernorm_modulate(x, shift, scale, backend="triton"),
               reference.layernorm_modulate(x, shift, scale))
        record(f"gated_residual {b, t, d}",
               kernels.gated_residual_layernorm_modulate(x, gate, y, shift, scale, 1e-5, backend="triton"),
               reference.gated_residual_layernorm_modulate(x, gate, y, shift, scale, 1e-5))
        record(f"rms_norm {b, t, d}", kernels.rms_norm(x, w, backend="triton"), reference.rms_norm(x, w))
    for b, h, l, dh in [(2, 3, 5, 16), (1, 2, 1, 10)]:
        qkv = torch.randn(b, l, 3, h, dh).permute(2, 0, 3, 1, 4)  # q, k, v as strided views, as in the model
        cos, sin = torch.randn(l, dh // 2), torch.randn(l, dh // 2)
        record(f"apply_rope {b, h, l, dh}", kernels.apply_rope(qkv[0], cos, sin, backend="triton"),
               reference.apply_rope(qkv[0], cos, sin))

    # 2 rows per program (rope's tiles cross samples), LayerNorm + modulate in chunks of 16 of 40
    from ditlab.core.kernels import triton_kernels
    names = ("layernorm_modulate", "gated_residual_layernorm_modulate", "rms_norm", "apply_rope")
    triton_kernels.TUNING.update({k: (2, 1, 16) for k in names})
    x, y = torch.randn(3, 3, 40), torch.randn(3, 3, 40)
    gate, shift, scale, w = torch.randn(3, 40), torch.randn(3, 40), torch.randn(3, 40), torch.randn(40)
    record("tuned layernorm_modulate", kernels.layernorm_modulate(x, shift, scale, backend="triton"),
           reference.layernorm_modulate(x, shift, scale))
    record("tuned gated_residual",
           kernels.gated_residual_layernorm_modulate(x, gate, y, shift, scale, backend="triton"),
           reference.gated_residual_layernorm_modulate(x, gate, y, shift, scale))
    record("tuned rms_norm", kernels.rms_norm(x, w, backend="triton"), reference.rms_norm(x, w))
    q, cos, sin = torch.randn(1, 3, 3, 8), torch.randn(3, 4), torch.randn(3, 4)
    record("tuned apply_rope", kernels.apply_rope(q, cos, sin, backend="triton"), reference.apply_rope(q, cos, sin))
    triton_kernels.TUNING.clear()

    def block(x, gate, y, shift, scale, w, q, cos, sin):
        h = kernels.layernorm_modulate(x, shift, scale, backend="triton")
        x, h = kernels.gated_residual_layernorm_modulate(x, gate, h + y, shift, scale, backend="triton")
        return x, h, kernels.rms_norm(h, w, backend="triton"), kernels.apply_rope(q, cos, sin, backend="triton")

    args = (x, gate, y, shift, scale, w, torch.randn(2, 2, 3, 8), torch.randn(3, 4), torch.randn(3, 4))
    with torch.no_grad():
        record("compiled", torch.compile(block, fullgraph=True, backend="aot_eager")(*args), block(*args))
    print(json.dumps(diffs))
""")


def test_triton_matches_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(diffs) == 16
    assert all(v <= 1e-5 for v in diffs.values()), diffs


def _inputs(b=2, t=3, d=48, h=2, l=5, dh=8):
    return {
        "x": torch.randn(b, t, d), "y": torch.randn(b, t, d), "gate": torch.randn(b, d), "shift": torch.randn(b, d),
        "scale": torch.randn(b, d), "w": torch.randn(d), "q": torch.randn(b, h, l, dh),
        "cos": torch.randn(l, dh // 2), "sin": torch.randn(l, dh // 2),
    }


def _all_ops(a: dict, **kw) -> list[torch.Tensor]:
    x_new, h = kernels.gated_residual_layernorm_modulate(a["x"], a["gate"], a["y"], a["shift"], a["scale"], **kw)
    return [kernels.layernorm_modulate(a["x"], a["shift"], a["scale"], **kw), x_new, h,
            kernels.rms_norm(a["x"], a["w"], **kw), kernels.apply_rope(a["q"], a["cos"], a["sin"], **kw)]


def _all_references(a: dict) -> list[torch.Tensor]:
    x_new, h = reference.gated_residual_layernorm_modulate(a["x"], a["gate"], a["y"], a["shift"], a["scale"])
    return [reference.layernorm_modulate(a["x"], a["shift"], a["scale"]), x_new, h,
            reference.rms_norm(a["x"], a["w"]), reference.apply_rope(a["q"], a["cos"], a["sin"])]


def test_auto_on_cpu_is_the_reference_bit_for_bit():
    a = _inputs()
    for got, want in zip(_all_ops(a), _all_references(a), strict=True):
        assert torch.equal(got, want)
    for got, want in zip(_all_ops(a, backend="torch"), _all_references(a), strict=True):
        assert torch.equal(got, want)


def test_reference_definitions():
    a = _inputs()
    x, shift, scale = a["x"], a["shift"], a["scale"]
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(reference.layernorm_modulate(x, shift, scale), want)
    want = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * a["w"]
    torch.testing.assert_close(reference.rms_norm(x, a["w"]), want)
    # interleaved pairs are complex numbers multiplied by e^(i angle)
    q, angle = a["q"], torch.atan2(a["sin"], a["cos"])
    radius = torch.sqrt(a["cos"] ** 2 + a["sin"] ** 2)
    want = torch.view_as_real(torch.view_as_complex(q.unflatten(-1, (-1, 2))) * torch.polar(radius, angle)).flatten(-2)
    torch.testing.assert_close(reference.apply_rope(q, a["cos"], a["sin"]), want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "_TRITON_ERROR", None)
    a = _inputs()
    with pytest.raises(RuntimeError, match="Triton needs CUDA, or TRITON_INTERPRET=1"):
        kernels.layernorm_modulate(a["x"], a["shift"], a["scale"], backend="triton")
    assert kernels.backend()["reason"] == "no CUDA device and TRITON_INTERPRET is not 1"


def test_triton_missing_says_why(monkeypatch):
    monkeypatch.setattr(kernels, "_TRITON_ERROR", "triton is not installed (pip install triton)")
    a = _inputs()
    with pytest.raises(RuntimeError, match=r"rms_norm: backend='triton' cannot run: triton is not installed"):
        kernels.rms_norm(a["x"], a["w"], backend="triton")
    assert not kernels.backend()["triton_usable"]
    assert kernels.backend()["auto"] == "torch"


def test_fallback_only_when_allowed_and_with_a_warning(monkeypatch):
    monkeypatch.setattr(kernels, "_TRITON_ERROR", "triton is not installed (pip install triton)")
    a = _inputs()
    with pytest.warns(RuntimeWarning, match="running the torch reference"):
        got = _all_ops(a, backend="triton", allow_fallback=True)
    for g, w in zip(got, _all_references(a), strict=True):
        assert torch.equal(g, w)


def test_triton_is_forward_only(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", True)  # Triton could run here, but a gradient is needed
    monkeypatch.setattr(kernels, "_TRITON_ERROR", None)
    a = _inputs()
    x = a["x"].requires_grad_()
    with pytest.raises(RuntimeError, match="forward-only"):
        kernels.layernorm_modulate(x, a["shift"], a["scale"], backend="triton")
    kernels.layernorm_modulate(x, a["shift"], a["scale"]).square().sum().backward()  # auto: the reference
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_input():
    a = _inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.layernorm_modulate(a["x"], a["shift"], a["scale"], backend="cuda")
    with pytest.raises(ValueError, match=r"expected shift of shape \(B, D\) = \(2, 48\), got \(2, 47\)"):
        kernels.layernorm_modulate(a["x"], a["shift"][:, :47], a["scale"])
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, D\)"):
        kernels.layernorm_modulate(a["x"][0], a["shift"], a["scale"])
    with pytest.raises(ValueError, match="expected y of the shape of x"):
        kernels.gated_residual_layernorm_modulate(a["x"], a["gate"], a["y"][:, :1], a["shift"], a["scale"])
    with pytest.raises(ValueError, match=r"expected weight of shape \(48,\)"):
        kernels.rms_norm(a["x"], a["w"][:8])
    with pytest.raises(ValueError, match=r"expected cos and sin of shape \(L, Dh/2\) = \(5, 4\)"):
        kernels.apply_rope(a["q"], a["cos"][:3], a["sin"])


def test_compile_fullgraph_through_the_dispatcher():
    a = _inputs()

    def block(x, gate, y, shift, scale, w, q, cos, sin):
        h = kernels.layernorm_modulate(x, shift, scale)
        x, h = kernels.gated_residual_layernorm_modulate(x, gate, h + y, shift, scale)
        return x, h, kernels.rms_norm(h, w), kernels.apply_rope(q, cos, sin)

    args = [a[k] for k in ("x", "gate", "y", "shift", "scale", "w", "q", "cos", "sin")]
    got = torch.compile(block, fullgraph=True, backend="eager")(*args)
    for g, w in zip(got, block(*args), strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 kernels run on a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [48, 1152, 4096])
def test_gpu_half_precision(dtype, d):
    a = {k: v.cuda() for k, v in _inputs(b=3, t=17, d=d, h=4, l=17, dh=72).items()}
    low = {k: v.to(dtype) for k, v in a.items() if k not in ("cos", "sin")} | {"cos": a["cos"], "sin": a["sin"]}
    with torch.no_grad():
        got = _all_ops(low, backend="triton")
        auto = _all_ops(low)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    for g, u, w in zip(got, auto, _all_references(a), strict=True):
        assert g.dtype == dtype
        assert torch.equal(g, u)  # auto chooses Triton on CUDA without gradients
        torch.testing.assert_close(g.float(), w, atol=tol * max(1.0, w.abs().max().item()), rtol=tol)
