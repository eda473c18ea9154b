"""Training and evaluation images this project generates (seeded), the few real photos, and training batches.

A model trained on procedural images must not learn their shortcuts, so `procedural_image` aims at the statistics
of photos: occluding shapes with power-law sizes (the dead-leaves model, whose spectra fall as 1/f like photos'),
smooth shading and shadows, 1/f fractal backgrounds, fine textures, text and thin lines, muted or vivid palettes,
depth-of-field blur, uneven light. Every edge is anti-aliased: masks are drawn at 4x (text at 2x) and box-averaged,
and analytic patterns ramp over one pixel, so no staircases (photos have none). `kind=None` draws a kind from the
seed, composites (the photo-like scenes) most often. Real photos come from scikit-image's wheel: TRAIN_PHOTOS may
be trained on, EVAL_PHOTOS (the out-of-distribution set) never.

Images are float32 (H, W, 3) in [0, 1]; batches are torch float32 (B, 3, H, W).
"""

from __future__ import annotations

import bisect
import colorsys
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate

import numpy as np
import scipy.fft
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from ditlab.core import splits
from ditlab.core.errors import InputError
from ditlab.imaging.degrade import check_degradation, degrade, resize

KINDS = ("shapes", "gradient", "texture", "fractal", "text", "lineart", "composite")
KIND_PROBS = (0.1, 0.08, 0.12, 0.1, 0.1, 0.1, 0.4)  # kind=None: composites most often
TRAIN_PHOTOS = ("camera", "astronaut")
EVAL_PHOTOS = ("chelsea", "coffee", "rocket")  # never trained on
SPLITS = ("train", "val", "test")
SPLIT_SIZE = 10_000_000
SPLIT_OFFSETS = {"train": 0, "val": SPLIT_SIZE, "test": 2 * SPLIT_SIZE}
SS = 4  # supersampling of drawn masks
TEXT_SS = 2  # FreeType already anti-aliases glyph coverage; 2x keeps small text cheap (~0.7 ms a line)

Rng = np.random.Generator


# ---- colours, noise, anti-aliased masks -------------------------------------------------------------------------

def _choose(rng: Rng, options: Sequence, p: Sequence[float] | None = None):
    """One of `options` (with probabilities `p`): numpy's `choice` costs ~20 us a call, this ~1 us."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    cum = list(accumulate(p))
    return options[min(bisect.bisect(cum, rng.random() * cum[-1]), len(options) - 1)]


class _Palette:
    """Colours of one image: a style (near-grey, muted, earthy, analogous or vivid) around a base hue."""

    STYLES = ("grey", "muted", "earth", "analogous", "vivid")

    def __init__(self, rng: Rng) -> None:
        self.rng = rng
        self.style = _choose(rng, self.STYLES, (0.15, 0.35, 0.15, 0.15, 0.2))
        self.hue = rng.uniform(0.02, 0.16) if self.style == "earth" else rng.random()

    def colour(self, lo: float = 0.03, hi: float = 0.97) -> np.ndarray:
        """One RGB colour with value in [lo, hi]."""
        r = self.rng
        spread, sat = {"grey": (0.5, (0, 0.06)), "muted": (0.5, (0, 0.35)), "earth": (0.06, (0.15, 0.6)),
                       "analogous": (0.08, (0.2, 0.8)), "vivid": (0.5, (0.35, 1.0))}[self.style]
        h = (self.hue + r.uniform(-spread, spread)) % 1.0
        return np.array(colorsys.hsv_to_rgb(h, r.uniform(*sat), r.uniform(lo, hi)), dtype=np.float32)

    def pair(self, diff: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """Two colours whose values (brightness) differ by at least `diff`: patterns that stay visible."""
        v = self.rng.uniform(0.03, 0.97)
        below = max(0.0, v - diff - 0.03)
        u = self.rng.uniform(0, below + max(0.0, 0.97 - v - diff))
        w = 0.03 + u if u < below else v + diff + (u - below)
        return self.colour(v, v), self.colour(w, w)


@lru_cache(maxsize=32)
def _inv_freq(h: int, w: int) -> np.ndarray:
    """|f| on the rfft2 grid (cycles per pixel), with a stand-in at DC so that powers stay finite."""
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None])
    f[0, 0] = 1.0
    return f.astype(np.float32)


def _fractal(rng: Rng, shape: tuple[int, int], alpha: float) -> np.ndarray:
    """Zero-mean, unit-std noise whose amplitude spectrum falls as 1/f^alpha (photos: alpha about 1)."""
    h, w = shape
    spec = scipy.fft.rfft2(rng.standard_normal((h, w), dtype=np.float32)) * _inv_freq(h, w) ** -alpha
    spec[0, 0] = 0
    n = scipy.fft.irfft2(spec, s=(h, w))
    return (n / (n.std() + 1e-8)).astype(np.float32)


def _ramp(d: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a region at signed distance `d` px from its edge: a one-pixel ramp (box filter)."""
    return np.clip(0.5 + d, 0.0, 1.0)


def _iso(n: np.ndarray, level: float) -> np.ndarray:
    """Anti-aliased {n > level}: the signed distance is (n - level) / |grad n|."""
    if min(n.shape) < 2:  # a sliver at the frame's edge
        return (n > level).astype(np.float32)
    gy, gx = np.gradient(n)
    return _ramp((n - level) / (np.hypot(gx, gy) + 1e-4))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, 3) image, channel by channel."""
    return gaussian_filter(img, (sigma, sigma, 0))


def _mix(a: np.ndarray, b: np.ndarray | float, m: np.ndarray) -> np.ndarray:
    return a + (b - a) * m[..., None]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), float32, in the drawing's frame (pixel (0, 0) covers [0, 1) x [0, 1))."""
    return np.mgrid[0:h, 0:w].astype(np.float32) + 0.5


def _mask(h: int, w: int, draw: Callable[[ImageDraw.ImageDraw, float], None], ss: int = SS,
          box: tuple[int, int, int, int] | None = None, mode: str = "L",
          fill: int | tuple[int, int, int] = 0) -> tuple[tuple[slice, slice], np.ndarray]:
    """What `draw(d, s)` paints on a `mode` canvas filled with `fill` (coordinates in output pixels times `s`, offset
    to `box` (x0, y0, x1, y1)), drawn at `ss` x and box-averaged to [0, 1]; returns the slices of `box` and it."""
    x0, y0, x1, y1 = box or (0, 0, w, h)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), np.float32)
    im = Image.new(mode, ((x1 - x0) * ss, (y1 - y0) * ss), fill)
    draw(ImageDraw.Draw(im), ss)
    return (slice(y0, y1), slice(x0, x1)), np.asarray(im.reduce(ss), dtype=np.float32) / 255


def _polygon_mask(h: int, w: int, pts: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
    """Anti-aliased fill of polygon `pts` (N, 2) in (x, y) pixel coordinates, inside its bounding box."""
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    off = np.array([max(0, x0), max(0, y0)])
    flat = lambda d, s: d.polygon([tuple(p) for p in ((pts - off) * s).tolist()], fill=255)  # noqa: E731
    return _mask(h, w, flat, box=(x0, y0, x1, y1))


def _shape(rng: Rng, cx: float, cy: float, r: float) -> np.ndarray:
    """Outline (N, 2) of a random shape of radius about `r`: ellipse, polygon, star, rectangle or organic blob."""
    kind = _choose(rng, ("ellipse", "polygon", "star", "rect", "blob"), (0.25, 0.2, 0.05, 0.25, 0.25))
    if kind in ("ellipse", "blob"):
        n = int(min(max(r * 1.5, 12), 96))
        t = np.arange(n) * (2 * np.pi / n)
        rad = 1 + sum(rng.uniform(0, 0.35 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)) \
            if kind == "blob" else 1.0
    elif kind == "star":
        m = int(rng.integers(4, 9))
        t = np.arange(2 * m) * (np.pi / m)
        rad = np.where(np.arange(2 * m) % 2 == 0, 1.0, rng.uniform(0.35, 0.7))
    elif kind == "polygon":
        m = int(rng.integers(3, 9))
        t, rad = np.sort(rng.uniform(0, 2 * np.pi, m)), rng.uniform(0.7, 1.0, m)
    else:
        a = rng.uniform(0.2, 1.0)
        t, rad = np.arctan2([a, a, -a, -a], [1, -1, -1, 1]), np.hypot(1, a)
    aspect, angle = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    px, py = rad * np.cos(t) * r, rad * np.sin(t) * r * aspect
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * px - s * py, cy + s * px + c * py], 1)


def _power_radius(rng: Rng, lo: float, hi: float) -> float:
    """A radius with density ~ r^-3 on [lo, hi]: scale invariance, as in the dead-leaves model."""
    return (lo**-2 - rng.random() * (lo**-2 - hi**-2)) ** -0.5


# ---- fills and patterns -----------------------------------------------------------------------------------------

def _pattern(rng: Rng, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A texture in [0, 1] on pixel coordinates: stripes, checks, plaid, dots, bricks, rings, cells, grain or spots,
    often domain-warped; its edges ramp over a pixel."""
    kind = _choose(rng, ("stripes", "sine", "checks", "plaid", "dots", "bricks", "rings", "cells", "grain", "spots"))
    shape = yy.shape
    if kind == "grain":
        return np.clip(0.5 + 0.2 * _fractal(rng, shape, rng.uniform(0.3, 1.0)), 0, 1)
    if kind == "spots":
        return _iso(_fractal(rng, shape, rng.uniform(1.3, 2.2)), rng.uniform(-0.8, 0.8))
    if rng.random() < 0.5:  # domain warp: folds, grain, hand-made irregularity
        amp = rng.uniform(1, 10)
        yy = yy + amp * _fractal(rng, shape, 2.5)
        xx = xx + amp * _fractal(rng, shape, 2.5)
    theta = rng.uniform(0, np.pi)
    u = np.cos(theta) * xx + np.sin(theta) * yy
    v = -np.sin(theta) * xx + np.cos(theta) * yy
    f = rng.uniform(0.025, 0.25)  # cycles per pixel: periods 4..40 px

    def stripes(t: np.ndarray, freq: float, duty: float) -> np.ndarray:
        return _ramp((duty / 2 - np.abs(t - np.round(t))) / freq)

    if kind == "stripes":
        return stripes(u * f, f, rng.uniform(0.2, 0.8))
    if kind == "sine":
        f = rng.uniform(0.02, 0.4)
        return 0.5 + 0.5 * np.sin(2 * np.pi * f * u + rng.uniform(0, 2 * np.pi))
    if kind in ("checks", "plaid"):
        a, b = stripes(u * f, f, 0.5 if kind == "checks" else rng.uniform(0.1, 0.5)), stripes(v * f, f, 0.5)
        return a + b - 2 * a * b if kind == "checks" else (a + b) / 2
    if kind == "dots":  # square or hexagonal lattice
        col = np.round(u * f)
        t = v * f + 0.5 * rng.integers(0, 2) * col
        return _ramp((rng.uniform(0.15, 0.45) - np.hypot(u * f - col, t - np.round(t))) / f)
    if kind == "bricks":
        rows, f_cols = v * f, f * rng.uniform(0.3, 0.6)
        mortar = rng.uniform(0.04, 0.12)
        return stripes(rows + 0.5, f, 1 - mortar) * stripes(u * f_cols + 0.5 * np.floor(rows) + 0.5, f_cols, 1 - mortar)
    if kind == "rings":
        cy = yy.min() + rng.uniform(-0.5, 1.5) * (yy.max() - yy.min())
        cx = xx.min() + rng.uniform(-0.5, 1.5) * (xx.max() - xx.min())
        t = np.hypot(yy - cy, xx - cx) * f
        return stripes(t, f, rng.uniform(0.3, 0.7)) if rng.random() < 0.5 else 0.5 + 0.5 * np.sin(2 * np.pi * t)
    return _cells(rng, yy, xx, rng.uniform(8, 30))


def _cells(rng: Rng, yy: np.ndarray, xx: np.ndarray, size: float) -> np.ndarray:
    """Worley cells of about `size` px: a random shade per cell and dark anti-aliased borders (stones, tiles, mud)."""
    gy, gx = np.floor(yy / size).astype(int), np.floor(xx / size).astype(int)
    ny, nx = gy.max() - gy.min() + 3, gx.max() - gx.min() + 3
    jitter, shade = rng.random((ny, nx, 2)), rng.random((ny, nx))
    d1 = np.full(yy.shape, np.inf, np.float32)
    d2, val = d1.copy(), np.zeros(yy.shape, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            iy, ix = gy + dy - gy.min() + 1, gx + dx - gx.min() + 1
            py, px = (gy + dy + jitter[iy, ix, 0]) * size, (gx + dx + jitter[iy, ix, 1]) * size
            d = np.hypot(yy - py, xx - px)
            nearer = d < d1
            d2 = np.where(nearer, d1, np.minimum(d2, d))
            val = np.where(nearer, shade[iy, ix], val)
            d1 = np.where(nearer, d, d1)
    border = rng.uniform(0.5, 2.5)
    return (0.3 + 0.7 * val) * _ramp((d2 - d1) / 2 - border / 2)


def _fill(rng: Rng, pal: _Palette, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """The colour (h, w, 3) of a shape centred at (cx, cy), radius r: flat, a gradient, shaded like a solid lit from
    one side, or textured (then shaded too)."""
    kind = _choose(rng, ("flat", "gradient", "shaded", "textured"), (0.15, 0.15, 0.35, 0.35))
    c0, c1 = pal.pair(0.15)
    if kind == "flat":
        return np.broadcast_to(c0, (*yy.shape, 3))
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / (2 * r), 0, 1)
        return _mix(np.broadcast_to(c0, (*yy.shape, 3)), c1, t)
    if kind == "textured":
        p = _pattern(rng, yy, xx)
        base = _mix(np.broadcast_to(c0, (*yy.shape, 3)), c1, p * rng.uniform(0.2, 1.0))
    else:
        base = np.broadcast_to(c0, (*yy.shape, 3))
    a = rng.uniform(0, 2 * np.pi)  # light direction
    dx, dy = (xx - cx) / r, (yy - cy) / r
    dome = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1)) if rng.random() < 0.5 else 0.5
    light = 0.55 + 0.35 * (dx * np.cos(a) + dy * np.sin(a)) * rng.uniform(0.3, 1.0) + 0.4 * dome
    return base * np.clip(light, 0.2, 1.3)[..., None]


# ---- kinds ------------------------------------------------------------------------------------------------------

def _background(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """A full-frame backdrop: a 1/f fractal colour field, a gradient, or a flat tone with a little grain."""
    yy, xx = _grid(h, w)
    kind = _choose(rng, ("fractal", "gradient", "flat"), (0.5, 0.3, 0.2))
    c0, c1 = pal.colour(), pal.colour()
    if kind == "fractal":
        n = _fractal(rng, (h, w), rng.uniform(1.2, 2.2))
        return _mix(np.broadcast_to(c0, (h, w, 3)), c1, np.clip(0.5 + 0.25 * n, 0, 1))
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = ((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / max(h, w) + 0.5
        return _mix(np.broadcast_to(c0, (h, w, 3)), c1, np.clip(t, 0, 1))
    return np.clip(c0 + 0.02 * _fractal(rng, (h, w), 0.8)[..., None], 0, 1)


def _leaves(rng: Rng, pal: _Palette, img: np.ndarray, n: int, r_lo: float, r_hi: float,
            shadow: float = 0.0) -> np.ndarray:
    """Paint `n` shaded or textured occluding objects with power-law radii onto `img`, back to front, casting soft
    shadows of strength `shadow` away from one light."""
    h, w = img.shape[:2]
    img = np.array(img, dtype=np.float32)
    yy, xx = _grid(h, w)
    a = rng.uniform(0, 2 * np.pi)
    away = np.array([math.cos(a), math.sin(a)])
    for _ in range(n):
        r = _power_radius(rng, r_lo, r_hi)
        cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        pts = _shape(rng, cx, cy, r)
        if shadow > 0:
            (sy, sx), m = _polygon_mask(h, w, pts + away * min(r * 0.2, 6))
            if m.size:
                img[sy, sx] *= 1 - shadow * gaussian_filter(m, min(r * 0.08, 4) + 0.5)[..., None]
        (sy, sx), m = _polygon_mask(h, w, pts)
        if m.size:
            img[sy, sx] = _mix(img[sy, sx], _fill(rng, pal, yy[sy, sx], xx[sy, sx], cx, cy, r), m)
    return img


def _flat_leaves(rng: Rng, pal: _Palette, h: int, w: int, n: int, r_lo: float) -> np.ndarray:
    """Dead leaves: a few large shapes, then `n` with power-law radii from `r_lo`, flat colours (sometimes outlined),
    all drawn on one 4x canvas: occlusion comes free, and the sizes make the 1/f spectrum."""
    side = min(h, w)
    outline = rng.random() < 0.15

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        for k in range(n + 4):
            r = rng.uniform(0.3, 0.8) * side if k < 4 else _power_radius(rng, r_lo, 0.5 * side)
            pts = _shape(rng, rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h, r) * s
            colour = tuple(int(c) for c in np.round(pal.colour() * 255))
            edge = tuple(int(c) for c in np.round(pal.colour(0, 0.3) * 255)) if outline else None
            d.polygon([tuple(p) for p in pts.tolist()], fill=colour, outline=edge, width=int(s))

    bg = tuple(int(c) for c in np.round(pal.colour() * 255))
    return _mask(h, w, draw, mode="RGB", fill=bg)[1]


def _shapes(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """Flat graphics: dead leaves down to 2 px on a flat background."""
    return _flat_leaves(rng, pal, h, w, int(rng.integers(60, 160)), 2.0)


def _gradient(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """A sky-like smooth field (multi-stop gradient plus faint low-frequency variation) over a silhouette (hills or a
    skyline), with soft out-of-focus discs: mostly smooth, with a few clean edges."""
    yy, xx = _grid(h, w)
    a = rng.uniform(-0.6, 0.6) + np.pi / 2 * (rng.random() < 0.8)
    t = np.clip(((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / max(h, w) * rng.uniform(0.8, 1.6) + 0.5, 0, 1)
    stops = np.stack([pal.colour(0.4, 0.97) for _ in range(3)])
    img = np.where((t < 0.5)[..., None], _mix(stops[0], stops[1], 2 * t), _mix(stops[1], stops[2], 2 * t - 1))
    img = img * (1 + 0.04 * _fractal(rng, (h, w), 2.5))[..., None]
    for _ in range(rng.integers(0, 6)):  # bokeh
        r = rng.uniform(0.03, 0.15) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        disc = gaussian_filter(_ramp(r - np.hypot(xx - cx, yy - cy)), rng.uniform(0.5, 3))
        img = _mix(img, pal.colour(0.5, 1.0), disc * rng.uniform(0.2, 0.6))
    if rng.random() < 0.6:  # hills: a 1/f horizon profile
        prof = np.cumsum(rng.standard_normal(w)) * rng.uniform(0.2, 1.0)
        prof = h * rng.uniform(0.45, 0.85) + (prof - prof.mean())
        img = _mix(img, pal.colour(0.02, 0.3), _ramp(yy - prof[None, :]))
    else:  # skyline: buildings at fractional positions, some with pitched roofs
        base = h * rng.uniform(0.6, 0.9)

        def draw(d: ImageDraw.ImageDraw, s: float) -> None:
            x = -rng.uniform(0, 10)
            while x < w:
                bw, top = rng.uniform(0.05, 0.2) * w, base - rng.uniform(0.05, 0.45) * h
                roof = top - rng.uniform(0, 0.5) * bw * (rng.random() < 0.3)
                pts = [(x, h + 1), (x, top), (x + bw / 2, roof), (x + bw, top), (x + bw, h + 1)]
                d.polygon([(px * s, py * s) for px, py in pts], fill=255)
                x += bw

        img = _mix(img, pal.colour(0.02, 0.3), np.maximum(_mask(h, w, draw)[1], _ramp(yy - base)))
    return img


def _texture(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """A full frame of fine texture (fabric, bricks, cells, grain...), or a mosaic of 2-4 textured regions, under
    uneven light."""
    yy, xx = _grid(h, w)

    def textured() -> np.ndarray:
        c0, c1 = pal.pair()
        return _mix(np.broadcast_to(c0, (h, w, 3)), c1, _pattern(rng, yy, xx))

    img = textured()
    if rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            region = _iso(_fractal(rng, (h, w), rng.uniform(1.8, 2.5)), rng.uniform(-0.5, 0.8))
            img = _mix(img, textured(), region)
    if rng.random() < 0.5:  # a second, finer layer of detail
        img = img * (1 + 0.1 * _fractal(rng, (h, w), rng.uniform(0.5, 1.0)))[..., None]
    return img * (1 + 0.15 * _fractal(rng, (h, w), 2.5))[..., None]


def _fractal_kind(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """A 1/f height field seen as clouds, terrain (colour ramp and hill shading), ridges, or regions with sharp
    coastlines and terraces."""
    n = _fractal(rng, (h, w), rng.uniform(0.9, 1.8))
    if rng.random() < 0.3:  # ridged
        n = 1 - 2 * np.abs(np.tanh(0.6 * n))
    lo, hi = pal.pair(0.3)
    stops = np.stack([lo, pal.colour(), pal.colour(), hi])
    t = np.clip(0.5 + 0.22 * n, 0, 1) * 3
    i = np.minimum(t.astype(int), 2)
    img = _mix(stops[i], stops[i + 1], t - i)
    style = _choose(rng, ("plain", "shaded", "coast", "terraces"))
    if style == "shaded":
        gy, gx = np.gradient(n * rng.uniform(3, 12))
        a = rng.uniform(0, 2 * np.pi)
        img = img * np.clip(1 + 0.5 * (gx * np.cos(a) + gy * np.sin(a)) / np.sqrt(1 + gx**2 + gy**2), 0.3, 1.5)[
            ..., None]
    elif style == "coast":
        img = _mix(img, pal.colour() * (1 + 0.1 * n[..., None]), _iso(n, rng.uniform(-0.6, 0.6)))
    elif style == "terraces":
        for level in np.sort(rng.uniform(-1.5, 1.5, rng.integers(2, 6))):
            img = _mix(img, pal.colour(), _iso(n, level) * rng.uniform(0.3, 1.0))
    return img


_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"  # English letter frequencies (%), then space, digits, punctuation
_LETTER_P = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0,
                      1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1])
_PUNCT = ".,:;!?-'\"()/&%$#@+="
_CHARS = np.array(list(_LETTERS + " 0123456789" + _PUNCT))
_CHAR_P = np.concatenate([0.76 * _LETTER_P / _LETTER_P.sum(), [0.17], np.full(10, 0.05 / 10),
                          np.full(len(_PUNCT), 0.02 / len(_PUNCT))])


def _words(rng: Rng, n_chars: int) -> str:
    """`n_chars` characters of pseudo-English: letter frequencies, words, capitals or all caps, digits, punctuation."""
    c = _CHARS[rng.choice(len(_CHARS), n_chars, p=_CHAR_P)]
    if rng.random() < 0.15:
        c = np.char.upper(c)
    else:
        cap = np.r_[True, c[:-1] == " "] & (rng.random(n_chars) < 0.25)
        c[cap] = np.char.upper(c[cap])
    return "".join(c).strip() or "a"


@lru_cache(maxsize=256)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _text_mask(rng: Rng, h: int, w: int, box: tuple[float, float, float, float], px: float) -> np.ndarray:
    """Coverage (h, w) of lines of text at font size `px` (output pixels) filling `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    font = _font(max(4, round(px * TEXT_SS)))
    stroke = int(rng.random() < 0.2) * max(1, round(px * TEXT_SS / 16))
    step = px * rng.uniform(1.1, 1.6)
    angle = rng.normal(0, 4) if rng.random() < 0.4 else 0.0

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        y = y0
        while y < min(y1, h):
            line = _words(rng, max(1, int((x1 - x0) / (0.55 * px))))
            d.text((x0 * s, y * s), line, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
            y += step

    _, m = _mask(h, w, draw, ss=TEXT_SS)
    if angle:
        m = np.asarray(Image.fromarray(m).rotate(angle, Image.BILINEAR, center=((x0 + x1) / 2, (y0 + y1) / 2)))
    return m


def _text(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """A page, a screen or signs: blocks of text at random sizes (7 px up) and colours over a textured backdrop."""
    img = _background(rng, pal, h, w)
    dark_on_light = rng.random() < 0.7
    if dark_on_light and rng.random() < 0.6:  # paper
        img = np.clip(pal.colour(0.8, 1.0) + 0.03 * _fractal(rng, (h, w), 1.0)[..., None], 0, 1)
    side = min(h, w)
    for _ in range(rng.integers(1, 5)):
        px = float(np.exp(rng.uniform(np.log(7), np.log(max(8, min(48, 0.4 * side))))))
        bx0, by0 = rng.uniform(-0.1, 0.7) * w, rng.uniform(-0.1, 0.8) * h
        box = (bx0, by0, bx0 + rng.uniform(0.3, 1.0) * w, by0 + rng.uniform(px * 1.2, 0.8 * h))
        if rng.random() < 0.3:  # a sign plate behind the text
            plate = np.array([[box[0] - 2, box[1] - 2], [box[2] + 2, box[1] - 2], [box[2] + 2, box[3] + 2],
                              [box[0] - 2, box[3] + 2]], dtype=np.float32)
            (sy, sx), m = _polygon_mask(h, w, plate)
            img[sy, sx] = _mix(img[sy, sx], pal.colour(0.6, 1.0) if dark_on_light else pal.colour(0, 0.3), m)
        ink = pal.colour(0.0, 0.3) if dark_on_light else pal.colour(0.7, 1.0)
        img = _mix(img, ink, _text_mask(rng, h, w, box, px))
    return img


def _curve(rng: Rng, h: int, w: int, n: int = 24) -> np.ndarray:
    """Points (n, 2) on a random cubic Bezier curve across the frame."""
    p = rng.uniform(-0.2, 1.2, (4, 2)) * np.array([w, h])
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def _strokes(rng: Rng, h: int, w: int, n: int, width: tuple[float, float]) -> np.ndarray:
    """Coverage (h, w) of `n` thin strokes: lines, curves, circles, polylines and hatching, widths in px."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        for _ in range(n):
            lw = max(1, round(rng.uniform(*width) * s))
            kind = _choose(rng, ("line", "curve", "circle", "polyline", "hatch"), (0.3, 0.25, 0.2, 0.15, 0.1))
            if kind == "line":
                pts = rng.uniform(-0.1, 1.1, (2, 2)) * np.array([w, h])
            elif kind == "curve":
                pts = _curve(rng, h, w)
            elif kind == "circle":
                r = _power_radius(rng, 2, 0.5 * min(h, w))
                pts = _shape(rng, rng.uniform(0, w), rng.uniform(0, h), r)
                pts = np.concatenate([pts, pts[:1]])
            elif kind == "polyline":
                pts = np.cumsum(rng.normal(0, 0.15, (int(rng.integers(3, 8)), 2)), 0) * np.array([w, h])
                pts += rng.uniform(0, 1, 2) * np.array([w, h])
            else:
                a, gap, c = rng.uniform(0, np.pi), rng.uniform(2.5, 8), rng.uniform(0, 1, 2) * np.array([w, h])
                half = np.array([np.cos(a), np.sin(a)]) * rng.uniform(0.1, 0.4) * min(h, w)
                step = np.array([-np.sin(a), np.cos(a)]) * gap
                for k in range(int(rng.integers(3, 12))):
                    seg = np.stack([c - half + k * step, c + half + k * step]) * s
                    d.line([tuple(p) for p in seg.tolist()], fill=255, width=lw)
                continue
            d.line([tuple(p) for p in (pts * s).tolist()], fill=255, width=lw, joint="curve")

    return _mask(h, w, draw)[1]


def _lineart(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """Drawings and diagrams: thin lines, curves, circles and hatching in one to three inks on paper or a board."""
    light = rng.random() < 0.7
    img = np.clip(pal.colour(0.75, 1.0) if light else pal.colour(0.0, 0.3), 0, 1)
    img = np.clip(img + 0.02 * _fractal(rng, (h, w), 1.2)[..., None], 0, 1)
    if rng.random() < 0.25:  # graph paper
        yy, xx = _grid(h, w)
        f = 1 / rng.uniform(5, 16)
        grid = np.maximum(_ramp(0.4 - np.abs(xx * f - np.round(xx * f)) / f),
                          _ramp(0.4 - np.abs(yy * f - np.round(yy * f)) / f))
        img = _mix(img, pal.colour(0.3, 0.8), 0.5 * grid)
    for _ in range(rng.integers(1, 4)):
        ink = pal.colour(0.0, 0.35) if light else pal.colour(0.7, 1.0)
        img = _mix(img, ink, _strokes(rng, h, w, int(rng.integers(5, 30)), (0.4, 3.0)))
    return img


def _composite(rng: Rng, pal: _Palette, h: int, w: int) -> np.ndarray:
    """A photo-like scene: a backdrop (often out of focus), occluding shaded and textured objects with shadows, thin
    structures, sometimes text; then uneven light, a colour cast and sometimes lens softness."""
    side = min(h, w)
    back = _choose(rng, ("background", "texture", "fractal", "gradient", "leaves"), (0.3, 0.2, 0.2, 0.1, 0.2))
    if back == "leaves":
        img = _flat_leaves(rng, pal, h, w, int(rng.integers(20, 80)), 3.0)
    else:
        img = {"background": _background, "texture": _texture, "fractal": _fractal_kind,
               "gradient": _gradient}[back](rng, pal, h, w)
    if rng.random() < 0.4:  # depth of field
        img = _blur(img, rng.uniform(0.8, 4.0))
    img = _leaves(rng, pal, img, int(rng.integers(4, 20)), side * 0.04, side * rng.uniform(0.3, 0.7),
                  shadow=rng.uniform(0.2, 0.6) * (rng.random() < 0.5))
    if rng.random() < 0.4:  # wires, twigs, cracks
        img = _mix(img, pal.colour(0.0, 0.5), _strokes(rng, h, w, int(rng.integers(1, 8)), (0.4, 2.5)))
    if rng.random() < 0.3:  # lettering on the scene
        px = float(np.exp(rng.uniform(np.log(7), np.log(max(8, min(32, 0.3 * side))))))
        x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.8) * h
        box = (x0, y0, x0 + rng.uniform(0.3, 0.8) * w, y0 + rng.uniform(1.2 * px, 0.4 * h))
        img = _mix(img, pal.colour(0.0, 1.0), _text_mask(rng, h, w, box, px))
    if rng.random() < 0.3:  # an out-of-focus foreground occluder at a border
        cx, cy = (rng.integers(0, 2) * w, rng.uniform(0, h)) if rng.random() < 0.5 else (rng.uniform(0, w),
                                                                                         rng.integers(0, 2) * h)
        (sy, sx), m = _polygon_mask(h, w, _shape(rng, cx, cy, side * rng.uniform(0.2, 0.5)))
        fg = np.zeros((h, w), np.float32)
        fg[sy, sx] = m
        img = _mix(img, pal.colour(), gaussian_filter(fg, rng.uniform(1.5, 4)))
    img = img * (1 + 0.2 * _fractal(rng, (h, w), 2.8))[..., None] * rng.uniform(0.9, 1.1, 3)  # light, cast
    if rng.random() < 0.3:  # lens softness
        img = _blur(img, rng.uniform(0.3, 0.7))
    return img


_RENDER = {"shapes": _shapes, "gradient": _gradient, "texture": _texture, "fractal": _fractal_kind, "text": _text,
           "lineart": _lineart, "composite": _composite}


def _kind_of(seed: int) -> str:
    return str(np.random.default_rng(seed).choice(KINDS, p=KIND_PROBS))


def procedural_image(seed: int, size: tuple[int, int] = (128, 128), kind: str | None = None) -> np.ndarray:
    """A seeded procedural image (H, W, 3) float32 in [0, 1], the same for the same (seed, size, kind) on every run;
    `kind=None` draws the kind from the seed (composites most often)."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; expected one of {KINDS} or None")
    h, w = (int(s) for s in size)
    if min(h, w) < 8:
        raise InputError(f"image size must be at least 8 x 8, got {size}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    kind = kind or _kind_of(seed)
    rng = np.random.default_rng([KINDS.index(kind), seed])
    img = _RENDER[kind](rng, _Palette(rng), h, w)
    if rng.random() < 0.5:  # tone curve
        img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    return np.ascontiguousarray(np.clip(img, 0, 1), dtype=np.float32)


# ---- photos and splits ------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    a = getattr(skdata, name)().astype(np.float32) / 255
    a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    a.setflags(write=False)
    return a


def photo(name: str) -> np.ndarray:
    """A real photo from scikit-image's wheel as float32 (H, W, 3) in [0, 1] (grey ones replicated to 3 channels)."""
    if name not in TRAIN_PHOTOS + EVAL_PHOTOS:
        raise InputError(f"unknown photo {name!r}; expected one of {TRAIN_PHOTOS + EVAL_PHOTOS}")
    return _photo(name).copy()


def split_seed(split: str, i: int) -> int:
    """The seed of image `i` of `split`: train, val and test seeds lie in disjoint ranges of 10 million."""
    return splits.split_seed(SPLIT_OFFSETS, SPLIT_SIZE, split, i, "image")


def eval_images(split: str, n: int, size: tuple[int, int] = (128, 128)) -> list[tuple[str, np.ndarray]]:
    """The first `n` procedural images of `split`, named like "test-composite-0003"."""
    out = []
    for i in range(n):
        seed = split_seed(split, i)
        kind = _kind_of(seed)
        out.append((f"{split}-{kind}-{i:04d}", procedural_image(seed, size, kind)))
    return out


def ood_images(size: tuple[int, int] | None = None) -> list[tuple[str, np.ndarray]]:
    """The out-of-distribution set: EVAL_PHOTOS center-cropped to `size` (H, W), else to their full size rounded down
    to multiples of 4 (so that x2 and x4 divide)."""
    out = []
    for name in EVAL_PHOTOS:
        a = _photo(name)
        h, w = a.shape[:2]
        ch, cw = (h // 4 * 4, w // 4 * 4) if size is None else (int(size[0]), int(size[1]))
        if ch % 4 or cw % 4 or not (0 < ch <= h and 0 < cw <= w):
            raise InputError(f"crop size must be divisible by 4 and fit in {name} ({h} x {w}), got {size}")
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        out.append((name, a[y0:y0 + ch, x0:x0 + cw].copy()))
    return out


# ---- training batches -------------------------------------------------------------------------------------------

def _photo_crop(rng: Rng, hr_size: int) -> np.ndarray:
    """A random crop of a TRAIN_PHOTO: scaled by a factor in [0.5, 1], flipped and rotated by multiples of 90 deg."""
    a = _photo(_choose(rng, TRAIN_PHOTOS))
    h, w = a.shape[:2]
    m = min(math.ceil(hr_size / rng.uniform(0.5, 1.0)), h, w)  # crop m px, scale to hr_size
    y0, x0 = rng.integers(0, h - m + 1), rng.integers(0, w - m + 1)
    crop = torch.from_numpy(np.ascontiguousarray(a[y0:y0 + m, x0:x0 + m])).permute(2, 0, 1)[None]
    crop = resize(crop, (hr_size, hr_size), "bicubic")[0].permute(1, 2, 0).clamp(0, 1).numpy()
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.rot90(crop, int(rng.integers(0, 4)))


def training_batch(seed: int, batch: int, hr_size: int, scale: int, degradation: str,
                   photo_prob: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """`(lr, hr)` float32 batches (B, 3, hr_size / scale, ...) and (B, 3, hr_size, hr_size), a function of `seed`:
    HR from train-seed procedural images, or (with `photo_prob`) augmented crops of TRAIN_PHOTOS; LR by `degradation`
    (a DEGRADATIONS kind with scale 2 / 4, or a restoration TASK with scale 1)."""
    check_degradation(scale, degradation)
    if hr_size < 8 or hr_size % scale:
        raise InputError(f"hr_size must be >= 8 and divisible by the scale {scale}, got {hr_size}")
    if hr_size > min(_photo(p).shape[0] for p in TRAIN_PHOTOS):
        raise InputError(f"hr_size must be <= 512 (the training photos' size), got {hr_size}")
    if batch < 1 or not 0 <= photo_prob <= 1:
        raise InputError(f"expected batch >= 1 and photo_prob in [0, 1], got {batch}, {photo_prob}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, 1])
    hr = []
    for b in range(batch):
        if rng.random() < photo_prob:
            hr.append(_photo_crop(rng, hr_size))
        else:
            hr.append(procedural_image(split_seed("train", (seed * batch + b) % SPLIT_SIZE), (hr_size, hr_size)))
    hr_t = torch.from_numpy(np.stack(hr)).permute(0, 3, 1, 2).contiguous()
    lr = degrade(hr_t, scale, degradation, torch.Generator().manual_seed(int(rng.integers(2**62))))
    return lr.float(), hr_t
