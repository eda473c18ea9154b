"""Diffusion paths (flow matching, VP/DDPM), the training loss, guidance and samplers."""

from ditlab.core.diffusion.guidance import Denoiser
from ditlab.core.diffusion.losses import diffusion_loss, masked_mean
from ditlab.core.diffusion.paths import FlowMatching, VPDiffusion
from ditlab.core.diffusion.samplers import FLOW_SAMPLERS, VP_SAMPLERS, make_scheduler, sample

__all__ = ["FlowMatching", "VPDiffusion", "diffusion_loss", "masked_mean", "sample", "make_scheduler",
           "Denoiser", "FLOW_SAMPLERS", "VP_SAMPLERS"]
