"""ditlab.medical: 3D CT and MRI reconstruction with a DiT prior."""

from ditlab.medical.baselines import fbp, sirt, tune_lambda, tv_admm_3d, tv_cs, tv_pdhg_2d, zero_filled
from ditlab.medical.data import hu_to_unit, make_ood_volume, make_phantom, phantom_dataset, unit_to_hu, write_phantoms
from ditlab.medical.io import Volume, VolumeError, load_volume, save_volume
from ditlab.medical.metrics import data_residual, per_plane, psnr, ssim, ssim3d
from ditlab.medical.operators import MRI, FanBeam, ParallelBeam, mri_mask, simulate, slices_to_volume, volume_to_slices

__version__ = "0.1.0"

__all__ = [
    "MRI", "FanBeam", "ParallelBeam", "Volume", "VolumeError", "data_residual", "fbp", "hu_to_unit", "load_volume",
    "make_ood_volume", "make_phantom", "mri_mask", "per_plane", "phantom_dataset", "psnr", "save_volume",
    "simulate", "sirt", "slices_to_volume", "ssim", "ssim3d", "tune_lambda", "tv_admm_3d", "tv_cs", "tv_pdhg_2d",
    "unit_to_hu", "volume_to_slices", "write_phantoms", "zero_filled",
]
