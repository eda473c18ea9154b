"""Super-resolution and restoration with SRDiT: the residual-shift path, its loss, and a tiled sampler for images of
any size.

The path (ResShift, Yue et al. 2023): with y0 the bicubic upsampling of the LR image and x0 the HR image,
    x_t = x0 + eta_t (y0 - x0) + kappa sqrt(eta_t) eps,    t = 1..T,
so x_T is y0 plus noise of std ~kappa and x_1 is nearly x0. sqrt(eta_t) rises geometrically from sqrt(eta_1) to
sqrt(eta_T) with the time axis warped by a power p: sqrt(eta_t) = sqrt(eta_1) b^((t-1)/(T-1))^p (T-1),
eta_1 = min((0.04 / kappa)^2, 0.001). The network predicts x0. A step from t to s < t draws from the posterior
    x_s ~ N((eta_s / eta_t) x_t + (1 - eta_s / eta_t) x0_hat,  kappa^2 (eta_s / eta_t) (eta_t - eta_s)),
and the last step returns x0_hat itself; one step (`steps=1`) is x0_hat(x_T).

Tiling: the HR state of the whole image is kept, and at every step each overlapping tile's x0_hat is blended into
one x0_hat with Gaussian weights before the posterior step, so tiles agree at every step and no seam appears (the
field's users report seams when finished tiles are stitched instead). The network's memory is set by the tile
batch; the image-sized buffers are the state, the blended estimate and the weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ditlab.core.errors import InputError
from ditlab.imaging.models import LRFeatures, SRDiT, upsample

COLOUR_FIXES = ("none", "wavelet", "adain")


@dataclass(frozen=True)
class ResidualShift:
    """The residual-shift schedule: `steps` (T) training steps, noise scale `kappa`, eta_T and the warp power."""

    steps: int = 4
    kappa: float = 1.0
    eta_max: float = 0.999
    power: float = 0.3

    @classmethod
    def of(cls, model: SRDiT) -> ResidualShift:
        """The schedule a network was trained with (kept in its config)."""
        c = model.config
        return cls(int(c.steps), float(c.kappa), float(c.eta_max), float(c.power))

    def etas(self) -> torch.Tensor:
        """(T + 1,) eta_0 = 0, eta_1 .. eta_T (float64)."""
        t_count = self.steps
        eta_1 = min((0.04 / self.kappa) ** 2, 0.001)
        if t_count == 1:
            return torch.tensor([0.0, self.eta_max], dtype=torch.float64)
        b = math.exp(math.log(self.eta_max / eta_1) / (2 * (t_count - 1)))
        t = torch.arange(1, t_count + 1, dtype=torch.float64)
        beta = ((t - 1) / (t_count - 1)) ** self.power * (t_count - 1)
        return torch.cat([torch.zeros(1, dtype=torch.float64), (math.sqrt(eta_1) * b ** beta) ** 2])

    def step_weights(self) -> torch.Tensor:
        """(T,) training probabilities of t = 1..T, proportional to t^2 (T = 4: 3%, 13%, 30%, 53%). Small t is
        nearly a copy of x_t, which carries most of x0 in training; the first sampling step (t = T, from the LR
        image and noise alone) is the hard one, and the 1-step variant is that step alone."""
        w = torch.arange(1, self.steps + 1, dtype=torch.float64) ** 2
        return w / w.sum()

    def timestep(self, t: torch.Tensor | int) -> torch.Tensor:
        """The network's time input for step index t (1..T): t / T * 1000."""
        return torch.as_tensor(t, dtype=torch.float32) * (1000.0 / self.steps)

    def q_sample(self, x0: torch.Tensor, y0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for per-sample step indices t (B,) in 1..T."""
        eta = self.etas().to(x0.dtype).to(x0.device)[t].view(-1, 1, 1, 1)
        return x0 + eta * (y0 - x0) + self.kappa * eta.sqrt() * noise

    def step(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int, s: int, noise: torch.Tensor | None) -> torch.Tensor:
        """One posterior draw from step t to step s < t (s = 0 returns x0_hat)."""
        if s == 0:
            return x0_hat
        etas = self.etas()
        r = float(etas[s] / etas[t])
        std = self.kappa * math.sqrt(r * float(etas[t] - etas[s]))
        out = r * x_t + (1 - r) * x0_hat
        return out if noise is None else out.add_(noise, alpha=std)

    def schedule(self, steps: int | None = None) -> list[int]:
        """The step indices a sampler of `steps` steps visits, from T down (`steps` <= T)."""
        n = self.steps if steps is None else int(steps)
        if not 1 <= n <= self.steps:
            raise InputError(f"steps must lie in [1, {self.steps}] for this network (trained with {self.steps}), "
                             f"got {steps}")
        return sorted({round(self.steps - i * (self.steps - 1) / max(n - 1, 1)) for i in range(n)}, reverse=True)


def to_model(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp_(0, 1)


def sr_loss(model: SRDiT, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """The training loss: L1 between x0_hat(x_t, t, lr) and x0, images in [0, 1] in `batch` ({"lr", "hr"} and
    optionally "task"), t drawn with `ResidualShift.step_weights`."""
    path = ResidualShift.of(model)
    lr, hr = to_model(batch["lr"]), to_model(batch["hr"])
    y0 = upsample(lr, model.scale)
    t = torch.multinomial(path.step_weights(), hr.shape[0], replacement=True, generator=generator) + 1
    noise = torch.randn(hr.shape, generator=generator)
    x_t = path.q_sample(hr, y0, t, noise)
    x0_hat = model(x_t, path.timestep(t), lr, task=batch.get("task"))
    return (x0_hat - hr).abs().mean()


# ----------------------------------------------------------------------------------------------
# Tiles
# ----------------------------------------------------------------------------------------------

def default_overlap(tile: int) -> int:
    """LR pixels neighbouring tiles share by default: an eighth of the tile (4 of 32; 16 HR pixels at x4)."""
    return max(1, tile // 8)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length` pixels with at least `overlap` pixels shared by
    neighbours; the last tile ends at the border. A length below the tile gives one tile (the image is padded)."""
    if not 0 <= overlap < tile:
        raise InputError(f"overlap must lie in [0, tile) = [0, {tile}), got {overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def seams(length: int, tile: int, overlap: int, scale: int = 1) -> list[int]:
    """Where the tiles' middles of overlap lie (HR pixels): the places a stitched result would show seams."""
    starts = tile_starts(length, tile, overlap)
    return [scale * (b + (a + tile)) // 2 for a, b in zip(starts, starts[1:], strict=False)]


def blend_window(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(size,) Gaussian weights, sigma = size / 4 (0.14 at the border): a tile's say over its own pixels."""
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    return torch.exp(-0.5 * (x / (size / 4)) ** 2)


@dataclass
class Tiling:
    """The tile grid of one LR image: LR tile size, overlap and tile origins (rows, columns)."""

    tile: int
    overlap: int
    origins: list[tuple[int, int]]

    @classmethod
    def of(cls, h: int, w: int, tile: int, overlap: int) -> Tiling:
        rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
        return cls(tile, overlap, [(y, x) for y in rows for x in cols])


def _pad_to(lr: torch.Tensor, h: int, w: int) -> torch.Tensor:
    ph, pw = h - lr.shape[2], w - lr.shape[3]
    if ph <= 0 and pw <= 0:
        return lr
    mode = "reflect" if ph < lr.shape[2] and pw < lr.shape[3] else "replicate"
    return F.pad(lr, (0, max(pw, 0), 0, max(ph, 0)), mode=mode)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def sample(model: SRDiT, lr: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None,
           tile: int | None = None, overlap: int | None = None, batch: int = 16, task: int | None = None,
           net: torch.nn.Module | None = None, context: Callable | None = None, cache_mb: float = 2048,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The HR image (1, 3, s*h, s*w) in [0, 1] for one LR image (1, 3, h, w) in [0, 1], tiled.

    `tile` / `overlap` are LR pixels (default: the tile the network was trained on, `default_overlap` shared);
    `batch` tiles run per network call (fewer for small images: the next power of two); `net` / `context` are
    the network to call and its autocast context (`ditlab.core.accel.auto.prepare`; default: the model in fp32).
    The LR stream of every tile is computed once and kept while it fits in `cache_mb`, else recomputed per step.
    `progress(i, total)` after each step."""
    if lr.ndim != 4 or lr.shape[:2] != (1, 3):
        raise InputError(f"expected one RGB LR image (1, 3, h, w), got shape {tuple(lr.shape)}")
    path, s, p = ResidualShift.of(model), model.scale, model.patch
    tile = int(tile or model.config.tile)
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    if tile % p or tile < p:
        raise InputError(f"tile must be a positive multiple of the patch size {p}, got {tile}")
    net = net or model
    context = context or contextlib.nullcontext
    generator = generator or torch.Generator().manual_seed(0)
    h, w = lr.shape[2:]
    H, W = max(tile, -(-h // p) * p), max(tile, -(-w // p) * p)  # padded LR canvas
    lr_pad = to_model(_pad_to(lr.float(), H, W))
    tiling = Tiling.of(H, W, tile, overlap)
    n = len(tiling.origins)
    batch = max(1, min(batch, 1 << (n - 1).bit_length()))  # a power of two: few shapes for a compiled network
    groups = [tiling.origins[i:i + batch] for i in range(0, n, batch)]
    win = blend_window(tile * s)
    win2 = win[:, None] * win[None, :]
    weight = torch.zeros(1, 1, H * s, W * s)
    for y, x in tiling.origins:
        weight[..., y * s:(y + tile) * s, x * s:(x + tile) * s] += win2
    y0 = upsample(lr_pad, s)
    noise = torch.randn(y0.shape, generator=generator)
    x = y0 + path.kappa * math.sqrt(float(path.etas()[-1])) * noise
    del noise
    task_t = None if task is None else torch.full((batch,), int(task), dtype=torch.long)
    per_tile = sum(4 * (2 * (tile // p) ** 2 * model.cfg.hidden_size + (tile // p) ** 2 * blk.cross.in_channels)
                   for blk in model.blocks)
    keep = int(cache_mb * 2**20 // max(per_tile * batch, 1))
    cache: dict[int, LRFeatures] = {}

    def lr_batch(group: list[tuple[int, int]]) -> torch.Tensor:
        tiles = [lr_pad[..., y:y + tile, x_:x_ + tile] for y, x_ in group]
        tiles += [tiles[-1]] * (batch - len(tiles))  # equal batches: compiled networks see one shape
        return torch.cat(tiles)

    def features(g: int, lrb: torch.Tensor) -> LRFeatures:
        if g in cache:
            return cache[g]
        with context():
            f = net.encode_lr(lrb, task_t)
        if g < keep:
            cache[g] = f
        return f

    ts = path.schedule(steps or model.default_steps(task))
    for i, t in enumerate(ts):
        x0 = torch.zeros_like(x)
        tt = path.timestep(torch.full((batch,), t))
        for g, group in enumerate(groups):
            lrb = lr_batch(group)
            xb = [x[..., y * s:(y + tile) * s, x_ * s:(x_ + tile) * s] for y, x_ in group]
            xb = torch.cat(xb + [xb[-1]] * (batch - len(xb)))
            with context():
                out = net(xb, tt, lrb, task=task_t, lr_features=features(g, lrb)).float()
            for j, (y, x_) in enumerate(group):
                x0[..., y * s:(y + tile) * s, x_ * s:(x_ + tile) * s].addcmul_(out[j:j + 1], win2)
        x0.div_(weight)
        nxt = ts[i + 1] if i + 1 < len(ts) else 0
        x = path.step(x, x0, t, nxt, torch.randn(x.shape, generator=generator) if nxt else None)
        del x0
        if progress is not None:
            progress(i, len(ts))
    return from_model(x[..., : h * s, : w * s])


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------

def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    pad = min(radius, x.shape[2] - 1, x.shape[3] - 1)
    mode = "reflect" if pad == radius else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def check_colour(method: str) -> str:
    """`method` itself when it is one of `COLOUR_FIXES`, else an InputError naming them."""
    if method not in COLOUR_FIXES:
        raise InputError(f"colour fix must be one of {COLOUR_FIXES}, got {method!r}")
    return method


def colour_fix(out: torch.Tensor, ref: torch.Tensor, method: str = "wavelet", sigma: float = 8.0) -> torch.Tensor:
    """Bring `out`'s colours back to `ref`'s (both (B, C, H, W) in [0, 1], `ref` the bicubic upsampling of the
    input): "wavelet" swaps out's low frequencies (Gaussian, `sigma` px) for ref's, "adain" matches per-channel
    mean and std, "none" leaves it."""
    check_colour(method)
    if method == "none":
        return out
    if method == "adain":
        dims = (2, 3)
        mo, so = out.mean(dims, keepdim=True), out.std(dims, keepdim=True).clamp_min(1e-6)
        mr, sr = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True)
        return ((out - mo) / so * sr + mr).clamp_(0, 1)
    return (out - _blur(out, sigma) + _blur(ref, sigma)).clamp_(0, 1)
