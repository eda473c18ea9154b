"""DiT backbones: `DiT` (diffusers ModelMixin), `DiTConfig`, named size presets."""

from ditlab.core.models.dit import PRESETS, DiT, DiTConfig, modulate, preset_config

__all__ = ["DiT", "DiTConfig", "PRESETS", "preset_config", "modulate"]
