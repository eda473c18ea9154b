"""The recipe of a shipped model: the numbers its model card quotes, mapped to a `TrainConfig` in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ditlab.core.errors import UsageError

from .trainer import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """How a model is trained. `steps` may stay None for runs trained for as long as they are let run (the
    caller then passes `steps=`); change a field with `dataclasses.replace(recipe, lr=...)`."""

    batch: int
    lr: float
    steps: int | None = None
    warmup: int = 0  # linear warm-up steps
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    seed: int = 0
    precision: str = "no"  # TrainConfig.mixed_precision: "no", "bf16" or "auto"
    checkpoint_every: int = 0  # 0: a checkpoint only at the end (when there is an output folder)
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UsageError(f"Recipe.batch must be >= 1, got {self.batch!r}")

    def train_config(self, output_dir: str | Path | None, **overrides) -> TrainConfig:
        """The TrainConfig of this recipe writing checkpoints and logs to `output_dir` (None: nothing written);
        `overrides` are TrainConfig fields (`steps`, `progress`, `resume`, ...) that win over the recipe."""
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"unknown TrainConfig fields {unknown}; expected some of {sorted(known)} "
                             "(change Recipe fields with dataclasses.replace)")
        config = {
            "steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay, "warmup_steps": self.warmup,
            "grad_clip": self.grad_clip, "ema_decay": self.ema_decay, "mixed_precision": self.precision,
            "seed": self.seed, "checkpoint_every": self.checkpoint_every, "log_every": self.log_every,
            "output_dir": None if output_dir is None else str(output_dir), **overrides,
        }
        if config["steps"] is None:
            raise UsageError("this Recipe has no steps: pass steps=N (the total optimizer steps to reach)")
        return TrainConfig(**config)

    def to_dict(self) -> dict:
        """The recipe's fields by name, for model cards (`MODEL_CARD.format(**recipe.to_dict(), ...)`)."""
        return asdict(self)
