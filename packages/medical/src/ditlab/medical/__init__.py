"""ditlab.medical: 3D CT and MRI reconstruction with a DiT prior."""

from ditlab.medical import reconstruct as _rec
from ditlab.medical.baselines import fbp, sirt, tune_lambda, tv_admm_3d, tv_cs, tv_pdhg_2d, zero_filled
from ditlab.medical.data import hu_to_unit, make_ood_volume, make_phantom, phantom_dataset, unit_to_hu, write_phantoms
from ditlab.medical.io import Volume, VolumeError, load_measurement, load_volume, save_measurement, save_volume
from ditlab.medical.metrics import data_residual, per_plane, psnr, ssim, ssim3d
from ditlab.medical.operators import MRI, FanBeam, ParallelBeam, mri_mask, simulate, slices_to_volume, volume_to_slices

Acquisition, Measurement, Settings = _rec.Acquisition, _rec.Measurement, _rec.Settings
defaults, evaluate, reconstruct_volume, simulate_volume = (_rec.defaults, _rec.evaluate, _rec.reconstruct_volume,
                                                           _rec.simulate_volume)

__version__ = "0.1.0"

__all__ = [
    "Acquisition", "MRI", "FanBeam", "Measurement", "ParallelBeam", "Settings", "Volume", "VolumeError",
    "data_residual", "defaults", "evaluate", "fbp", "hu_to_unit", "load_measurement", "load_volume",
    "make_ood_volume", "make_phantom", "mri_mask", "per_plane", "phantom_dataset", "psnr", "reconstruct_volume",
    "save_measurement", "save_volume", "simulate", "simulate_volume", "sirt", "slices_to_volume", "ssim", "ssim3d",
    "tune_lambda", "tv_admm_3d", "tv_cs", "tv_pdhg_2d", "unit_to_hu", "volume_to_slices", "write_phantoms",
    "zero_filled",
]
