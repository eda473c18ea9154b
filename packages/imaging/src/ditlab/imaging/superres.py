"""Super-resolution and restoration with SRDiT: the residual-shift path, its loss, and a tiled sampler for images of
any size.

The path (ResShift, Yue et al. 2023): with y0 the bicubic upsampling of the LR image and x0 the HR image,
    x_t = x0 + eta_t (y0 - x0) + kappa sqrt(eta_t) eps,    t = 1..T,
so x_T is y0 plus noise of std ~kappa and x_1 is nearly x0. sqrt(eta_t) rises geometrically from sqrt(eta_1) to
sqrt(eta_T) with the time axis warped by a power p: sqrt(eta_t) = sqrt(eta_1) b^((t-1)/(T-1))^p (T-1),
eta_1 = min((0.04 / kappa)^2, 0.001). The network predicts x0. A step from t to s < t draws from the posterior
    x_s ~ N((eta_s / eta_t) x_t + (1 - eta_s / eta_t) x0_hat,  kappa^2 (eta_s / eta_t) (eta_t - eta_s)),
and the last step returns x0_hat itself; one step (`steps=1`) is x0_hat(x_T).

Tiling: at every step each overlapping tile's x0_hat is blended into one x0_hat with Gaussian weights before the
posterior step, so tiles agree at every step and no seam appears (the field's users report seams when finished
tiles are stitched instead). The blend is local, so the sampler does not keep the whole state: it visits tile rows
in a `Wavefront` (step i runs a few tile rows behind step i - 1) and keeps, per step, only the bands of rows still
needed; finished rows leave at once (`sample(..., sink=)`), through `RowStream`s for the colour fix and resizing.
Beside the output image itself, the memory is then set by the tile batch, the tile height times the image width per
step and the cap on cached LR features (`cache_mb`), not by the image's area; the result is the same as blending
the whole image at every step (a test checks it against that plain algorithm).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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
    """LR pixels neighbouring tiles share by default: a quarter of the tile (8 of 32; 32 HR pixels at x4). With an
    eighth (4 of 32) the blend of two tiles that disagree near their borders left 20% less gradient energy along
    the seams than elsewhere at 1 step (`ditlab imaging benchmark --only tiling` measures it); a quarter keeps it
    within 6%, for 22% more tiles at 512 x 512."""
    return max(1, tile // 4)


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

def upsample_rows(lr: torch.Tensor, scale: int, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of `upsample(lr, scale)` (B, C, scale*h, scale*w), from the LR rows they depend on only (at x1
    a view of `lr`)."""
    if scale == 1:
        return lr[:, :, r0:r1]
    h = lr.shape[2]
    l0, l1 = max(0, r0 // scale - 3), min(h, -(-r1 // scale) + 3)  # bicubic: 2 LR rows each side, and a margin
    return upsample(lr[:, :, l0:l1], scale)[:, :, r0 - l0 * scale:r1 - l0 * scale]


@dataclass(frozen=True)
class Wavefront:
    """The order a tiled sampler of `steps` steps visits tile rows in, so that only a few tile rows of each step's
    state are alive at once (memory set by the tile size and the image width, not its height).

    Tile rows are grouped `group` at a time; band k is the LR rows from tile row k's start to the next's. Unit
    (i, j) = step i on group j reads the state of step i on the bands its tiles cover and adds its blended x0_hat
    to them; a band's x0_hat is complete once the unit of its own group is done, and then the step's posterior draw
    makes that band of the next state. Unit (i, j) runs in round j + lag * i, after every unit it reads from:
    within a round no unit depends on another, so all their tiles batch together."""

    rows: list[int]
    height: int
    tile: int
    steps: int
    group: int

    @property
    def bands(self) -> list[tuple[int, int]]:
        """LR rows [a, b) of each band."""
        return list(zip(self.rows, [*self.rows[1:], self.height], strict=True))

    @property
    def groups(self) -> int:
        return -(-len(self.rows) // self.group)

    @functools.cached_property
    def ends(self) -> list[int]:
        """The last band each tile row covers."""
        return [max(k for k, a in enumerate(self.rows) if a < r + self.tile) for r in self.rows]

    def last_band(self, r: int) -> int:
        """The last band tile row r covers."""
        return self.ends[r]

    def reads(self, j: int) -> range:
        """The bands group j's tiles read."""
        rows = range(j * self.group, min(len(self.rows), (j + 1) * self.group))
        return range(rows[0], max(self.last_band(r) for r in rows) + 1)

    @property
    def lag(self) -> int:
        return 1 + max(self.reads(j)[-1] // self.group - j for j in range(self.groups))

    @property
    def rounds(self) -> int:
        return self.groups + self.lag * (self.steps - 1)

    def units(self, k: int) -> list[tuple[int, int]]:
        """(step index, group) of round k, deepest step first."""
        return [(i, k - self.lag * i) for i in reversed(range(self.steps)) if 0 <= k - self.lag * i < self.groups]


def _band_noise(shape: tuple[int, ...], base: int, i: int, k: int) -> torch.Tensor:
    """The Gaussian noise of state i on band k: its own seed, so the noise does not depend on the visiting order."""
    seed = int(np.random.SeedSequence([base, i, k]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(model: SRDiT, lr: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None,
           tile: int | None = None, overlap: int | None = None, batch: int = 16, task: int | None = None,
           net: torch.nn.Module | None = None, context: Callable | None = None, cache_mb: float = 1024,
           progress: Callable[[int, int], None] | None = None,
           sink: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor | None:
    """The HR image (1, 3, s*h, s*w) in [0, 1] for one LR image (1, 3, h, w) in [0, 1], tiled.

    `tile` / `overlap` are LR pixels (default: the tile the network was trained on, `default_overlap` shared);
    `batch` tiles run per network call (fewer for small images: a power of two, one shape for a compiled network);
    `net` / `context` are the network to call and its autocast context (`ditlab.core.accel.auto.prepare`; default:
    the model in fp32). Tile rows are visited in a `Wavefront`: each step's state lives only on a few bands, each
    tile's LR stream is computed once and kept for its later steps while the kept ones fit in `cache_mb` (else
    recomputed). With `sink`, finished HR rows go to `sink(row, rows)` ((1, 3, n, s*w), top to bottom) as soon as
    they are final and nothing is returned; else the whole image is. `progress(k, rounds)` after each round."""
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
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    h, w = lr.shape[2:]
    H, W = max(tile, -(-h // p) * p), max(tile, -(-w // p) * p)  # padded LR canvas
    lr_pad = to_model(_pad_to(lr.float(), H, W))
    rows, cols = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    ts = path.schedule(steps or model.default_steps(task))
    n_steps = len(ts)
    group = max(1, -(-4 * batch // (n_steps * len(cols))))  # enough tiles per round to fill the batches
    front = Wavefront(rows, H, tile, n_steps, min(group, len(rows)))
    bands = front.bands
    most = max(sum(min(front.group, len(rows) - j * front.group) for _, j in front.units(k))
               for k in range(front.rounds)) * len(cols)
    bs = max(1, min(batch, 1 << (most - 1).bit_length()))  # one batch shape for the whole image
    win = blend_window(tile * s)
    win2 = win[:, None] * win[None, :]
    wy, wx = torch.zeros(H * s), torch.zeros(W * s)
    for y in rows:
        wy[y * s:(y + tile) * s] += win
    for x in cols:
        wx[x * s:(x + tile) * s] += win
    std_T = path.kappa * math.sqrt(float(path.etas()[-1]))
    state: list[dict[int, torch.Tensor]] = [{} for _ in range(n_steps)]  # step i -> band -> x (1, 3, bh*s, W*s)
    acc: list[dict[int, torch.Tensor]] = [{} for _ in range(n_steps)]
    cache: dict[tuple[int, int], LRFeatures] = {}
    cache_bytes = 0.0
    out = None if sink is not None else torch.empty(1, 3, h * s, w * s)

    def band_state(i: int, k: int) -> torch.Tensor:
        if i == 0 and k not in state[0]:
            a, b = bands[k]
            y0 = upsample_rows(lr_pad, s, a * s, b * s).clone()  # at x1 a view of the input: not to be written
            state[0][k] = y0.add_(_band_noise(y0.shape, base, 0, k), alpha=std_T)
        return state[i][k]

    def emit(k: int, x: torch.Tensor) -> None:
        a, b = (v * s for v in bands[k])
        if a >= h * s:
            return
        rows_ = from_model(x[..., : min(b, h * s) - a, : w * s])
        if sink is not None:
            sink(a, rows_)
        else:
            out[..., a:a + rows_.shape[2], :] = rows_

    def lr_stream(tiles: list[tuple[int, int]], steps_: list[int]) -> list[LRFeatures]:
        """Each tile's LR features (computed in batches of `bs` for those not cached; kept for the tile's later
        steps while the kept ones fit in `cache_mb`)."""
        nonlocal cache_bytes
        todo = [t for t in tiles if t not in cache]
        new: dict[tuple[int, int], LRFeatures] = {}
        for c in range(0, len(todo), bs):
            chunk = todo[c:c + bs]
            lrb = torch.cat([lr_pad[..., y:y + tile, x:x + tile] for y, x in chunk])
            lrb = torch.cat([lrb, lrb[-1:].expand(bs - len(chunk), -1, -1, -1)]) if len(chunk) < bs else lrb
            with context():
                f = net.encode_lr(lrb, task_t)
            for j, t in enumerate(chunk):
                new[t] = f.take(j)
        for t, i in zip(tiles, steps_, strict=True):
            if t in new and i < n_steps - 1 and cache_bytes + new[t].nbytes <= cache_mb * 2**20:
                cache[t] = new[t]
                cache_bytes += new[t].nbytes
        return [cache[t] if t in cache else new[t] for t in tiles]

    task_t = None if task is None else torch.full((bs,), int(task), dtype=torch.long)
    for k in range(front.rounds):
        units = front.units(k)
        work = []  # (step, tile row, column origin, HR input tile)
        for i, j in units:
            for r in range(j * front.group, min(len(rows), (j + 1) * front.group)):
                span = range(r, front.last_band(r) + 1)
                strip = torch.cat([band_state(i, b) for b in span], dim=2)[..., : tile * s, :]
                work += [(i, r, x, strip[..., x * s:(x + tile) * s]) for x in cols]
        feats = lr_stream([(rows[r], x) for _, r, x, _ in work], [i for i, *_ in work])
        for c in range(0, len(work), bs):
            chunk = work[c:c + bs]
            pad = bs - len(chunk)
            xb = torch.cat([t for *_, t in chunk] + [chunk[-1][3]] * pad)
            lrb = torch.cat([lr_pad[..., rows[r]:rows[r] + tile, x:x + tile] for _, r, x, _ in chunk])
            lrb = torch.cat([lrb, lrb[-1:].expand(pad, -1, -1, -1)]) if pad else lrb
            tt = path.timestep(torch.tensor([ts[i] for i, *_ in chunk] + [ts[chunk[-1][0]]] * pad))
            fb = LRFeatures.cat(feats[c:c + bs] + [feats[c + len(chunk) - 1]] * pad)
            with context():
                pred = net(xb, tt, lrb, task=task_t, lr_features=fb).float()
            for q, (i, r, x, _) in enumerate(chunk):
                y_hr = 0
                for b in range(r, front.last_band(r) + 1):
                    a0, a1 = bands[b]
                    n = min(a1, rows[r] + tile) - a0
                    if b not in acc[i]:
                        acc[i][b] = torch.zeros(1, 3, (a1 - a0) * s, W * s)
                    acc[i][b][..., : n * s, x * s:(x + tile) * s].addcmul_(
                        pred[q:q + 1, :, y_hr:y_hr + n * s], win2[y_hr:y_hr + n * s])
                    y_hr += n * s
        for i, j in units:  # the bands of group j are complete at step i: the posterior draw
            for b in range(j * front.group, min(len(rows), (j + 1) * front.group)):
                a0, a1 = bands[b]
                x0 = acc[i].pop(b).div_(wy[a0 * s:a1 * s, None] * wx[None, :])
                x_t = state[i].pop(b)
                if i + 1 < n_steps:
                    noise = _band_noise(x_t.shape, base, i + 1, b) if ts[i + 1] else None
                    state[i + 1][b] = path.step(x_t, x0, ts[i], ts[i + 1], noise)
                else:
                    emit(b, path.step(x_t, x0, ts[i], 0, None))
        if n_steps > 1:
            for i, j in units:
                if i == n_steps - 1:
                    for r in range(j * front.group, min(len(rows), (j + 1) * front.group)):
                        for x in cols:
                            f = cache.pop((rows[r], x), None)
                            cache_bytes -= f.nbytes if f is not None else 0
        if progress is not None:
            progress(k, front.rounds)
    return out


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


class RowStream:
    """Rows of an image arriving top to bottom, in chunks of any height -> a local operation `fn` -> `sink`.

    `fn(chunk, r0)` maps input rows [r0, r0 + n) to output rows [r0 / down, (r0 + n) / down), and its output rows
    at least `halo` input rows from the chunk's ends are those of `fn` on the whole image (a blur of radius
    <= halo, a resampling of support <= halo). Each output row is made once, from at most the rows it needs, so
    the memory is a few chunks, not the image. `total` input rows in all (a multiple of `down`); `halo` a multiple
    of `down`."""

    def __init__(self, fn: Callable[[torch.Tensor, int], torch.Tensor], total: int,
                 sink: Callable[[int, torch.Tensor], None], halo: int = 0, down: int = 1):
        if total % down or halo % down:
            raise ValueError(f"rows {total} and halo {halo} must be multiples of {down}")
        self.fn, self.total, self.sink, self.halo, self.down = fn, total, sink, halo, down
        self.buf: torch.Tensor | None = None
        self.buf0 = self.received = self.done = 0

    def __call__(self, r0: int, rows: torch.Tensor) -> None:
        if r0 != self.received:
            raise ValueError(f"rows must arrive in order: expected row {self.received}, got {r0}")
        self.buf = rows if self.buf is None else torch.cat([self.buf, rows], 2)
        self.received += rows.shape[2]
        d = self.down
        end = self.total if self.received >= self.total else (self.received - self.halo) // d * d
        if end <= self.done:
            return
        c0, c1 = max(0, self.done - self.halo), min(self.total, end + self.halo)
        out = self.fn(self.buf[:, :, c0 - self.buf0:c1 - self.buf0], c0)
        self.sink(self.done // d, out[:, :, (self.done - c0) // d:(end - c0) // d])
        self.done = end
        keep = max(0, end - self.halo)
        self.buf, self.buf0 = self.buf[:, :, keep - self.buf0:], keep
