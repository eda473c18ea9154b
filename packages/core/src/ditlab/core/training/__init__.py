"""The trainer on accelerate: AdamW + warmup, EMA, clipping, bf16 autocast, safetensors checkpoints."""

from .ema import EMA
from .trainer import TrainConfig, Trainer, load_checkpoint

__all__ = ["EMA", "TrainConfig", "Trainer", "load_checkpoint"]
