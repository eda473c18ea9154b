"""The hook registry: install and remove restore a model exactly, hooks compose in order, conflicts are refused,
and stateful hooks keep one state per context (chunks of a batch run in turn keep their own caches)."""

import contextlib

import pytest
import torch
from torch import nn

from ditlab.core import hooks
from ditlab.core.accel import FORA, RegionAdaptive, TaylorSeer
from ditlab.core.errors import InputError
from ditlab.core.models import DiT
from ditlab.core.parallel.ulysses import SequenceParallel

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> DiT:
    """A 4-block DiT over 8x8 one-channel images (16 tokens) with random non-zero weights."""
    torch.manual_seed(0)
    kw = {"token_kind": "2d", "in_channels": 1, "depth": 4, "hidden_size": 32, "num_heads": 2}
    m = DiT(**{**kw, **overrides})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


class Affine(hooks.Hook):
    """Wraps `forward`: output * scale + shift, logging its name on every call."""

    def __init__(self, name: str, scale: float = 1.0, shift: float = 0.0, log: list | None = None,
                 conflicts: tuple[str, ...] = ()):
        super().__init__()
        self.name, self.scale, self.shift, self.conflicts = name, scale, shift, conflicts
        self.log = [] if log is None else log

    def patches(self, module: nn.Module) -> list[hooks.Patch]:
        return [hooks.wrap(module, "forward", self.forward)]

    def forward(self, inner, *args) -> torch.Tensor:
        self.log.append(self.name)
        return inner(*args) * self.scale + self.shift


class Override(hooks.Hook):
    name = "override"

    def __init__(self, attr: str, value):
        super().__init__()
        self.attr, self.value = attr, value

    def patches(self, module: nn.Module) -> list[hooks.Patch]:
        return [hooks.override(module, self.attr, self.value)]


def own_attributes(m: nn.Module) -> dict[str, dict[str, int]]:
    """Every submodule's instance attributes, by identity of their values."""
    return {name: {k: id(v) for k, v in vars(mod).items()} for name, mod in m.named_modules()}


@torch.no_grad()
def test_install_and_remove_restore_the_model_exactly(tmp_path):
    m = tiny(context_dim=8)
    x, t, ctx = torch.randn(2, 1, 8, 8), torch.tensor([300.0, 700.0]), {"context": torch.randn(2, 3, 8)}
    ref, before, keys = m(x, t, **ctx), own_attributes(m), list(m.state_dict())
    for hook in (RegionAdaptive(ratio=0.5, warmup=1), SequenceParallel(world=2, rank=0)):
        reg = hooks.registry(m)
        reg.add(hook)
        assert own_attributes(m) != before and reg.names == [hook.name] and hook.registry is reg
        assert all(b.num_heads == (1 if isinstance(hook, SequenceParallel) else 2) for b in m.blocks)
        assert list(m.state_dict()) == keys
        reg.remove(hook.name)
        assert own_attributes(m) == before and hook.registry is None and reg.names == []
    torch.testing.assert_close(m(x, t, **ctx), ref, rtol=1e-6, atol=1e-7)
    with RegionAdaptive(ratio=0.5).attach(m, total_calls=4):
        m.save_pretrained(tmp_path)  # hooks are no weights and no config
    torch.testing.assert_close(DiT.from_pretrained(tmp_path).eval()(x, t, **ctx), ref, rtol=1e-6, atol=1e-7)


def test_hooks_on_one_method_chain_in_registration_order():
    lin, x, log = nn.Linear(3, 3), torch.randn(4, 3), []
    ref = lin(x)
    reg = hooks.registry(lin)
    with hooks.attached(lin, Affine("scale", scale=2.0, log=log), Affine("shift", shift=1.0, log=log)):
        torch.testing.assert_close(lin(x), 2 * ref + 1)  # the first registered wraps the method itself
        assert log == ["shift", "scale"]  # the last registered is called first
        reg.remove("scale")  # from the middle of the chain: the others are rebuilt around the method
        torch.testing.assert_close(lin(x), ref + 1)
        reg.add(Affine("scale", scale=2.0))
        torch.testing.assert_close(lin(x), 2 * (ref + 1))
    assert "forward" not in vars(lin) and reg.names == []
    torch.testing.assert_close(lin(x), ref)


def test_overrides_put_back_the_own_value_or_the_class_one():
    block = tiny().blocks[0]
    with hooks.attached(block, Override("num_heads", 1)):
        assert block.num_heads == 1
    assert vars(block)["num_heads"] == 2
    with hooks.attached(block, Override("dump_patches", True)):  # a class attribute of nn.Module
        assert block.dump_patches is True
    assert "dump_patches" not in vars(block) and block.dump_patches is False


def test_hooks_of_two_registries_on_one_method_compose():
    """RAS, installed on the model, wraps `final_layer.forward`; a hook installed on the final layer itself
    wraps it too. Either may go first; the other keeps working and the last one out restores the layer."""
    m = tiny()
    x, final = torch.randn(2, 1, 8, 8), m.final_layer
    ref = m(x, 500.0)
    ras, shift = RegionAdaptive(ratio=1.0), Affine("shift", shift=1.0)
    with ras.attach(m, total_calls=3):
        hooks.registry(final).add(shift)
        torch.testing.assert_close(m(x, 500.0), ref + 1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x, 500.0), ref + 1, rtol=1e-5, atol=1e-6)
    hooks.registry(final).remove("shift")
    assert "forward" not in vars(final) and "run_blocks" not in vars(m)
    assert ras.stats["calls"] == 1 and len(shift.log) == 2


def test_conflicts_name_the_installed_hook():
    lin = nn.Linear(2, 2)
    with hooks.attached(lin, Affine("a")):
        with pytest.raises(hooks.HookConflict, match=r"a hook named 'a' is already installed \(Affine\(name='a'\)\)"):
            hooks.registry(lin).add(Affine("a"))
        with pytest.raises(hooks.HookConflict, match=r"'b' cannot be combined with the installed hook 'a'"):
            hooks.registry(lin).add(Affine("b", conflicts=("a",)))
    with hooks.attached(lin, Affine("a", conflicts=("b",))):  # declared by the installed one: refused too
        with pytest.raises(hooks.HookConflict, match="installed hook 'a'"):
            hooks.registry(lin).add(Affine("b"))
    m = tiny()
    with FORA().attach(m, total_calls=3):
        with pytest.raises(hooks.HookConflict, match=r"'sequence-parallel' cannot be combined with the installed "
                                                     r"hook 'feature-cache' \(FORA\(interval=3, warmup=1\)\)"):
            hooks.registry(m).add(SequenceParallel(world=2, rank=0))
    assert "run_blocks" not in vars(m)


def test_a_failed_or_raising_attachment_leaves_nothing_behind():
    lin, first = nn.Linear(2, 2), Affine("first")
    with pytest.raises(hooks.HookConflict):
        with hooks.attached(lin, first, Affine("second", conflicts=("first",))):
            pass
    assert "forward" not in vars(lin) and first.registry is None
    with pytest.raises(KeyError, match="boom"):
        with hooks.attached(lin, first):
            raise KeyError("boom")
    assert "forward" not in vars(lin) and hooks.registry(lin).names == []
    with pytest.raises(InputError, match=r"cannot override Linear.gain: it has no such attribute; hooks change"):
        hooks.registry(lin).add(Override("gain", 2.0))
    with pytest.raises(InputError, match=r"cannot wrap Linear.weight: it is a parameter, buffer or submodule"):
        hooks.wrap(lin, "weight", lambda inner: inner)
    with pytest.raises(InputError, match=r"cannot wrap Linear.in_features: expected a method, got int"):
        hooks.wrap(lin, "in_features", lambda inner: inner)
    with pytest.raises(InputError, match="takes a wrapper or a value, not both or neither"):
        hooks.Patch(lin, "forward")
    with pytest.raises(InputError, match=r"no hook named 'first' is installed on Linear; installed: \[\]"):
        hooks.registry(lin).remove("first")
    assert vars(lin).keys() == vars(nn.Linear(2, 2)).keys()


def test_contexts_nest_and_default():
    m, hook = nn.Linear(2, 2), Affine("a")
    reg = hooks.registry(m)
    assert reg.current_context == hooks.DEFAULT_CONTEXT
    with hooks.context(m, "chunk-0"), hooks.attached(m, hook):
        with reg.context("chunk-1"):
            assert reg.current_context == "chunk-1"
        assert reg.current_context == "chunk-0" and hook.state() is None  # stateless hook
    assert reg.current_context == hooks.DEFAULT_CONTEXT
    with pytest.raises(InputError, match="non-empty string"):
        with hooks.context(m, ""):
            pass


def solve(m: DiT, xs: dict[str, torch.Tensor], steps: int, contexts: bool) -> dict[str, torch.Tensor]:
    """Euler steps of dx/dt = model(x, t), each step calling the model on every chunk in turn, each chunk in
    its own context when `contexts` (else all in the default one)."""
    times = torch.linspace(1.0, 0.0, steps + 1)
    xs = dict(xs)
    with torch.no_grad():
        for i in range(steps):
            for name, x in xs.items():
                with hooks.context(m, name) if contexts else contextlib.nullcontext():
                    xs[name] = x + (times[i + 1] - times[i]) * m(x, 1000 * times[i])
    return xs


POLICIES = [lambda: TaylorSeer(interval=3, order=1), lambda: RegionAdaptive(ratio=0.5, warmup=2, cooldown=1)]


@pytest.mark.parametrize("batches", [(3, 2), (2, 2)], ids=["16+8-like", "equal"])
@pytest.mark.parametrize("make", POLICIES, ids=["taylorseer", "ras"])
def test_interleaved_contexts_each_reuse_as_if_run_alone(make, batches):
    """Chunks of a slab, A B A B ...: each keeps its own cache and call index (total_calls is per context),
    so each reuses features and matches a run of that chunk alone, whatever the other chunk's shape."""
    m, steps = tiny(), 6
    xs = {f"chunk-{k}": torch.randn(b, 1, 8, 8) for k, b in enumerate(batches)}
    shared = make()
    with shared.attach(m, total_calls=steps):
        together = solve(m, xs, steps, contexts=True)
    assert set(shared.context_stats) == set(xs)
    for name, x in xs.items():
        alone = make()
        with alone.attach(m, total_calls=steps):
            ref = solve(m, {name: x}, steps, contexts=False)[name]
        torch.testing.assert_close(together[name], ref, rtol=1e-5, atol=1e-6)
        stats = shared.context_stats[name]
        assert stats == alone.stats and stats["calls"] == steps
        assert stats["blocks_computed"] < stats["blocks_total"]
    assert shared.stats["calls"] == 2 * steps
    assert shared.nfe_equivalent() == pytest.approx(sum(shared.nfe_equivalent(name) for name in xs))
    with pytest.raises(InputError, match=r"context 'chunk-9'; its contexts: \['chunk-0', 'chunk-1'\]"):
        shared.nfe_equivalent("chunk-9")


def test_without_contexts_alternating_shapes_never_reuse():
    """The bug contexts fix: one shared state sees a new shape on every call and starts over every time."""
    m, policy = tiny(), TaylorSeer(interval=3, order=1)
    with policy.attach(m, total_calls=12):
        solve(m, {"a": torch.randn(3, 1, 8, 8), "b": torch.randn(2, 1, 8, 8)}, 6, contexts=False)
    assert policy.stats["full_calls"] == policy.stats["calls"] == 12


@torch.no_grad()
def test_a_shape_change_resets_only_its_own_context():
    m, policy = tiny(), TaylorSeer(interval=100, order=1, warmup=0)  # one scheduled full call: the first
    with policy.attach(m, total_calls=4):
        for batch in (2, 2, 3, 3):
            with hooks.context(m, "a"):
                m(torch.randn(batch, 1, 8, 8), 500.0)
            with hooks.context(m, "b"):
                m(torch.randn(2, 1, 8, 8), 500.0)
        m(torch.randn(2, 1, 8, 8), 500.0)  # outside any context: the default one
    per = policy.context_stats
    assert per["a"]["full_calls"] == 2 and per["b"]["full_calls"] == 1 and per["default"]["full_calls"] == 1
    assert policy.stats["calls"] == 9 and policy.stats["full_calls"] == 4


def test_ras_stats_aggregate_over_contexts():
    m, policy = tiny(), RegionAdaptive(ratio=0.5, warmup=1, cooldown=0)
    with policy.attach(m, total_calls=4):
        solve(m, {"a": torch.randn(3, 1, 8, 8), "b": torch.randn(1, 1, 8, 8)}, 4, contexts=True)
    a, b, s = policy.context_stats["a"], policy.context_stats["b"], policy.stats
    assert a["token_fraction"] == b["token_fraction"] == pytest.approx((1 + 3 * 0.5) / 4)
    assert s["tokens_total"] == 4 * 16 * (3 + 1) and s["token_fraction"] == pytest.approx(a["token_fraction"])
    assert s["max_skipped"] == max(a["max_skipped"], b["max_skipped"]) > 0
