"""The DiT backbone: every token kind, conditioning, positions, windows, checkpointing, bad input."""

import pytest
import torch

from ditlab.core.models import DiT, DiTConfig, preset_config


def tiny(**kw) -> DiT:
    kw.setdefault("depth", 2)
    kw.setdefault("hidden_size", 48)
    kw.setdefault("num_heads", 2)
    m = DiT(**kw)
    with torch.no_grad():  # leave the zero init so outputs depend on every layer
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


CASES = [
    ("1d", (2, 3, 16), {"patch_size": 4}),
    ("2d", (2, 3, 8, 12), {"patch_size": 2}),
    ("3d", (2, 2, 4, 8, 8), {"patch_size": [2, 4, 4], "hidden_size": 48}),
    ("set", (2, 7, 3), {}),
]


@pytest.mark.parametrize("kind,shape,kw", CASES)
@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_shapes_and_gradients(kind, shape, kw, pos):
    channels = shape[-1] if kind == "set" else shape[1]
    m = tiny(token_kind=kind, in_channels=channels, pos_embed=pos, **kw)
    x = torch.randn(*shape)
    out = m(x, torch.tensor([10.0, 500.0]))
    assert out.shape == x.shape
    m.train()
    m(x, torch.tensor([10.0, 500.0])).square().mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_zero_init_predicts_zero():
    m = DiT(token_kind="2d", in_channels=1, depth=2, hidden_size=32, num_heads=2)
    assert m(torch.randn(2, 1, 8, 8), 3.0).abs().max() == 0


def test_learn_sigma_doubles_channels():
    m = tiny(token_kind="2d", in_channels=3, learn_sigma=True)
    assert m(torch.randn(1, 3, 8, 8), 1.0).shape == (1, 6, 8, 8)


def test_timestep_and_label_change_output():
    m = tiny(token_kind="2d", in_channels=1, num_classes=3)
    x = torch.randn(1, 1, 8, 8)
    a = m(x, 10.0, class_labels=torch.tensor([0]))
    assert not torch.allclose(a, m(x, 900.0, class_labels=torch.tensor([0])))
    assert not torch.allclose(a, m(x, 10.0, class_labels=torch.tensor([1])))
    # no label means the null class
    assert torch.allclose(m(x, 10.0), m(x, 10.0, class_labels=torch.tensor([3])))


def test_set_is_permutation_equivariant_and_respects_padding():
    m = tiny(token_kind="set", in_channels=3)
    x = torch.randn(1, 6, 3)
    perm = torch.randperm(6)
    assert torch.allclose(m(x, 5.0)[:, perm], m(x[:, perm], 5.0), atol=1e-5)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    padded = x.clone()
    padded[:, 4:] = 99.0  # garbage in padding must not leak into valid elements
    a = m(x, 5.0, mask=mask)[:, :4]
    b = m(padded, 5.0, mask=mask)[:, :4]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, m(x[:, :4], 5.0), atol=1e-5)


def test_context_tokens_and_mask():
    m = tiny(token_kind="2d", in_channels=1, context_dim=5, cond_dim=4)
    x, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 4)
    ctx = torch.randn(2, 3, 5)
    a = m(x, 5.0, cond=cond, context=ctx)
    assert not torch.allclose(a, m(x, 5.0, cond=cond, context=torch.randn(2, 3, 5)))
    mask = torch.tensor([[True, True, False], [True, True, False]])
    ctx2 = ctx.clone()
    ctx2[:, 2] = 50.0
    assert torch.allclose(m(x, 5.0, cond=cond, context=ctx, context_mask=mask),
                          m(x, 5.0, cond=cond, context=ctx2, context_mask=mask), atol=1e-5)


def test_window_attention_is_local():
    m = tiny(token_kind="2d", in_channels=1, window_size=2, window_blocks=[0, 1], pos_embed="none")
    x = torch.randn(1, 1, 8, 8)  # 4x4 tokens, windows of 2x2 tokens = 4x4 pixels
    y = x.clone()
    y[..., 4:, 4:] += 1.0  # change only the bottom-right window
    diff = (m(x, 5.0) - m(y, 5.0)).abs()
    assert diff[..., :4, :4].max() == 0 and diff[..., 4:, 4:].max() > 0


def test_gradient_checkpointing_matches():
    m = tiny(token_kind="2d", in_channels=1).train()
    x = torch.randn(2, 1, 8, 8)
    m(x, 5.0).square().sum().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.enable_gradient_checkpointing()
    m(x, 5.0).square().sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g1, m.parameters(), strict=True))


def test_presets():
    cfg = preset_config("DiT-XL/2")
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (28, 1152, 16, 2)
    assert preset_config("S/4").patch_size == 4
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("XXL/2")


def test_save_and_reload(tmp_path):
    m = tiny(token_kind="3d", in_channels=1, patch_size=2, pos_embed="rope", hidden_size=48)
    m.save_pretrained(tmp_path)
    m2 = DiT.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 1, 4, 4, 4)
    # the same weights, but a separately built model: the math library may take another path (AMD vs Intel),
    # so the outputs agree to rounding, not bit for bit
    torch.testing.assert_close(m2(x, 3.0), m(x, 3.0), rtol=1e-5, atol=1e-6)
    # the stored weights themselves went through a lossless fp32 round trip: those are equal exactly
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))
    assert m2.dit_config == m.dit_config


@pytest.mark.parametrize("shape,match", [
    ((2, 8, 8), "expected a 2d input"),
    ((2, 1, 1, 8, 8), "expected a 2d input"),
    ((2, 3, 8, 8), "expected 1 channels, got 3"),
    ((2, 1, 7, 8), "not divisible by the patch size"),
])
def test_bad_input_shapes(shape, match):
    m = tiny(token_kind="2d", in_channels=1)
    with pytest.raises(ValueError, match=match):
        m(torch.randn(*shape), 1.0)


def test_bad_conditioning():
    m = tiny(token_kind="2d", in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="class labels must lie in"):
        m(x, 1.0, class_labels=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="timestep must be"):
        m(x, torch.ones(3))
    with pytest.raises(ValueError, match="cond_dim=0"):
        m(x, 1.0, cond=torch.randn(2, 4))


def test_bad_configs():
    with pytest.raises(ValueError, match="token_kind"):
        DiTConfig(token_kind="4d")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DiTConfig(hidden_size=50, num_heads=3)
    with pytest.raises(ValueError, match="window attention is for 2d and 3d"):
        DiTConfig(token_kind="1d", window_size=4)
