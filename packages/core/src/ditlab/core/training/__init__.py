"""The trainer on accelerate (AdamW + warmup, EMA, clipping, bf16 autocast, safetensors checkpoints), the
`Recipe` of a shipped model, and resume files that carry a run between machines."""

from .ema import EMA
from .recipe import Recipe
from .resume import export_resume, import_resume, resume_path, training_dir
from .trainer import TrainConfig, Trainer, load_checkpoint

__all__ = [
    "EMA",
    "Recipe",
    "TrainConfig",
    "Trainer",
    "export_resume",
    "import_resume",
    "load_checkpoint",
    "resume_path",
    "training_dir",
]
