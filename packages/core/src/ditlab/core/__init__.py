"""ditlab.core: DiT backbones, diffusion and flow-matching training and sampling, the trainer, the CLI root."""

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
