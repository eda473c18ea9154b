"""Forward models in pure torch: parallel- and fan-beam CT, Cartesian MRI, and measurement simulation.

Images are batches of axial slices (B, H, W) in window units (`hu_to_unit`: air 0, so line integrals
of air vanish). Lengths are in pixels of the reconstruction grid, with the rotation centre at the
middle of the image.

CT is ray-driven: each ray is sampled every `step` pixels with bilinear interpolation
(`grid_sample`), all slices and angles in one call (slices ride in the channel dimension). The adjoint
is the exact transpose of that discrete forward, taken by autograd (a vector-Jacobian product), so
<A x, y> = <x, A^T y> holds to rounding. Angle 0 integrates along H and puts the W axis on the
detector, and angles turn the way `skimage.transform.radon`'s do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.core.errors import InputError

HU_WINDOW = (-1000.0, 1000.0)
"""The window of every normalisation and metric unless stated: air -1000 HU -> 0, 1000 HU -> 1."""

Array = np.ndarray | torch.Tensor


def hu_to_unit(hu: Array, a_min: float = HU_WINDOW[0], a_max: float = HU_WINDOW[1], clip: bool = True) -> Array:
    """MONAI's `ScaleIntensityRange(a_min, a_max, b_min=0, b_max=1, clip)`: HU -> [0, 1] (air is 0)."""
    u = (hu - a_min) / (a_max - a_min)
    return u.clip(0, 1) if clip else u


def unit_to_hu(u: Array, a_min: float = HU_WINDOW[0], a_max: float = HU_WINDOW[1]) -> Array:
    """Inverse of `hu_to_unit` (without the clip)."""
    return u * (a_max - a_min) + a_min


MAX_SAMPLES_PER_CALL = 1 << 24  # grid_sample outputs per chunk of views: bounds memory to ~64 MB in float32
MAX_VIEWS = 720  # views per CT acquisition: sparse-view and limited-angle CT use far fewer
MAX_RAY_SAMPLES = 1 << 27  # sample points of one CT operator (views x cells x steps): ~1 GiB as float32 (x, y)


def _angles(n_views: int, angles: tuple[float, float] | None, full_deg: float) -> torch.Tensor:
    if int(n_views) != n_views or not 2 <= n_views <= MAX_VIEWS:
        raise InputError(f"n_views must be an integer in [2, {MAX_VIEWS}], got {n_views}")
    start, end = (0.0, full_deg) if angles is None else (float(angles[0]), float(angles[1]))
    if not 0 < end - start <= 360:
        raise InputError(f"angles must be (start_deg, end_deg) with 0 < end - start <= 360, got {angles}")
    return torch.deg2rad(start + (end - start) * torch.arange(int(n_views), dtype=torch.float64) / n_views)


class _RayOperator:
    """A CT geometry given by sample points along every ray; forward sums them, adjoint is the transpose.

    The rays cross a square grid of `size` pixels. Slices of `image_shape` (H, W) with a side shorter than
    `size` (not square) sit in the middle of that square: the forward pads them with air, the adjoint and FBP
    crop back, so the pair stays exact transposes."""

    def __init__(self, size: int, angles: torch.Tensor, det_count: int, step: float,
                 image_shape: tuple[int, int] | None = None) -> None:
        if int(size) != size or size < 2:
            raise InputError(f"size must be an integer >= 2, got {size}")
        if step <= 0:
            raise InputError(f"step must be > 0 pixels, got {step}")
        h, w = (int(size), int(size)) if image_shape is None else (int(n) for n in image_shape)
        if not (1 <= h <= size and 1 <= w <= size):
            raise InputError(f"image_shape must fit the {size} x {size} grid, got {image_shape}")
        self.size, self.angles, self.det_count, self.step = int(size), angles, int(det_count), float(step)
        self.n_views = len(angles)
        self.height, self.width = h, w
        self.offset = ((size - h) // 2, (size - w) // 2)  # where the slice sits in the square (rows, columns)
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def angles_deg(self) -> np.ndarray:
        return np.rad2deg(self.angles.numpy())

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one slice's measurement: (n_views, det_count)."""
        return self.n_views, self.det_count

    @property
    def image_shape(self) -> tuple[int, int]:
        """Shape of one slice: (H, W), (size, size) unless built for non-square slices."""
        return self.height, self.width

    def _refined(self, op: _RayOperator, factor: int) -> _RayOperator:
        """`op` (this geometry `factor` times finer) with this slice region scaled by `factor`."""
        op.height, op.width = factor * self.height, factor * self.width
        op.offset = (factor * self.offset[0], factor * self.offset[1])
        return op

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Slices (B, H, W) -> (B, size, size), air around them."""
        if (self.height, self.width) == (self.size, self.size):
            return x
        (top, left), n = self.offset, self.size
        return F.pad(x, (left, n - self.width - left, top, n - self.height - top))

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        """(B, size, size) -> the slice region (B, H, W)."""
        (top, left) = self.offset
        return x[:, top:top + self.height, left:left + self.width]

    def _points(self) -> torch.Tensor:
        """Sample points (V, D, T, 2) as (x, y) in pixels from the image centre; float64."""
        raise NotImplementedError

    def _grid(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._cache:
            steps = len(self._ray_steps(self.size / math.sqrt(2)))
            if self.n_views * self.det_count * steps > MAX_RAY_SAMPLES:
                raise InputError(f"{self.n_views} views x {self.det_count} detector cells on a {self.size}-pixel "
                                 f"grid need about {self.n_views * self.det_count * steps:,} ray samples, more than "
                                 f"the {MAX_RAY_SAMPLES:,} one operator may hold (~1 GiB); use fewer views or "
                                 "smaller slices")
            self._cache[key] = (self._points() * (2.0 / self.size)).to(device=device, dtype=dtype)
        return self._cache[key]

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1:] != self.image_shape:
            raise InputError(f"expected images (B, {self.height}, {self.width}), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sinograms (B, n_views, det_count) of images (B, H, W)."""
        self._check_image(x)
        x = self._pad(x)
        grid = self._grid(x.device, x.dtype)  # (V, D, T, 2)
        V, D, T, _ = grid.shape
        chunk = max(1, MAX_SAMPLES_PER_CALL // (x.shape[0] * D * T))
        img = x.unsqueeze(0)  # (1, B, H, W): slices are channels, every ray sample reads all of them
        out = [F.grid_sample(img, grid[v:v + chunk].reshape(1, -1, T, 2), mode="bilinear", padding_mode="zeros",
                             align_corners=False).sum(-1) for v in range(0, V, chunk)]
        return (torch.cat(out, dim=-1) * self.step).reshape(x.shape[0], V, D)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The exact transpose of `forward`: images (B, H, W) from sinograms (B, n_views, det_count)."""
        if y.ndim != 3 or y.shape[1:] != self.shape:
            raise InputError(f"expected sinograms (B, {self.n_views}, {self.det_count}), got shape {tuple(y.shape)}")
        with torch.enable_grad():
            x = torch.zeros(y.shape[0], *self.image_shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y, create_graph=y.requires_grad)
        return g

    __call__ = forward

    def _det_positions(self) -> torch.Tensor:
        """Detector cell centres (D,) in pixels at the rotation centre."""
        return torch.arange(self.det_count, dtype=torch.float64) - (self.det_count - 1) / 2

    def _ray_steps(self, radius: float) -> torch.Tensor:
        """Offsets along a ray, `step` apart, spanning a disk of `radius` pixels."""
        n = math.ceil(2 * radius / self.step)
        return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * self.step

    def _to_image(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """View-frame points (s along the detector, t along the central ray) -> image points (V, ..., 2) as (x, y).

        skimage's convention: at angle 0 the detector runs along x; the object turns clockwise as the angle grows.
        """
        cos, sin = torch.cos(self.angles)[:, None, None], torch.sin(self.angles)[:, None, None]
        return torch.stack(torch.broadcast_tensors(s * cos + t * sin, t * cos - s * sin), dim=-1)

    def _to_view(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image points -> view-frame (s, t), each (V, ...): the inverse rotation of `_to_image`."""
        cos, sin = torch.cos(self.angles)[:, None, None], torch.sin(self.angles)[:, None, None]
        return x * cos - y * sin, x * sin + y * cos

    def _pixel_xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel centres (H, W) in pixels from the image centre: x runs along W, y along H."""
        c = torch.arange(self.size, dtype=torch.float64) - (self.size - 1) / 2
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        return xx, yy

    def _fbp_coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For FBP's pixel-driven backprojection: each pixel's detector position (V, H, W) in detector cells
        and its weight (V, H, W), including the angle step."""
        raise NotImplementedError

    def fbp_preweight(self) -> torch.Tensor:
        """Weights (D,) applied to the sinogram before ramp filtering (1 for parallel beams)."""
        return torch.ones(self.det_count, dtype=torch.float64)

    def fbp_backproject(self, q: torch.Tensor) -> torch.Tensor:
        """FBP's backprojection of filtered sinograms (B, V, D) -> images (B, H, W): pixel-driven, interpolated
        on the detector, weighted as this geometry's inversion formula asks."""
        pos, weight = self._fbp_coords()
        V, H, W = pos.shape
        u = (2 * pos + 1) / self.det_count - 1  # detector cell centres -> grid_sample's [-1, 1]
        grid = torch.stack([u, torch.zeros_like(u)], dim=-1).reshape(V, H * W, 1, 2).to(q.device, q.dtype)
        weight = weight.reshape(V, 1, H * W).to(q.device, q.dtype)
        inp = q.permute(1, 0, 2).unsqueeze(2)  # (V, B, 1, D): views are the batch
        chunk = max(1, MAX_SAMPLES_PER_CALL // (q.shape[0] * H * W))
        out = sum((F.grid_sample(inp[v:v + chunk], grid[v:v + chunk], mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[..., 0] * weight[v:v + chunk]).sum(0)
                  for v in range(0, V, chunk))
        return self._crop(out.reshape(q.shape[0], H, W))


class ParallelBeam(_RayOperator):
    """Parallel-beam CT: `n_views` angles over [0, 180) degrees, or over (start_deg, end_deg) for limited angle.

    The detector has `det_count` cells of 1 pixel, by default `size`: it sees the disk inscribed in
    the image (a scanner's field of view) from every angle; `det_count = ceil(size * sqrt(2))` sees
    the whole square.
    """

    def __init__(self, n_views: int, size: int, angles: tuple[float, float] | None = None,
                 det_count: int | None = None, step: float = 0.5, image_shape: tuple[int, int] | None = None) -> None:
        super().__init__(size, _angles(n_views, angles, 180.0), det_count or size, step, image_shape)
        self.angle_range = angles
        self.det_spacing = 1.0

    def refine(self, factor: int) -> ParallelBeam:
        """The same geometry on a grid `factor` times finer, with `factor` times as many detector cells."""
        return self._refined(ParallelBeam(self.n_views, factor * self.size, self.angle_range, factor * self.det_count,
                                          self.step), factor)

    def _points(self) -> torch.Tensor:
        s = self._det_positions()[None, :, None]
        t = self._ray_steps(min(self.det_count / 2, self.size / math.sqrt(2)))[None, None, :]
        return self._to_image(s, t)

    def _fbp_coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, _ = self._to_view(*self._pixel_xy())
        d_theta = (self.angles[-1] - self.angles[0]) / (self.n_views - 1)
        return s + (self.det_count - 1) / 2, torch.full_like(s, float(d_theta))


class FanBeam(_RayOperator):
    """Fan-beam CT with a flat detector: `n_views` source positions over [0, 360) degrees (or (start, end)).

    `source_distance` (source to rotation centre) and `detector_distance` (rotation centre to
    detector) are in pixels, by default 2x and 1x the image side. Detector cells are 1 pixel wide at
    the rotation centre (`det_spacing`, on the detector, is that times the magnification). By default
    the fan just covers the disk inscribed in the image.
    """

    def __init__(self, n_views: int, size: int, source_distance: float | None = None,
                 detector_distance: float | None = None, angles: tuple[float, float] | None = None,
                 det_count: int | None = None, step: float = 0.5, image_shape: tuple[int, int] | None = None) -> None:
        self.source_distance = float(source_distance or 2 * size)
        self.detector_distance = float(detector_distance if detector_distance is not None else size)
        if self.source_distance <= size / 2 or self.detector_distance < 0:
            raise InputError(f"source_distance must exceed half the image side ({size / 2} px) and "
                             f"detector_distance must be >= 0, got {source_distance}, {detector_distance}")
        self.magnification = (self.source_distance + self.detector_distance) / self.source_distance
        self.det_spacing = self.magnification
        R = self.source_distance
        det = det_count or 2 * math.ceil(R * math.tan(math.asin(size / 2 / R))) + 1
        super().__init__(size, _angles(n_views, angles, 360.0), det, step, image_shape)
        self.angle_range = angles

    def refine(self, factor: int) -> FanBeam:
        """The same geometry on a grid `factor` times finer, with `factor` times as many detector cells."""
        return self._refined(FanBeam(self.n_views, factor * self.size, factor * self.source_distance,
                                     factor * self.detector_distance, self.angle_range, factor * self.det_count,
                                     self.step), factor)

    def _points(self) -> torch.Tensor:
        R, p = self.source_distance, self._det_positions()
        edge = p.abs().max()
        radius = min(float(R * edge / math.hypot(R, edge)), self.size / math.sqrt(2))  # the disk the fan covers
        length = torch.sqrt(R ** 2 + p ** 2)[None, :, None]
        ds, dt = p[None, :, None] / length, R / length  # unit ray directions in the view's frame
        lam = R * dt + self._ray_steps(radius)[None, None, :]  # distance from the source, centred on the ray
        return self._to_image(lam * ds, lam * dt - R)  # the source sits at t = -R

    def fbp_preweight(self) -> torch.Tensor:
        p = self._det_positions()
        return self.source_distance / torch.sqrt(self.source_distance ** 2 + p ** 2)

    def _fbp_coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._to_view(*self._pixel_xy())
        U = (self.source_distance + t) / self.source_distance
        d_beta = (self.angles[-1] - self.angles[0]) / (self.n_views - 1)
        full_turn = float(self.angles[-1] - self.angles[0] + d_beta) > 2 * math.pi - 1e-6
        weight = (0.5 if full_turn else 1.0) * float(d_beta) / U ** 2  # a full turn measures every ray twice
        return s / U + (self.det_count - 1) / 2, weight


class MRI:
    """Cartesian MRI: k = mask * centred orthonormal 2D FFT of real images (B, H, W); mask (H, W) is centred.

    The adjoint takes the real part of the inverse FFT: it is the exact adjoint for real images under
    the real inner product Re<a, b>, which is what the reconstructions of real (magnitude) images use.
    """

    def __init__(self, mask: torch.Tensor | np.ndarray) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim != 2:
            raise InputError(f"expected a 2D sampling mask (H, W), got shape {tuple(mask.shape)}")
        self.mask = mask.to(torch.bool)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one slice's k-space: (H, W)."""
        return tuple(self.mask.shape)

    @property
    def image_shape(self) -> tuple[int, int]:
        """Shape of one slice: (H, W)."""
        return tuple(self.mask.shape)

    @property
    def acceleration(self) -> float:
        return self.mask.numel() / max(1, int(self.mask.sum()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Masked centred k-space (B, H, W), complex."""
        if x.ndim != 3 or tuple(x.shape[1:]) != self.shape:
            raise InputError(f"expected images (B, {self.shape[0]}, {self.shape[1]}), got shape {tuple(x.shape)}")
        k = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return k * self.mask.to(k.device)

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        """Real part of the zero-filled inverse FFT: images (B, H, W)."""
        if k.ndim != 3 or tuple(k.shape[1:]) != self.shape:
            raise InputError(f"expected k-space (B, {self.shape[0]}, {self.shape[1]}), got shape {tuple(k.shape)}")
        k = torch.fft.ifftshift(k * self.mask.to(k.device), dim=(-2, -1))
        return torch.fft.ifft2(k, norm="ortho").real

    __call__ = forward


MASK_KINDS = ("uniform1d", "gaussian1d", "random1d", "uniform2d", "gaussian2d", "random2d")


def mri_mask(shape: tuple[int, int], accel: float, kind: str = "uniform1d", center_fraction: float = 0.08,
             seed: int = 0) -> torch.Tensor:
    """A centred Cartesian sampling mask (H, W) keeping round(n / accel) of n samples (phase-encode columns,
    whole, for the 1D kinds; points for the 2D kinds), the central `center_fraction` (of each side) always in.

    `uniform*` spreads the remaining samples evenly, `random*` draws them uniformly, `gaussian*` draws
    them with a Gaussian density around the centre (sigma a quarter of the side).
    """
    if kind not in MASK_KINDS:
        raise InputError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    if not accel >= 1:
        raise InputError(f"acceleration must be >= 1, got {accel}")
    if not 0 <= center_fraction < 1:
        raise InputError(f"center_fraction must be in [0, 1), got {center_fraction}")
    H, W = (int(n) for n in shape)
    rng = np.random.default_rng(seed)
    one_d = kind.endswith("1d")
    dims = (W,) if one_d else (H, W)
    centre = np.ones(dims, dtype=bool)
    for axis, n in enumerate(dims):
        width = max(1, round(n * center_fraction)) if center_fraction > 0 else 0
        keep = np.zeros(n, dtype=bool)
        keep[n // 2 - width // 2: n // 2 - width // 2 + width] = True
        centre &= keep.reshape([-1 if a == axis else 1 for a in range(len(dims))])
    total = int(np.prod(dims))
    target = round(total / accel)
    if centre.sum() > target:
        raise InputError(f"center_fraction {center_fraction} alone samples {int(centre.sum())} of {total} "
                         f"{'columns' if one_d else 'points'}, more than 1/{accel} ({target}); lower one of them")
    outside = np.flatnonzero(~centre.ravel())
    need = target - int(centre.sum())
    if kind.startswith("uniform"):
        chosen = outside[np.round(np.linspace(0, len(outside) - 1, need)).astype(int)] if need > 0 else outside[:0]
    else:
        weights = np.ones(len(outside))
        if kind.startswith("gaussian"):
            coords = np.stack(np.unravel_index(outside, dims), axis=-1) - np.array(dims) // 2
            weights = np.exp(-0.5 * (coords / (np.array(dims) / 4)) ** 2).prod(axis=-1)
        chosen = rng.choice(outside, size=need, replace=False, p=weights / weights.sum())
    flat = centre.ravel().copy()
    flat[chosen] = True
    mask = flat.reshape(dims)
    return torch.from_numpy(np.broadcast_to(mask, (H, W)).copy() if one_d else mask)


Operator = ParallelBeam | FanBeam | MRI


def gradient(x: torch.Tensor, dims: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """Forward differences along `dims` (zero at the far edge), stacked first: (len(dims), *x.shape)."""
    out = torch.zeros(len(dims), *x.shape, dtype=x.dtype, device=x.device)
    for i, (d, w) in enumerate(zip(dims, weights, strict=True)):
        n = x.shape[d]
        out[i].narrow(d, 0, n - 1).copy_(w * (x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1)))
    return out


def gradient_adjoint(g: torch.Tensor, dims: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """The transpose of `gradient` (minus the divergence)."""
    x = torch.zeros_like(g[0])
    for i, (d, w) in enumerate(zip(dims, weights, strict=True)):
        n = g.shape[d + 1]
        gi = w * g[i].narrow(d, 0, n - 1)
        x.narrow(d, 0, n - 1).sub_(gi)
        x.narrow(d, 1, n - 1).add_(gi)
    return x


def volume_to_slices(volume_hu: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A volume (X, Y, Z) in HU -> its axial slices (Z, X, Y) in window units, float32, finite-checked."""
    hu = torch.as_tensor(volume_hu)
    if hu.ndim != 3:
        raise InputError(f"expected a volume (X, Y, Z) in HU, got shape {tuple(hu.shape)}")
    if not torch.isfinite(hu).all():
        raise InputError("the volume has NaN or Inf voxels; expected finite HU values")
    return hu_to_unit(hu.to(torch.float32).permute(2, 0, 1)).contiguous()


def slices_to_volume(x: torch.Tensor) -> np.ndarray:
    """Axial slices (Z, X, Y) in window units -> a volume (X, Y, Z) in HU, float32."""
    return unit_to_hu(x.detach().to("cpu", torch.float32).permute(1, 2, 0)).numpy()
