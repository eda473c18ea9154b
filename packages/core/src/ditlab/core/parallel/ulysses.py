"""Ulysses sequence parallelism: each of W ranks runs the DiT trunk on T/W tokens.

Around attention one all-to-all swaps the sequence shard for a head shard, so every rank attends over
the whole sequence with H/W heads; a second all-to-all swaps back for the token-local rest of the block
(output projection, adaLN, MLP). The tokens are gathered after the trunk, so every rank returns the
full output.

Installed as the hook "sequence-parallel" (`ditlab.core.hooks`) and removed on exit: it wraps `run_blocks`
to shard and gather the tokens, overrides each block's `num_heads` with the local head count, and wraps
its streams' `qkv_heads` / `finish` with the two all-to-alls. The block's own forward runs unchanged, so
everything it does works here too: RoPE (applied after the exchange, on the full sequence with the full
tables), key masks, window attention (windows over the full grid, local heads) and joint context tokens
(replicated on every rank, attended with the local heads, their attention output gathered over heads).
Inference only: the collectives carry no gradients. Feature caches (`ditlab.core.accel`) are refused: their
skip decisions would differ between token shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ditlab.core import hooks
from ditlab.core.models.dit import DiT


def gather_cat(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate `x` from every rank of `group` along `dim`, in rank order."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def _exchange(chunks: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-to-all over dim 0 (one chunk per rank): chunk j goes to rank j; the result holds, at index i,
    the chunk rank i sent here."""
    chunks = chunks.contiguous()
    out = torch.empty_like(chunks)
    dist.all_to_all_single(out, chunks, group=group)
    return out


class SequenceParallel(hooks.Hook):
    """The hook behind `sequence_parallel`: rank `rank` of `world` in `group` runs T/W tokens and H/W heads."""

    name = "sequence-parallel"
    conflicts = ("feature-cache",)

    def __init__(self, world: int, rank: int, group: dist.ProcessGroup | None = None):
        super().__init__()
        self.world, self.rank, self.group = world, rank, group

    def __repr__(self) -> str:
        return f"SequenceParallel(world={self.world}, rank={self.rank})"

    def patches(self, model: DiT) -> list[hooks.Patch]:
        out = [hooks.wrap(model, "run_blocks", self._sharded_trunk)]
        for block in model.blocks:
            out += [hooks.override(block, "num_heads", model.cfg.num_heads // self.world),
                    hooks.wrap(block.x, "qkv_heads", self._to_heads), hooks.wrap(block.x, "finish", self._from_heads)]
            if block.ctx is not None:
                out += [hooks.wrap(block.ctx, "qkv_heads", self._local_heads),
                        hooks.wrap(block.ctx, "finish", self._all_heads)]
        return out

    def _sharded_trunk(self, run_blocks: Callable, tokens, c, rope=None, grid=(), key_mask=None,
                       ctx=None) -> torch.Tensor:
        """`run_blocks` on this rank's contiguous T/W tokens, gathered back to (B, T, D) on every rank."""
        if torch.is_grad_enabled():
            raise RuntimeError("sequence_parallel runs inference only (its collectives carry no gradients); "
                               "call the model under torch.no_grad()")
        n, world = tokens.shape[1], self.world
        if n % world:
            raise ValueError(f"sequence parallelism over {world} ranks needs a token count divisible by {world}, "
                             f"got {n} tokens (grid {tuple(grid)})")
        local = tokens.chunk(world, dim=1)[self.rank]  # (B, T/W, D)
        return gather_cat(run_blocks(local, c, rope, grid, key_mask, ctx), 1, self.group)  # (B, T, D)

    def _to_heads(self, qkv_heads: Callable, x: torch.Tensor, mod, heads: int) -> tuple[torch.Tensor, ...]:
        """Token stream: q, k, v of the local tokens and all heads -> of all tokens and the local heads."""
        world = self.world
        qkv = torch.stack(qkv_heads(x, mod, heads * world))  # (3, B, H, T/W, Dh)
        qkv = _exchange(qkv.unflatten(2, (world, heads)).movedim(2, 0), self.group)  # (W, 3, B, H/W, T/W, Dh)
        return qkv.permute(1, 2, 3, 0, 4, 5).flatten(3, 4).unbind(0)  # 3 x (B, H/W, T, Dh)

    def _from_heads(self, finish: Callable, x: torch.Tensor, attn: torch.Tensor, mod) -> torch.Tensor:
        """Token stream: the attention output of all tokens and the local heads -> of the local tokens."""
        chunks = _exchange(attn.unflatten(1, (self.world, -1)).movedim(1, 0), self.group)  # (W, B, T/W, H/W * Dh)
        return finish(x, chunks.permute(1, 2, 0, 3).flatten(2), mod)  # attention input (B, T/W, D)

    def _local_heads(self, qkv_heads: Callable, ctx: torch.Tensor, mod, heads: int) -> tuple[torch.Tensor, ...]:
        """Replicated context stream: keep this rank's heads."""
        return tuple(t.chunk(self.world, dim=1)[self.rank]
                     for t in qkv_heads(ctx, mod, heads * self.world))  # (B, H/W, M, Dh)

    def _all_heads(self, finish: Callable, ctx: torch.Tensor, attn: torch.Tensor, mod) -> torch.Tensor:
        """Replicated context stream: gather the heads back."""
        return finish(ctx, gather_cat(attn, -1, self.group), mod)  # (B, M, H/W * Dh) -> (B, M, D)


@contextmanager
def sequence_parallel(model: DiT, group: dist.ProcessGroup | None = None) -> Iterator[DiT]:
    """Within the block, `model(...)` on every rank of `group` returns the full output while each rank
    runs only T/W tokens through the trunk. Every rank must call the model with the same inputs.
    Needs `num_heads` and the token count divisible by the world size W."""
    if not dist.is_initialized():
        raise RuntimeError("sequence_parallel needs an initialised torch.distributed process group "
                           "(see ditlab.core.parallel.init_from_env)")
    world, rank, heads = dist.get_world_size(group), dist.get_rank(group), model.cfg.num_heads
    if heads % world:
        raise ValueError(f"sequence parallelism over {world} ranks needs num_heads divisible by {world}, "
                         f"got num_heads={heads}")
    with hooks.attached(model, SequenceParallel(world, rank, group)):
        yield model
