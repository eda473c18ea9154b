"""The trainer: one loop on accelerate for every model in ditlab.

AdamW with linear warmup, gradient clipping, an EMA copy, bf16 autocast on CUDA, a safetensors + JSON
checkpoint that is overwritten in place and resumed from, a tqdm bar and a JSONL log. The same script runs
on one CPU or on many GPUs under `accelerate launch`.

Seeding: every random draw of step k comes from seeds derived from (seed, k, process index): the generator
handed to `data(k, generator)`, the one handed to `loss_fn`, and the global RNGs (dropout), which are reseeded
once the batch of the step is fetched. A DataLoader's shuffling is seeded per epoch. A run of N steps and a
run of N/2 steps resumed for N/2 more therefore end with the same weights, as long as the checkpoint is
float32 (random augmentation inside DataLoader workers is not covered).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, send_to_device, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ditlab.core.errors import InputError, UsageError

from ..accel.precision import bf16_supported
from .ema import EMA

MIXED_PRECISION = ("auto", "no", "bf16")
CHECKPOINT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHECKPOINT_NAME = "checkpoint"
LOG_NAME = "train_log.jsonl"


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one training run; checked on construction."""

    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # step k (0-based) uses lr * min(1, (k + 1) / warmup_steps), then lr
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    mixed_precision: str = "auto"  # "auto": bf16 on CUDA and on CPUs with native bf16, else fp32; "no"; "bf16"
    seed: int = 0
    output_dir: str | None = None  # None: no checkpoints/logs written
    checkpoint_every: int = 0  # 0: only at the end (when output_dir is set)
    checkpoint_dtype: str = "float32"  # "float32" | "float16" | "bfloat16" for model+EMA tensors
    log_every: int = 10  # a JSONL line and a bar update every log_every steps and at the last step
    resume: bool = True  # resume from output_dir/checkpoint if present
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        def check(ok: bool, what: str, expected: str, got: Any) -> None:
            if not ok:
                raise UsageError(f"TrainConfig.{what} must be {expected}, got {got!r}")

        check(self.steps >= 1, "steps", ">= 1", self.steps)
        check(self.lr > 0, "lr", "> 0", self.lr)
        check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            "two values in [0, 1)",
            self.betas,
        )
        check(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "None or > 0", self.grad_clip)
        check(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0 disables EMA)", self.ema_decay)
        check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            f"one of {MIXED_PRECISION}",
            self.mixed_precision,
        )
        check(
            self.checkpoint_every >= 0, "checkpoint_every", ">= 0 (0: only at the end)", self.checkpoint_every
        )
        check(
            self.checkpoint_dtype in CHECKPOINT_DTYPES,
            "checkpoint_dtype",
            f"one of {tuple(CHECKPOINT_DTYPES)}",
            self.checkpoint_dtype,
        )
        check(self.log_every >= 1, "log_every", ">= 1", self.log_every)


def _seed(base: int, stream: str, rank: int, step: int) -> int:
    """A 32-bit seed for one random stream of one step on one process."""
    digest = hashlib.blake2b(f"{base}/{stream}/{rank}/{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _batch_size(batch: Any) -> int | None:
    """Dim 0 of the first tensor found in a (nested) batch, or None when it holds no tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else ()
    for item in items:
        size = _batch_size(item)
        if size is not None:
            return size
    return None


def _tensors_for_file(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies for safetensors; floating tensors cast to `dtype`."""
    return {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).clone().contiguous()
        for k, v in state.items()
    }


def find_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint at `folder`, or the previous one if a crash interrupted the swap."""
    folder = Path(folder)
    for candidate in (folder, folder.parent / f".{folder.name}.old"):
        if (candidate / "state.json").is_file():
            return candidate
    return None


def replace_folder(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmp)` on a fresh temporary folder next to `folder`, then swap it in for `folder`.

    A crash leaves either the old folder (kept as `.<name>.old` during the swap, which `find_checkpoint` falls
    back to) or the new one, never half of one.
    """
    folder = Path(folder)
    tmp, old = folder.parent / f".{folder.name}.tmp", folder.parent / f".{folder.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: str | Path, model: nn.Module, *, ema: bool = True) -> dict:
    """Load a trainer checkpoint's EMA weights (raw ones with `ema=False`) into `model`; returns state.json.

    Tensors are cast to the model's dtypes, so a half-precision checkpoint loads into a float32 model.
    A run trained without EMA has only raw weights, which are then loaded either way.
    """
    found = find_checkpoint(folder)
    if found is None:
        raise FileNotFoundError(f"no trainer checkpoint (state.json) in {folder}")
    state = json.loads((found / "state.json").read_text())
    name = "ema.safetensors" if ema and state["ema"] else "model.safetensors"
    model.load_state_dict(load_file(found / name))
    return state


def _accelerator(mixed_precision: str, seed: int) -> Accelerator:
    """An Accelerator for this run.

    accelerate keeps its state process-wide and refuses a second precision; a single process (a notebook, a
    test session) may train one model in fp32 and the next in bf16, so its state is reset there.
    """
    shared = AcceleratorState._shared_state
    if shared and shared.get("num_processes", 1) == 1 and shared.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )


class Trainer:
    """Train `model` for `config.steps` optimizer steps of `loss_fn(model, batch, generator)`.

    `data` is either an iterable of batches (a DataLoader is sharded across processes by accelerate; any
    iterable is cycled when exhausted) or a callable `data(step, generator) -> batch` for synthetic data,
    called with a CPU generator seeded from (seed, step, process). `loss_fn` gets a CPU generator too, for its
    noise and time draws (drawn on the CPU and moved, so a seed trains the same on any device).
    `trainer.step` is the number of optimizer steps taken so far
    (including those of a resumed checkpoint). With `output_dir` set, the run resumes from
    `output_dir/checkpoint` when `config.resume` is true and one is there; the checkpoint's optimizer
    hyper-parameters then win over the config's. Resuming from a float16/bfloat16 checkpoint is
    approximate: the stored weights are cast back to the model's precision. A checkpoint kept without
    optimizer.safetensors (weights, EMA and state.json only) resumes too, with fresh AdamW moments.
    `on_step(step, loss)`, if given, is called after every optimizer step (a progress bar in an app, a time
    budget); returning True ends the run there, checkpointed like a finished one.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any, torch.Generator], torch.Tensor],
        data: Iterable[Any] | Callable[[int, torch.Generator], Any],
        config: TrainConfig,
        on_step: Callable[[int, float], bool | None] | None = None,
    ):
        if not isinstance(data, Iterable) and not callable(data):
            raise TypeError(
                f"data must be an iterable of batches or a callable (step, generator), got {type(data)}"
            )
        self.config = config
        self.loss_fn = loss_fn
        self.on_step = on_step
        self.step = 0
        mixed = config.mixed_precision
        if mixed == "auto":  # bf16 where the hardware computes it natively; emulated it is far slower than fp32
            mixed = "bf16" if torch.cuda.is_available() or bf16_supported("cpu")[0] else "no"
        self.accelerator = _accelerator(mixed, config.seed)
        set_seed(config.seed)

        self.ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.model.to(self.accelerator.device)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        warmup = config.warmup_steps
        # Stepped by the loop once per optimizer step; accelerate.prepare would step it once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.data = self.accelerator.prepare(data) if isinstance(data, DataLoader) else data

        self.output_dir = Path(config.output_dir) if config.output_dir else None
        self._loss = math.nan  # mean loss of the last logged window
        self._window_sum = torch.zeros((), device=self.accelerator.device)
        self._window_count = 0
        self._elapsed_base = 0.0  # seconds trained before this session
        self._session_t0: float | None = None
        if self.output_dir is not None and config.resume:
            found = find_checkpoint(self.output_dir / CHECKPOINT_NAME)
            if found is not None:
                self._load(found)

    @property
    def ema_model(self) -> nn.Module:
        """The EMA copy (the model itself when EMA is off), unwrapped, in eval mode."""
        if self.ema is not None:
            return self.ema.model
        return self.accelerator.unwrap_model(self.model).eval()

    def train(self) -> dict:
        """Run the remaining steps.

        Returns the step, "loss" (mean over the last log window) and this session's steps and samples per s.
        """
        cfg, acc = self.config, self.accelerator
        start = self.step
        if self.output_dir is not None and acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._trim_log(start)
        batches = self._batches(start) if isinstance(self.data, Iterable) else None
        batch_size = None
        bar = tqdm(
            total=cfg.steps, initial=start, desc="train", disable=not (cfg.progress and acc.is_main_process)
        )
        self.model.train()
        self._session_t0 = t_window = time.perf_counter()
        for step in range(start, cfg.steps):
            if batches is not None:
                batch = send_to_device(next(batches), acc.device)
            else:
                batch = send_to_device(self.data(step, self._generator("data", step, "cpu")), acc.device)
            # After the fetch: a DataLoader draws from the global RNG when an epoch starts, at another step
            # after a resume.
            set_seed(_seed(cfg.seed, "global", acc.process_index, step))
            if batch_size is None:
                batch_size = _batch_size(batch)
            loss = self._optimizer_step(batch, step)
            self.step = step + 1
            self._window_sum += loss.detach().float()
            self._window_count += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                t_window = self._log(t_window, batch_size)
                bar.set_postfix(loss=f"{self._loss:.4g}")
            if self.output_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                if self.step < cfg.steps:
                    self.save_checkpoint()
            if self.on_step is not None and self.on_step(self.step, float(loss.detach())):
                break
        bar.close()
        seconds = time.perf_counter() - self._session_t0
        self._elapsed_base, self._session_t0 = self._elapsed(), None
        if self.output_dir is not None and self.step > start:
            self.save_checkpoint()
        steps_per_s = (self.step - start) / seconds if self.step > start else 0.0
        return {
            "step": self.step,
            "loss": self._loss,
            "steps_per_s": steps_per_s,
            "samples_per_s": steps_per_s * (batch_size or 0) * acc.num_processes,
        }

    def _optimizer_step(self, batch: Any, step: int) -> torch.Tensor:
        """Forward under autocast, backward, clip, AdamW, LR schedule, EMA; returns the loss."""
        acc = self.accelerator
        with acc.autocast():
            loss = self.loss_fn(self.model, batch, self._generator("loss", step, "cpu"))
        if loss.ndim != 0:
            raise InputError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
        acc.backward(loss)
        if self.config.grad_clip is not None:
            acc.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self.model))
        return loss

    def _generator(self, stream: str, step: int, device: torch.device | str) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(_seed(self.config.seed, stream, self.accelerator.process_index, step))
        return generator

    @property
    def elapsed_s(self) -> float:
        """Training seconds over all sessions of this run (what `state.json` records), e.g. for a time budget."""
        return self._elapsed()

    def _elapsed(self) -> float:
        """Training seconds over all sessions of this run."""
        if self._session_t0 is None:
            return self._elapsed_base
        return self._elapsed_base + time.perf_counter() - self._session_t0

    def _batches(self, start: int) -> Iterator[Any]:
        """Cycle the iterable forever, beginning with the batch that step `start` would see."""
        data = self.data
        try:
            epoch, skip = divmod(start, len(data))
            sized = True
        except TypeError:  # no length: skip batch by batch, through as many epochs as it takes
            epoch, skip, sized = 0, start, False
        while True:
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)  # reshuffles a seedable sampler the same way on every run
            if skip and sized and isinstance(data, DataLoader):
                epoch_batches, skip = iter(self.accelerator.skip_first_batches(data, skip)), 0
            else:
                epoch_batches = iter(data)
            seen = 0
            for batch in epoch_batches:
                seen += 1
                if skip:
                    skip -= 1
                else:
                    yield batch
            if not seen:
                raise InputError("data yielded no batches (a one-shot iterator cannot cycle; pass a list)")
            epoch += 1

    def _log(self, t_window: float, batch_size: int | None) -> float:
        """Average the loss window over processes, append a JSONL line; returns the time the window ended."""
        acc = self.accelerator
        self._loss = acc.reduce(self._window_sum, "mean").item() / self._window_count  # waits for the device
        now = time.perf_counter()
        steps_per_s = self._window_count / (now - t_window)
        self._window_sum.zero_()
        self._window_count = 0
        if self.output_dir is None or not acc.is_main_process:
            return now
        line = {
            "step": self.step,
            "loss": self._loss,
            "lr": self.scheduler.get_last_lr()[0],
            "steps_per_s": steps_per_s,
            "samples_per_s": steps_per_s * batch_size * acc.num_processes if batch_size else None,
            "elapsed_s": self._elapsed(),
        }
        with open(self.output_dir / LOG_NAME, "a") as f:
            f.write(json.dumps(line) + "\n")
        return now

    def _trim_log(self, step: int) -> None:
        """Drop log lines past `step` (from a run that went on after its last checkpoint); all when fresh."""
        path = self.output_dir / LOG_NAME
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    def save_checkpoint(self, folder: str | Path | None = None) -> Path:
        """Write model, EMA, optimizer (safetensors) and state.json to `folder`, replacing what was there.

        The default folder is `output_dir/checkpoint`. The files are written into a temporary folder that is
        then swapped in, so a crash leaves either the old checkpoint or the new one, never half of one.
        Call it on every process; only the main one writes.
        """
        if folder is None:
            if self.output_dir is None:
                raise UsageError("save_checkpoint needs a folder when TrainConfig.output_dir is None")
            folder = self.output_dir / CHECKPOINT_NAME
        folder = Path(folder)
        acc = self.accelerator
        model_state = acc.get_state_dict(self.model)
        optimizer_state = self.optimizer.state_dict()
        window_sum = acc.reduce(self._window_sum, "mean").item()
        if acc.is_main_process:
            replace_folder(folder, lambda tmp: self._write_checkpoint(tmp, model_state, optimizer_state, window_sum))
        acc.wait_for_everyone()
        return folder

    def _write_checkpoint(self, folder: Path, model_state: dict, optimizer_state: dict, window_sum: float) -> None:
        """The files of a checkpoint, written into `folder` (the temporary one `save_checkpoint` swaps in)."""
        dtype = CHECKPOINT_DTYPES[self.config.checkpoint_dtype]
        save_file(_tensors_for_file(model_state, dtype), folder / "model.safetensors", metadata={"format": "pt"})
        if self.ema is not None:
            save_file(
                _tensors_for_file(self.ema.state_dict(), dtype), folder / "ema.safetensors", metadata={"format": "pt"}
            )
        moments = {
            f"state.{idx}.{name}": torch.as_tensor(value)
            for idx, param_state in optimizer_state["state"].items()
            for name, value in param_state.items()
        }
        save_file(_tensors_for_file(moments, torch.float32), folder / "optimizer.safetensors")
        state = {
            "step": self.step,
            "seed": self.config.seed,
            "ema": self.ema is not None,
            "checkpoint_dtype": self.config.checkpoint_dtype,
            "config": asdict(self.config),
            "optimizer_param_groups": optimizer_state["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "loss": None if math.isnan(self._loss) else self._loss,
            "loss_window": {"sum": window_sum, "count": self._window_count},
            "elapsed_s": self._elapsed(),
        }
        (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    def _load(self, folder: Path) -> None:
        """Resume every piece of training state from a checkpoint folder written by `save_checkpoint`."""
        model = self.accelerator.unwrap_model(self.model)
        state = load_checkpoint(folder, model, ema=False)
        if self.ema is not None:
            # A run that had EMA off starts its average from the resumed weights.
            self.ema.load_state_dict(
                load_file(folder / "ema.safetensors") if state["ema"] else model.state_dict()
            )
        moments: dict[int, dict[str, torch.Tensor]] = {}
        if (folder / "optimizer.safetensors").is_file():
            for key, value in load_file(folder / "optimizer.safetensors").items():
                _, idx, name = key.split(".", 2)
                moments.setdefault(int(idx), {})[name] = value
        else:  # a checkpoint kept as weights only (e.g. committed to git): AdamW restarts its moments
            warnings.warn(f"{folder} has no optimizer.safetensors; AdamW moments restart", stacklevel=3)
        groups = [
            {k: tuple(v) if k == "betas" else v for k, v in group.items()}
            for group in state["optimizer_param_groups"]
        ]
        self.optimizer.load_state_dict({"state": moments, "param_groups": groups})
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self._loss = math.nan if state["loss"] is None else state["loss"]
        self._window_sum.fill_(state["loss_window"]["sum"])
        self._window_count = state["loss_window"]["count"]
        self._elapsed_base = state["elapsed_s"]
