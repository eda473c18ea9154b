"""The trainer on accelerate (AdamW + warmup, EMA, clipping, bf16 autocast, safetensors checkpoints), the
`Recipe` of a shipped model, resume files that carry a run between machines, and parameter-efficient fine-tuning
(LoRA, DiffFit) with one-file adapters."""

from .ema import EMA
from .peft import (
    LoRALinear,
    PeftConfig,
    adapter_config,
    apply_peft,
    check_adapter,
    load_adapter,
    merge_adapter,
    parameter_counts,
    read_adapter_meta,
    save_adapter,
    trainable_parameters,
)
from .recipe import Recipe
from .resume import export_resume, export_run, import_resume, resume_path, resume_run, training_dir
from .trainer import TrainConfig, Trainer, load_checkpoint

__all__ = [
    "EMA",
    "LoRALinear",
    "PeftConfig",
    "Recipe",
    "TrainConfig",
    "Trainer",
    "adapter_config",
    "apply_peft",
    "check_adapter",
    "export_resume",
    "export_run",
    "import_resume",
    "load_adapter",
    "load_checkpoint",
    "merge_adapter",
    "parameter_counts",
    "read_adapter_meta",
    "resume_path",
    "resume_run",
    "save_adapter",
    "trainable_parameters",
    "training_dir",
]
