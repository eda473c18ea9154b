"""Ulysses sequence parallelism: each of W ranks runs the DiT trunk on T/W tokens.

Around attention one all-to-all swaps the sequence shard for a head shard, so every rank attends over
the whole sequence with H/W heads; a second all-to-all swaps back for the token-local rest of the block
(output projection, adaLN, MLP). The tokens are gathered after the trunk, so every rank returns the
full output.

Installed per instance, like a feature cache, and removed on exit: `run_blocks` shards and gathers the
tokens, each block's `num_heads` becomes the local head count, and its streams' `qkv_heads` / `finish`
do the two all-to-alls. The block's own forward runs unchanged, so everything it does works here too:
RoPE (applied after the exchange, on the full sequence with the full tables), key masks, window
attention (windows over the full grid, local heads) and joint context tokens (replicated on every rank,
attended with the local heads, their attention output gathered over heads). Inference only: the
collectives carry no gradients. Feature caches (`ditlab.core.accel`) also replace `run_blocks` and are
refused: their skip decisions would differ between token shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.distributed as dist

from ditlab.core.models.dit import DiT, Stream

_MISSING = object()


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


def _patch(stack: ExitStack, obj: object, name: str, value: object) -> None:
    """Set an instance attribute until `stack` closes; then restore the instance's own value or remove it."""
    saved = vars(obj).get(name, _MISSING)
    setattr(obj, name, value)

    def restore() -> None:
        if saved is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, saved)

    stack.callback(restore)


def _sharded_trunk(run_blocks: Callable, world: int, rank: int, group: dist.ProcessGroup | None) -> Callable:
    """`run_blocks` on this rank's contiguous T/W tokens, gathered back to (B, T, D) on every rank."""

    def run(tokens, c, rope=None, grid=(), key_mask=None, ctx=None) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("sequence_parallel runs inference only (its collectives carry no gradients); "
                               "call the model under torch.no_grad()")
        n = tokens.shape[1]
        if n % world:
            raise ValueError(f"sequence parallelism over {world} ranks needs a token count divisible by {world}, "
                             f"got {n} tokens (grid {tuple(grid)})")
        local = tokens.chunk(world, dim=1)[rank]  # (B, T/W, D)
        return gather_cat(run_blocks(local, c, rope, grid, key_mask, ctx), 1, group)  # (B, T, D)

    return run


def _token_stream(stream: Stream, world: int, group: dist.ProcessGroup | None) -> tuple[Callable, Callable]:
    """`qkv_heads` / `finish` of the token stream with the sequence <-> head all-to-alls around attention."""
    qkv_heads, finish = stream.qkv_heads, stream.finish

    def to_heads(x: torch.Tensor, mod, heads: int) -> tuple[torch.Tensor, ...]:
        qkv = torch.stack(qkv_heads(x, mod, heads * world))  # (3, B, H, T/W, Dh)
        qkv = _exchange(qkv.unflatten(2, (world, heads)).movedim(2, 0), group)  # (W, 3, B, H/W, T/W, Dh)
        return qkv.permute(1, 2, 3, 0, 4, 5).flatten(3, 4).unbind(0)  # 3 x (B, H/W, T, Dh)

    def from_heads(x: torch.Tensor, attn: torch.Tensor, mod) -> torch.Tensor:
        chunks = _exchange(attn.unflatten(1, (world, -1)).movedim(1, 0), group)  # (W, B, T/W, H/W * Dh)
        return finish(x, chunks.permute(1, 2, 0, 3).flatten(2), mod)  # attention input (B, T/W, D)

    return to_heads, from_heads


def _context_stream(stream: Stream, world: int, rank: int, group: dist.ProcessGroup | None) -> tuple[Callable, ...]:
    """`qkv_heads` / `finish` of the replicated context stream: keep this rank's heads, gather them back."""
    qkv_heads, finish = stream.qkv_heads, stream.finish

    def local_heads(ctx: torch.Tensor, mod, heads: int) -> tuple[torch.Tensor, ...]:
        return tuple(t.chunk(world, dim=1)[rank] for t in qkv_heads(ctx, mod, heads * world))  # (B, H/W, M, Dh)

    def all_heads(ctx: torch.Tensor, attn: torch.Tensor, mod) -> torch.Tensor:
        return finish(ctx, gather_cat(attn, -1, group), mod)  # (B, M, H/W * Dh) -> (B, M, D)

    return local_heads, all_heads


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
    if "run_blocks" in vars(model):
        raise RuntimeError("this model's run_blocks is already replaced (inside sequence_parallel, or a feature "
                           "cache is attached); sequence parallelism runs the plain trunk only")
    with ExitStack() as stack:
        _patch(stack, model, "run_blocks", _sharded_trunk(model.run_blocks, world, rank, group))
        for block in model.blocks:
            _patch(stack, block, "num_heads", heads // world)
            to_heads, from_heads = _token_stream(block.x, world, group)
            _patch(stack, block.x, "qkv_heads", to_heads)
            _patch(stack, block.x, "finish", from_heads)
            if block.ctx is not None:
                local_heads, all_heads = _context_stream(block.ctx, world, rank, group)
                _patch(stack, block.ctx, "qkv_heads", local_heads)
                _patch(stack, block.ctx, "finish", all_heads)
        yield model
