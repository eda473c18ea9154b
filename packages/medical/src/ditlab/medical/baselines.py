"""The classical reconstructions every result is compared with: FBP, SIRT, TV (2D PDHG, 3D ADMM), MRI
zero-filled and TV compressed sensing.

All work on batches of axial slices (B, H, W) in window units (see `operators`). The TV methods
minimise  (1 / (2 ||A||^2)) ||A x - y||^2 + lam * TV(x)  with isotropic TV: dividing the data term
by ||A||^2 keeps `lam`'s scale across view counts (at 128^2 and 1% noise the best CT lam was 3e-4 for
8 views, 30 views and 0-90 degrees alike; MRI's was 3e-3 to 1e-2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ditlab.core.errors import InputError
from ditlab.medical.acquisition import Acquisition, simulate
from ditlab.medical.metrics import psnr
from ditlab.medical.operators import (
    MRI,
    FanBeam,
    Operator,
    ParallelBeam,
    gradient,
    gradient_adjoint,
    volume_to_slices,
)

FILTERS = ("ramlak", "hann")


def ramp_filter(n_det: int, filter: str = "ramlak", spacing: float = 1.0) -> torch.Tensor:
    """Frequency response (n_fft // 2 + 1,) of the discrete ramp filter for `n_det` cells, zero-padded to a power
    of two >= 2 n_det: the FFT of the band-limited spatial kernel h(0) = 1 / (4 s^2), h(odd n) = -1 / (pi n s)^2
    (Kak & Slaney), times the cell size s; `hann` multiplies it by a Hann window reaching 0 at Nyquist."""
    if filter not in FILTERS:
        raise InputError(f"unknown filter {filter!r}; expected one of {FILTERS}")
    n_fft = 1 << math.ceil(math.log2(2 * n_det))
    n = torch.fft.fftfreq(n_fft, 1 / n_fft, dtype=torch.float64)  # integer offsets in FFT order
    h = torch.where(n.remainder(2) == 1, -1 / (math.pi * n * spacing) ** 2, torch.zeros_like(n))
    h[0] = 1 / (4 * spacing ** 2)
    response = torch.fft.rfft(h).real * spacing
    if filter == "hann":
        response = response * (0.5 + 0.5 * torch.cos(2 * math.pi * torch.fft.rfftfreq(n_fft, dtype=torch.float64)))
    return response


def _check_ct(op: Operator, what: str) -> None:
    if not isinstance(op, ParallelBeam | FanBeam):
        raise TypeError(f"{what} needs a CT operator (ParallelBeam or FanBeam), got {type(op).__name__}")


def fbp(sino: torch.Tensor, op: ParallelBeam | FanBeam, filter: str = "ramlak") -> torch.Tensor:
    """Filtered backprojection of sinograms (B, V, D): ramp-filtered along the detector (fan beams weighted by
    the cosine of each ray first), then backprojected with the geometry's weights."""
    _check_ct(op, "fbp")
    D = op.det_count
    response = ramp_filter(D, filter).to(sino.device, sino.dtype)
    p = sino * op.fbp_preweight().to(sino.device, sino.dtype)
    q = torch.fft.irfft(torch.fft.rfft(p, n=2 * (len(response) - 1)) * response, n=2 * (len(response) - 1))
    return op.fbp_backproject(q[..., :D])


def _row_col_sums(op: ParallelBeam | FanBeam, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 (1, V, D) and A^T 1 (1, H, W): CT's matrix entries are >= 0, so these are its row and column sums."""
    rows = op.forward(torch.ones(1, *op.image_shape, dtype=like.dtype, device=like.device))
    cols = op.adjoint(torch.ones(1, *op.shape, dtype=like.dtype, device=like.device))
    return rows, cols


def _inverse(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v > 1e-6, 1 / v.clamp(min=1e-6), torch.zeros_like(v))


def sirt(y: torch.Tensor, op: ParallelBeam | FanBeam, iters: int = 100, nonneg: bool = True,
         x0: torch.Tensor | None = None) -> torch.Tensor:
    """SIRT: x += C A^T R (y - A x), with R and C the inverse row and column sums of A; clipped at 0 if `nonneg`."""
    _check_ct(op, "sirt")
    rows, cols = _row_col_sums(op, y)
    R, C = _inverse(rows), _inverse(cols)
    x = torch.zeros(y.shape[0], *op.image_shape, dtype=y.dtype, device=y.device) if x0 is None else x0.clone()
    for _ in range(iters):
        x = x + C * op.adjoint(R * (y - op.forward(x)))
        if nonneg:
            x = x.clamp(min=0)
    return x


def op_norm(op: Operator, iters: int = 20, seed: int = 0) -> float:
    """||A||_2 by power iteration on A^T A (slightly over-estimated, which keeps step sizes safe); computed once
    per operator (operators do not change after construction) and kept on it."""
    known = vars(op).setdefault("_op_norm", {})
    if (iters, seed) not in known:
        known[(iters, seed)] = _power_iteration(op, iters, seed)
    return known[(iters, seed)]


def _power_iteration(op: Operator, iters: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, *op.image_shape, generator=gen, dtype=torch.float64)
    for _ in range(iters):
        x = op.adjoint(op.forward(x))
        n = x.norm()
        x = x / n
    return 1.01 * math.sqrt(float(n))


def tv_pdhg_2d(y: torch.Tensor, op: Operator, lam: float, iters: int = 300, nonneg: bool = True,
               x0: torch.Tensor | None = None) -> torch.Tensor:
    """TV reconstruction slice by slice (batched): Chambolle-Pock on (1 / 2||A||^2) ||A x - y||^2 + lam TV_2D(x).

    CT uses Pock & Chambolle's diagonal preconditioning (steps from A's row and column sums, as in SIRT),
    which converges far faster than scalar steps on CT's ill-conditioned A; MRI's A (a masked unitary
    FFT) is well conditioned and takes scalar steps.
    """
    scale = op_norm(op)
    if isinstance(op, MRI):  # on A / ||A||, y / ||A||: ||[A / ||A||; grad]||^2 <= 1 + 8
        A, At, yn, lam_eff = (lambda v: op.forward(v) / scale), (lambda v: op.adjoint(v) / scale), y / scale, lam
        sigma = sigma_grad = tau = 0.99 / 3.0
    else:  # on A itself, with lam * ||A||^2; sigma = 1 / row sums, tau = 1 / column sums of [A; grad]
        A, At, yn, lam_eff = op.forward, op.adjoint, y, lam * scale ** 2
        rows, cols = _row_col_sums(op, y)
        sigma, sigma_grad, tau = _inverse(rows), 0.5, 1 / (cols + 4)  # grad: rows of two +-1, columns of four
    dims, w = (1, 2), (1.0, 1.0)
    x = torch.zeros(y.shape[0], *op.image_shape, dtype=y.real.dtype, device=y.device) if x0 is None else x0.clone()
    x_bar, p, q = x.clone(), torch.zeros_like(y), torch.zeros(2, *x.shape, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        p = (p + sigma * (A(x_bar) - yn)) / (1 + sigma)
        q = q + sigma_grad * gradient(x_bar, dims, w)
        q = q / (q.norm(dim=0, keepdim=True) / lam_eff).clamp(min=1)
        x_new = x - tau * (At(p) + gradient_adjoint(q, dims, w))
        if nonneg:
            x_new = x_new.clamp(min=0)
        x_bar, x = 2 * x_new - x, x_new
    return x


def tv_admm_3d(y: torch.Tensor, op: Operator, lam: float, iters: int = 60, rho: float | None = None,
               cg_iters: int = 5, z_weight: float = 1.0, x0: torch.Tensor | None = None) -> torch.Tensor:
    """TV over x, y and z of a stack of slices (Z, H, W) measured slice by slice: ADMM on
    (1 / 2||A||^2) ||A x - y||^2 + lam ||grad_3D x||_{2,1}, the x-step by `cg_iters` warm-started CG steps.

    `z_weight` scales the differences across slices (e.g. in-plane / slice spacing for anisotropic voxels).
    """
    if y.shape[0] < 2:
        raise InputError(f"tv_admm_3d needs a stack of >= 2 slices, got {y.shape[0]}; use tv_pdhg_2d for one slice")
    scale = op_norm(op)
    rho = 10 * lam if rho is None else rho
    dims, w = (0, 1, 2), (z_weight, 1.0, 1.0)
    rhs_data = op.adjoint(y) / scale ** 2
    x = rhs_data.clone() if x0 is None else x0.clone()
    z = gradient(x, dims, w)
    u = torch.zeros_like(z)

    def normal(v: torch.Tensor) -> torch.Tensor:
        return op.adjoint(op.forward(v)) / scale ** 2 + rho * gradient_adjoint(gradient(v, dims, w), dims, w)

    for _ in range(iters):
        x = cg(normal, rhs_data + rho * gradient_adjoint(z - u, dims, w), x, cg_iters)
        g = gradient(x, dims, w) + u
        z = g * (1 - (lam / rho) / g.norm(dim=0, keepdim=True).clamp(min=1e-12)).clamp(min=0)
        u = g - z
    return x


def cg(normal: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor, iters: int) -> torch.Tensor:
    """`iters` conjugate-gradient steps on normal(x) = b from x (a symmetric positive semi-definite `normal`);
    slices are solved jointly (one scalar per step). Stops early once the residual is 1e-12 of its start (or of
    ||b||): past convergence, float32 rounding would otherwise divide noise by noise."""
    r = b - normal(x)
    d, rr = r.clone(), (r * r).sum()
    stop = 1e-12 * max(float(rr), float((b * b).sum()))
    for _ in range(iters):
        if rr <= stop:
            break
        Ad = normal(d)
        alpha = rr / (d * Ad).sum().clamp(min=1e-30)
        x, r = x + alpha * d, r - alpha * Ad
        rr_new = (r * r).sum()
        d, rr = r + (rr_new / rr.clamp(min=1e-30)) * d, rr_new
    return x


def zero_filled(k: torch.Tensor, op: MRI) -> torch.Tensor:
    """Zero-filled inverse FFT of under-sampled k-space (B, H, W): the real part, images being real."""
    if not isinstance(op, MRI):
        raise TypeError(f"zero_filled needs an MRI operator, got {type(op).__name__}")
    return op.adjoint(k)


def tv_cs(k: torch.Tensor, op: MRI, lam: float, iters: int = 300) -> torch.Tensor:
    """TV compressed sensing for Cartesian MRI: `tv_pdhg_2d` with the masked-FFT operator."""
    if not isinstance(op, MRI):
        raise TypeError(f"tv_cs needs an MRI operator, got {type(op).__name__}")
    return tv_pdhg_2d(k, op, lam, iters)


LAMBDA_GRID = tuple(float(v) for v in np.geomspace(1e-5, 1e-2, 7))


def tune_lambda(method: Callable[..., torch.Tensor], val_volumes: Sequence[np.ndarray], acquisition: Acquisition,
                lams: Sequence[float] = LAMBDA_GRID, method_kwargs: dict | None = None, noise: float = 0.01,
                seed: int = 0) -> float:
    """Grid search: the `lam` of `method(y, op, lam, **method_kwargs)` with the best mean PSNR (HU window) over
    validation volumes (X, Y, Z) in HU, measured by `simulate(volume, acquisition, noise, seed)`."""
    if not lams:
        raise InputError("lams is empty; expected at least one candidate lambda")
    cases = [(volume_to_slices(v), *simulate(v, acquisition, noise=noise, seed=seed)) for v in val_volumes]
    if not cases:
        raise InputError("val_volumes is empty; expected at least one validation volume")
    scores = [np.mean([psnr(method(y, op, lam, **(method_kwargs or {})), ref, window=(0.0, 1.0))
                       for ref, y, op in cases]) for lam in lams]
    return float(lams[int(np.argmax(scores))])
