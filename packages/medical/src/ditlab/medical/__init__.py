"""ditlab.medical: sparse-view / limited-angle CT and compressed-sensing MRI of 3D volumes with a DiT prior.

    from ditlab.medical import Acquisition, load_volume, reconstruct_volume, save_volume, simulate_volume

    vol = load_volume("scan.nii.gz")                                   # HU, RAS, affine kept
    meas = simulate_volume(vol, Acquisition("sparse-view", views=8))   # or load_measurement("y.npz")
    rec, result = reconstruct_volume(meas, "dds")                      # the tuned defaults of the task
    save_volume(rec, "rec.nii.gz")
    print(evaluate(rec.data, vol.data, meas, result))                  # PSNR/SSIM per plane, 3D SSIM, residual
"""

from ditlab.medical.acquisition import TASKS, Acquisition, Measurement
from ditlab.medical.io import Volume, VolumeError, load_measurement, load_volume, save_measurement, save_volume
from ditlab.medical.metrics import evaluate
from ditlab.medical.reconstruct import METHODS, Settings, defaults, reconstruct_volume, simulate_volume

__version__ = "0.1.0"

__all__ = [
    "METHODS", "TASKS", "Acquisition", "Measurement", "Settings", "Volume", "VolumeError", "defaults", "evaluate",
    "load_measurement", "load_volume", "reconstruct_volume", "save_measurement", "save_volume", "simulate_volume",
]
