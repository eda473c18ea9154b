"""ditlab.core: DiT backbones, diffusion and flow-matching training and sampling, the trainer, the CLI root.

    from ditlab.core import DiT, FlowMatching, sample
"""

import logging

import torch

# diffusers imports torchao when it is installed; on a CPU build of torch, torchao logs that its CUDA-only
# extensions do not load, and torch logs deprecations for torchao's enums. None of it concerns a user.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Denormal floats (tiny gradients, Adam moments, attention tails) slow CPU kernels by 10-30x (measured here
# on the 2-core CI machine); flushing them to zero changes no result that matters and keeps step times steady.
torch.set_flush_denormal(True)

__version__ = "0.1.0"

_LAZY = {"DiT": "ditlab.core.models", "DiTConfig": "ditlab.core.models", "FlowMatching": "ditlab.core.diffusion",
         "VPDiffusion": "ditlab.core.diffusion", "sample": "ditlab.core.diffusion",
         "diffusion_loss": "ditlab.core.diffusion", "InputError": "ditlab.core.errors"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """The names users reach for first, imported on first use (so `import ditlab.core` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ditlab.core' has no attribute {name!r}")
