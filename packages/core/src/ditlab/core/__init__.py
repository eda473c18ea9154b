"""ditlab.core: DiT backbones, diffusion and flow-matching training and sampling, the trainer, the CLI root."""

__version__ = "0.1.0"
