"""Measure the classical baselines once, in the setting of REFERENCES.md's figures (a one-off, not a test).

128 x 128 axial slices of textured phantoms, 1% noise, simulated at 2x (no inverse crime). Test slices
come from phantom seed 0, validation slices (for lambda and SIRT's iteration count) from seed 100.
PSNR / SSIM on the (-1000, 1000) HU window, mean over the test slices.

    .venv/bin/python scripts/medical/measure_baselines.py
"""

import time

import numpy as np
import torch

from ditlab.medical.acquisition import Acquisition, simulate
from ditlab.medical.baselines import fbp, sirt, tune_lambda, tv_admm_3d, tv_cs, tv_pdhg_2d, zero_filled
from ditlab.medical.data import make_phantom
from ditlab.medical.metrics import data_residual, psnr, ssim
from ditlab.medical.operators import slices_to_volume

TEST_SLICES, VAL_SLICES = [16, 28, 40, 52], [20, 44]
TV_ITERS, LAMS = 300, tuple(float(v) for v in np.geomspace(1e-5, 1e-2, 7))


def score(x: torch.Tensor, ref_hu: np.ndarray) -> tuple[float, float]:
    rec = slices_to_volume(x)
    k = range(ref_hu.shape[2])
    return (float(np.mean([psnr(rec[:, :, i], ref_hu[:, :, i]) for i in k])),
            float(np.mean([ssim(rec[:, :, i], ref_hu[:, :, i]) for i in k])))


def row(setting: str, method: str, x: torch.Tensor, seconds: float, ref: np.ndarray, op, y, note: str = "") -> None:
    p, s = score(x, ref)
    print(f"| {setting} | {method} | {p:.1f} | {s:.3f} | {data_residual(x, op, y):.3f} | {seconds:.1f} | {note} |",
          flush=True)


def main() -> None:
    torch.set_num_threads(1)
    test = make_phantom((128, 128, 64), seed=0)[:, :, TEST_SLICES]
    val = make_phantom((128, 128, 64), seed=100)[:, :, VAL_SLICES]
    print("| setting | method | PSNR dB | SSIM | residual | s | tuned on validation |")
    print("|---|---|---|---|---|---|---|")
    for setting, acq in [("CT 8 views", Acquisition("sparse-view", 8)), ("CT 30 views", Acquisition("sparse-view", 30)),
                         ("CT limited 0-90, 30 views", Acquisition("limited-angle", 30, (0, 90)))]:
        y, op = simulate(test, acq, noise=0.01, seed=0)
        for f in ("ramlak", "hann"):
            t = time.perf_counter()
            x = fbp(y, op, f)
            row(setting, f"FBP {f}", x, time.perf_counter() - t, test, op, y)
        n = int(tune_lambda(lambda y, op, n: sirt(y, op, int(n)), [val], acq, lams=(50, 100, 200, 400, 800)))
        t = time.perf_counter()
        x = sirt(y, op, n)
        row(setting, "SIRT", x, time.perf_counter() - t, test, op, y, f"iters {n}")
        lam = tune_lambda(tv_pdhg_2d, [val], acq, lams=LAMS, method_kwargs={"iters": TV_ITERS})
        t = time.perf_counter()
        x = tv_pdhg_2d(y, op, lam, TV_ITERS)
        row(setting, f"TV 2D PDHG ({TV_ITERS} it)", x, time.perf_counter() - t, test, op, y, f"lam {lam:.1e}")
    stack = make_phantom((128, 128, 64), seed=0)[:, :, 24:40]
    val_stack = make_phantom((128, 128, 64), seed=100)[:, :, 24:40]
    y, op = simulate(stack, Acquisition("sparse-view", 8), noise=0.01, seed=0)
    lam = tune_lambda(tv_admm_3d, [val_stack], Acquisition("sparse-view", 8), lams=(1e-4, 3e-4, 1e-3),
                      method_kwargs={"iters": 60})
    t = time.perf_counter()
    x = tv_admm_3d(y, op, lam, iters=60)
    row("CT 8 views, 16-slice stack", "TV 3D ADMM (60 it)", x, time.perf_counter() - t, stack, op, y, f"lam {lam:.1e}")
    t = time.perf_counter()
    x = tv_pdhg_2d(y, op, lam, TV_ITERS)
    row("CT 8 views, 16-slice stack", f"TV 2D PDHG ({TV_ITERS} it)", x, time.perf_counter() - t, stack, op, y,
        f"lam {lam:.1e} (3D's)")
    for accel in (4, 8):
        for kind in ("uniform1d", "gaussian1d"):
            setting = f"MRI x{accel} {kind}"
            acq = Acquisition("mri", accel=accel, mask=kind)
            k, op = simulate(test, acq, noise=0.01, seed=0)
            t = time.perf_counter()
            x = zero_filled(k, op)
            row(setting, "zero-filled", x, time.perf_counter() - t, test, op, k)
            lam = tune_lambda(tv_cs, [val], acq, lams=LAMS, method_kwargs={"iters": TV_ITERS})
            t = time.perf_counter()
            x = tv_cs(k, op, lam, TV_ITERS)
            row(setting, f"TV-CS ({TV_ITERS} it)", x, time.perf_counter() - t, test, op, k, f"lam {lam:.1e}")


if __name__ == "__main__":
    main()
