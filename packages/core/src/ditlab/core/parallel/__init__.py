"""Parallel inference over torch.distributed: Ulysses sequence parallelism (`sequence_parallel`) and
CFG-parallel sampling (`sample_cfg_parallel`), plus two ways to start a process group: `init_from_env`
under torchrun, `run_distributed` to spawn loopback workers (tests, one machine)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ditlab.core.parallel.cfg import sample_cfg_parallel
from ditlab.core.parallel.ulysses import sequence_parallel

__all__ = ["sequence_parallel", "sample_cfg_parallel", "init_from_env", "run_distributed"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the default process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT); the backend defaults to nccl with CUDA, else gloo. Returns (rank, world_size)."""
    if not dist.is_initialized():
        missing = [k for k in _ENV if k not in os.environ]
        if missing:
            raise RuntimeError(f"cannot join a process group: environment variables {missing} are not set "
                               "(start with torchrun, or use run_distributed)")
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable, args: tuple, world_size: int, backend: str, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    init_from_env(backend)
    try:
        torch.save(fn(*args), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int = 2, backend: str = "gloo", args: tuple = (),
                    start_method: str = "spawn") -> list[Any]:
    """Run `fn(*args)` in `world_size` processes joined in one process group on 127.0.0.1 and return their
    results in rank order; a failure on any rank stops all of them and is raised here. With "spawn" (safe
    everywhere, needed for CUDA) `fn` must be importable by name; "fork" (Linux, CPU) skips re-importing.
    Results must be tensors and plain containers (they travel through `torch.load(weights_only=True)`)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(fn, args, world_size, backend, _free_port(), out_dir), nprocs=world_size,
                           start_method=start_method)
        # results are tensors and plain containers: load them without unpickling arbitrary objects
        return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=True) for r in range(world_size)]
