"""Sequence-parallel attention and CFG-parallel sampling: parity with one process, on 2 gloo CPU ranks.

One launch runs every distributed check (`_checks`) and returns its results; the tests read them. The
workers are forked where the platform allows it: spawned ones re-import torch and diffusers, which
costs more than the checks themselves (the spawn path has its own slow test).
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ditlab.core.accel import FORA
from ditlab.core.diffusion import FlowMatching, sample
from ditlab.core.hooks import HookConflict
from ditlab.core.models import DiT
from ditlab.core.parallel import init_from_env, run_distributed, sample_cfg_parallel, sequence_parallel

TOL = 1e-5
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
BASE = dict(depth=2, hidden_size=32, num_heads=4, in_channels=2)
# name -> (model config, inputs); 8x8 images with patch 2 are 16 tokens
FORWARDS = {
    "sincos": (dict(num_classes=3), dict(class_labels=[0, 3])),
    "rope": (dict(pos_embed="rope", qk_norm=True, num_classes=3), dict(class_labels=[1, 2])),
    "window": (dict(window_size=2, window_blocks=[0]), {}),
    "context": (dict(context_dim=8), dict(context="ctx", context_mask=[[1, 1, 0], [1, 1, 1]])),
    "set": (dict(token_kind="set"), dict(mask=[[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])),
}


def _model(**overrides) -> DiT:
    """A tiny DiT with every weight perturbed (zero-initialised layers would make outputs trivially 0)."""
    torch.manual_seed(0)
    m = DiT(**{**BASE, **overrides})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return m.eval()


def _inputs(cfg: dict, kwargs: dict) -> tuple[torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((2, 6, 2) if cfg.get("token_kind") == "set" else (2, 2, 8, 8), generator=gen)
    out = {k: torch.randn(2, 3, 8, generator=gen) if v == "ctx" else torch.tensor(v) for k, v in kwargs.items()}
    return x, out


def _checks() -> dict:
    """Runs on every rank: (parallel result, one-process reference) pairs, error messages, flags."""
    torch.set_num_threads(1)
    res = {"restored": True}
    with torch.no_grad():
        for name, (cfg, kwargs) in FORWARDS.items():
            m = _model(**cfg)
            x, kw = _inputs(cfg, kwargs)
            ref = m(x, torch.tensor([0.3, 0.7]), **kw)
            with sequence_parallel(m):
                res[f"forward/{name}"] = (m(x, torch.tensor([0.3, 0.7]), **kw), ref)
            streams = [s for b in m.blocks for s in (b.x, b.ctx) if s is not None]
            res["restored"] &= "run_blocks" not in vars(m) and all(b.num_heads == 4 for b in m.blocks) and not any(
                "qkv_heads" in vars(s) or "finish" in vars(s) for s in streams)

    m, path = _model(num_classes=3), FlowMatching()
    args = dict(sampler="euler", steps=4, guidance_scale=2.0, model_kwargs={"class_labels": torch.tensor([0, 2])})
    ref = sample(m, path, (2, 2, 8, 8), generator=torch.Generator().manual_seed(0), **args)
    with sequence_parallel(m):
        res["sample/sequence"] = (sample(m, path, (2, 2, 8, 8), generator=torch.Generator().manual_seed(0), **args),
                                  ref)
    res["sample/cfg"] = (sample_cfg_parallel(m, path, (2, 2, 8, 8), generator=torch.Generator().manual_seed(0),
                                             **args), ref)

    with pytest.raises(ValueError) as heads, sequence_parallel(_model(hidden_size=24, num_heads=3)):
        pass
    with pytest.raises(ValueError) as tokens, torch.no_grad(), sequence_parallel(m):
        m(torch.randn(1, 2, 6, 6), 0.5)
    with pytest.raises(RuntimeError) as grad, sequence_parallel(m):
        m(torch.randn(1, 2, 8, 8), 0.5)
    with pytest.raises(HookConflict) as nested, sequence_parallel(m), sequence_parallel(m):
        pass
    with pytest.raises(HookConflict) as cached, sequence_parallel(m), FORA().attach(m, 4):
        pass
    res["errors"] = {"heads": str(heads.value), "tokens": str(tokens.value), "grad": str(grad.value),
                     "nested": str(nested.value), "cached": str(cached.value)}
    res["rank"] = dist.get_rank()
    return res


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_distributed(_checks, world_size=2, backend="gloo", start_method=START)


@pytest.mark.parametrize("name", FORWARDS)
def test_sequence_parallel_forward_matches_one_process(ranks, name):
    for res in ranks:
        out, ref = res[f"forward/{name}"]
        assert out.shape == ref.shape and ref.abs().max() > 1e-2  # a real, non-trivial output
        assert (out - ref).abs().max() <= TOL, f"rank {res['rank']}: {name} differs by {(out - ref).abs().max()}"


@pytest.mark.parametrize("kind", ["sequence", "cfg"])
def test_parallel_sampling_matches_one_process(ranks, kind):
    for res in ranks:
        out, ref = res[f"sample/{kind}"]
        assert (out - ref).abs().max() <= TOL, f"rank {res['rank']}: differs by {(out - ref).abs().max()}"
    torch.testing.assert_close(ranks[0][f"sample/{kind}"][0], ranks[1][f"sample/{kind}"][0], rtol=1e-5, atol=1e-6)


def test_overrides_are_removed_on_exit(ranks):
    assert all(res["restored"] for res in ranks)


def test_bad_configs_raise_naming_the_numbers(ranks):
    errors = ranks[0]["errors"]
    assert "num_heads=3" in errors["heads"] and "2 ranks" in errors["heads"]
    assert "9 tokens" in errors["tokens"] and "2 ranks" in errors["tokens"]
    assert "inference only" in errors["grad"]
    assert "'sequence-parallel' is already installed (SequenceParallel(world=2, rank=0))" in errors["nested"]
    assert "'feature-cache' cannot be combined with the installed hook 'sequence-parallel'" in errors["cached"]


def _rank_and_world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()


@pytest.mark.slow
def test_run_distributed_spawns_workers():
    assert run_distributed(_rank_and_world, start_method="spawn") == [(0, 2), (1, 2)]


def test_needs_a_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="environment variables"):
        init_from_env()
    with pytest.raises(RuntimeError, match="process group"), sequence_parallel(_model()):
        pass
    with pytest.raises(RuntimeError, match="process group"):
        sample_cfg_parallel(_model(num_classes=3), FlowMatching(), (1, 2, 8, 8), guidance_scale=2.0,
                            model_kwargs={"class_labels": torch.tensor([0])})
