"""The vision3d networks: `PointDiT` (DiT-3D, shapes), `PointNetDiffusion` (the same-budget point baseline) and
`RangeDiT` (LiDAR range images).

PointDiT follows DiT-3D on core's transformer (`ditlab.core.models.dit.DiT`, 3D tokens): the noisy points are
voxelised (centred, scaled into [0, r-1], features averaged per voxel), patchified into (r/p)^3 tokens with 3D
sin-cos positions, run through adaLN-Zero blocks (window attention in all but every 4th block), unpatchified to a
feature volume and devoxelised trilinearly back to the points; a small point-wise head, zero-initialised, reads
those features with each point's own coordinates and predicts its velocity. Voxelisation and devoxelisation are
pure torch (`voxelise`, `devoxelise`: scatter-add and `grid_sample`), no CUDA extension.

RangeDiT is core's DiT on 2D tokens of a range image (depth and intensity channels, LiDM's projection,
`ditlab.vision3d.io`), conditioned on a known part of the image (its values and a mask, as extra input channels):
all-unknown is unconditional generation, a masked sector is completion, every 4th beam known is 16 -> 64 beam
densification. Azimuth wraps around: the token positions along azimuth are periodic (sin-cos of whole turns),
so the first and last columns are neighbours, and training rolls scans by random azimuths. Attention is windowed
(4 x 16 tokens) in all blocks but every 4th, which attends globally: most of the cost of 1024 tokens saved.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ditlab.core.errors import InputError
from ditlab.core.models.dit import DiT, DiTConfig, TimestepEmbedder
from ditlab.core.models.positions import sincos_table

# ----------------------------------------------------------------------------------------------
# Voxels <-> points
# ----------------------------------------------------------------------------------------------


def _check_points(x: torch.Tensor) -> None:
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[1] < 1:
        raise InputError(f"expected point clouds (B, N, 3) with N >= 1, got shape {tuple(x.shape)}")


def batch_times(timestep: torch.Tensor | float, b: int, device) -> torch.Tensor:
    """(b,) float32 timesteps of a batch: one per sample, or a scalar given to all of them."""
    t = torch.as_tensor(timestep, device=device, dtype=torch.float32)
    return t.expand(b) if t.ndim == 0 else t


def grid_coords(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Continuous voxel coordinates in [0, r-1] of points (B, N, 3): each cloud centred on its mean and scaled by
    twice its largest distance from it (PVCNN / DiT-3D's normalisation, so noisy clouds at any step fill the
    grid)."""
    _check_points(x)
    xc = x - x.mean(1, keepdim=True)
    scale = 2 * xc.norm(dim=-1).amax(1).clamp_min(1e-6)  # (B,)
    return ((xc / scale[:, None, None] + 0.5).clamp(0, 1) * (resolution - 1)).float()


def voxelise(features: torch.Tensor, coords: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-point features (B, N, C) into the voxels (nearest voxel centre) of a grid of side
    `resolution`: (B, C, r, r, r) means and (B, 1, r, r, r) point counts."""
    b, n, c = features.shape
    r = resolution
    idx = coords.round().long().clamp(0, r - 1)
    flat = (idx[..., 0] * r + idx[..., 1]) * r + idx[..., 2]  # (B, N)
    sums = features.new_zeros(b, c, r**3).scatter_add_(2, flat[:, None].expand(-1, c, -1), features.transpose(1, 2))
    counts = features.new_zeros(b, 1, r**3).scatter_add_(2, flat[:, None], features.new_ones(b, 1, n))
    return (sums / counts.clamp_min(1)).view(b, c, r, r, r), counts.view(b, 1, r, r, r)


def devoxelise(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of a feature volume (B, C, r, r, r) at continuous voxel coordinates (B, N, 3) in
    [0, r-1] (voxel centres at integers): (B, N, C)."""
    r = volume.shape[-1]
    g = coords / (r - 1) * 2 - 1  # align_corners=True: -1 and 1 are the centres of the first and last voxels
    grid = g.flip(-1)[:, :, None, None, :].to(volume.dtype)  # grid_sample wants (x, y, z) = (axis 2, 1, 0)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, :, 0, 0].transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# DiT-3D
# ----------------------------------------------------------------------------------------------


class PointHead(nn.Module):
    """Point-wise MLP: devoxelised features and the point's coordinates -> its prediction, with the timestep as
    a scale and shift (FiLM) of the hidden layer; the output layer is zero-initialised."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int = 3):
        super().__init__()
        self.t_embedder = TimestepEmbedder(hidden)
        self.fc1, self.fc2, self.out = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out_dim)
        self.film = nn.Linear(hidden, 2 * hidden)
        for lin in (self.film, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, t: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        scale, shift = self.film(F.silu(self.t_embedder(t))).chunk(2, dim=-1)  # (B, hidden) each
        if extra is not None:
            scale, shift = scale + extra[0], shift + extra[1]
        h = F.silu(self.fc1(h))
        h = F.silu(self.fc2(h * (1 + scale[:, None]) + shift[:, None]))
        return self.out(h)


class PointDiT(ModelMixin, ConfigMixin):
    """v = PointDiT(x_t, t, class_labels): the velocity of every point of noisy clouds (B, N, 3). `num_classes`
    labels plus the null label `num_classes` (classifier-free guidance; dropped with `class_dropout_prob` in
    training). The config also keeps how the network's data were scaled (`data_scale`: canonical coordinates times
    this) and the sampling settings chosen on validation shapes (`sample_steps`, `guidance_scale`)."""

    @register_to_config
    def __init__(self, resolution: int = 32, patch_size: int = 4, hidden_size: int = 144, depth: int = 6,
                 num_heads: int = 4, window_size: int = 4, num_classes: int = 5, class_dropout_prob: float = 0.1,
                 voxel_channels: int = 32, head_hidden: int = 128, data_scale: float = 4.0, sample_steps: int = 32,
                 guidance_scale: float = 1.0, classes: tuple[str, ...] = ()):
        super().__init__()
        if resolution % patch_size:
            raise InputError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
        self.cfg = DiTConfig(token_kind="3d", in_channels=7, out_channels=voxel_channels, patch_size=patch_size,
                             input_size=[resolution] * 3, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                             num_classes=num_classes, class_dropout_prob=class_dropout_prob,
                             window_size=window_size if (resolution // patch_size) > window_size else 0)
        self.resolution = resolution
        self.dit = DiT(**asdict(self.cfg))
        self.head = PointHead(voxel_channels + 3, head_hidden)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        _check_points(x)
        r = self.resolution
        coords = grid_coords(x, r)
        feats = torch.cat([coords / (r - 1) * 2 - 1, x], dim=-1).float()  # normalised and raw coordinates
        vox, counts = voxelise(feats, coords, r)
        vox = torch.cat([vox, (counts > 0).to(vox.dtype)], dim=1)  # (B, 7, r, r, r)
        volume = self.dit(vox.to(self.dtype), timestep, class_labels=class_labels)  # (B, C, r, r, r)
        h = torch.cat([devoxelise(volume, coords), x.to(volume.dtype)], dim=-1)
        return self.head(h, batch_times(timestep, x.shape[0], x.device))


# ----------------------------------------------------------------------------------------------
# The PointNet baseline
# ----------------------------------------------------------------------------------------------


class PointNetDiffusion(ModelMixin, ConfigMixin):
    """The baseline: a PointNet-style point diffusion network (shared per-point MLPs, a max-pooled global feature
    joined back to every point, timestep and class as scale-and-shift), the same interface as `PointDiT`;
    `width` sets its size (matched to PointDiT's parameter count for the benchmark)."""

    @register_to_config
    def __init__(self, width: int = 256, num_classes: int = 5, class_dropout_prob: float = 0.1,
                 data_scale: float = 4.0, sample_steps: int = 32, guidance_scale: float = 1.0,
                 classes: tuple[str, ...] = ()):
        super().__init__()
        w = width
        self.num_classes, self.dropout = num_classes, class_dropout_prob
        self.t_embedder = TimestepEmbedder(w)
        self.y_embedder = nn.Embedding(num_classes + 1, w) if num_classes else None
        self.local = nn.ModuleList([nn.Linear(3, w // 2), nn.Linear(w // 2, w)])
        self.local_film = nn.Linear(w, 2 * (w // 2 + w))
        self.glob = nn.Sequential(nn.Linear(w, 2 * w), nn.SiLU(), nn.Linear(2 * w, 2 * w))
        self.head = PointHead(w + 2 * w + 3, 2 * w)
        self.head_cond = nn.Linear(w, 4 * w)
        for lin in (self.local_film, self.head_cond):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        _check_points(x)
        b = x.shape[0]
        t = batch_times(timestep, b, x.device)
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            labels = _labels(class_labels, b, self.num_classes, x.device)
            if self.training and self.dropout > 0:
                labels = torch.where(torch.rand(b, device=x.device) < self.dropout, self.num_classes, labels)
            c = c + self.y_embedder(labels)
        c = F.silu(c)
        film = self.local_film(c)
        h = x.to(c.dtype)
        off = 0
        for lin in self.local:
            n = lin.out_features
            scale, shift = film[:, off:off + n], film[:, off + n:off + 2 * n]
            off += 2 * n
            h = F.silu(lin(h) * (1 + scale[:, None]) + shift[:, None])
        g = self.glob(h.amax(1))  # (B, 2w): the global shape feature
        hh = torch.cat([h, g[:, None].expand(-1, x.shape[1], -1), x.to(h.dtype)], dim=-1)
        return self.head(hh, t, self.head_cond(c).chunk(2, dim=-1))


def _labels(labels, b: int, num_classes: int, device) -> torch.Tensor:
    if labels is None:
        return torch.full((b,), num_classes, device=device, dtype=torch.long)
    labels = torch.as_tensor(labels, device=device).long()
    if labels.shape != (b,) or labels.min() < 0 or labels.max() > num_classes:
        raise InputError(f"class_labels must be ({b},) values in [0, {num_classes}], got {labels.tolist()}")
    return labels


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_pointnet(target: int, **config) -> PointNetDiffusion:
    """The PointNet baseline whose parameter count is closest to `target` (widths in steps of 8)."""
    with torch.device("meta"):  # counted without allocating or initialising weights
        best = min(range(64, 1025, 8), key=lambda w: abs(n_params(PointNetDiffusion(width=w, **config)) - target))
    return PointNetDiffusion(width=best, **config)


# ----------------------------------------------------------------------------------------------
# Range images
# ----------------------------------------------------------------------------------------------


def periodic_table(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """(gh * gw, dim) positions: sin-cos of the row (half the channels) and sin-cos of whole turns of the column
    (the other half: integer frequencies, geometrically spaced up to gw / 2, then the remaining integers), so
    column 0 and column gw - 1 are as close as any two neighbours."""
    gh, gw = grid
    rows = sincos_table(dim // 2, (gh,))  # (gh, dim/2)
    n = dim // 4
    k = [int(v) for v in np.unique(np.round(np.geomspace(1, max(gw / 2, 1), n)))]
    k += [v for v in range(1, max(gw, 2)) if v not in k]  # then the other whole frequencies: still periodic
    k = torch.tensor((k * (n // len(k) + 1))[:n]).float()
    angle = 2 * math.pi * torch.arange(gw).float()[:, None] * k[None] / gw  # (gw, dim/4)
    cols = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)  # (gw, dim/2)
    return torch.cat([rows[:, None].expand(-1, gw, -1), cols[None].expand(gh, -1, -1)], dim=-1).reshape(gh * gw, dim)


class _PeriodicDiT(DiT):
    """Core's DiT with azimuth-periodic positions added to its 2D tokens (configured with pos_embed='none')."""

    def embed_tokens(self, x):
        tokens, grid, rope = super().embed_tokens(x)
        return tokens + periodic_table(self.cfg.hidden_size, grid).to(tokens.device, tokens.dtype), grid, rope


class PixelHead(nn.Module):
    """A full-resolution correction of the transformer's velocity: convolutions over [its velocity, x_t, the known
    values, the mask] (7 channels), the timestep as a scale and shift (FiLM) of the hidden features, circular in
    azimuth, the output layer zero-initialised (a new head leaves the network's output unchanged). The transformer
    sees 4 x 16-pixel tokens; this head sees every pixel and its neighbours (9 x 9 pixels), which is what copying
    a known beam into the rows next to it, and fine detail, need."""

    def __init__(self, hidden: int):
        super().__init__()
        self.t_embedder = TimestepEmbedder(hidden)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.conv1, self.conv2 = nn.Conv2d(7, hidden, 5), nn.Conv2d(hidden, hidden, 3)
        self.out = nn.Conv2d(hidden, 2, 3)
        for layer in (self.film, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def _pad(x: torch.Tensor, k: int) -> torch.Tensor:
        """Pad for a k x k convolution: around the azimuth circle along W, with zeros along the beams."""
        return F.pad(F.pad(x, (k // 2, k // 2, 0, 0), mode="circular"), (0, 0, k // 2, k // 2))

    def forward(self, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(F.silu(self.t_embedder(t))).chunk(2, dim=-1)  # (B, hidden) each
        h = F.silu(self.conv1(self._pad(inputs, 5)))
        h = self.conv2(self._pad(h, 3)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.out(self._pad(F.silu(h), 3))  # (B, 2, H, W)


class RangeDiT(ModelMixin, ConfigMixin):
    """v = RangeDiT(x_t, t, known, known_mask): the velocity of a noisy range image x_t (B, 2, H, W) (channels:
    log-scaled depth and intensity, `ditlab.vision3d.io.log_depth`), given the known pixels' values `known`
    (B, 2, H, W) and `known_mask` (B, 1, H, W) (1 = known; all zeros: unconditional). `pixel_head` > 0 adds a
    `PixelHead` of that many channels after the transformer (0: none, the first shipped network). The config keeps
    the sensor geometry it was trained on and the validated number of sampling steps."""

    @register_to_config
    def __init__(self, beams: int = 64, width: int = 1024, patch_size: tuple[int, int] = (4, 16),
                 hidden_size: int = 144, depth: int = 6, num_heads: int = 4,
                 window_size: tuple[int, int] = (4, 16), fov_up: float = 3.0,
                 fov_down: float = -25.0, min_depth: float = 1.0, max_depth: float = 56.0, sample_steps: int = 32,
                 pixel_head: int = 0):
        super().__init__()
        if beams % patch_size[0] or width % patch_size[1]:
            raise InputError(f"a {beams} x {width} range image is not divisible into patches {tuple(patch_size)}")
        self.cfg = DiTConfig(token_kind="2d", in_channels=5, out_channels=2, patch_size=list(patch_size),
                             input_size=[beams, width], hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                             pos_embed="none", window_size=list(window_size))
        self.shape = (beams, width)
        self.dit = _PeriodicDiT(**asdict(self.cfg))
        self.head = PixelHead(pixel_head) if pixel_head else None

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, known: torch.Tensor | None = None,
                known_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if x.ndim != 4 or tuple(x.shape[1:]) != (2, *self.shape):
            raise InputError(f"expected range images (B, 2, {self.shape[0]}, {self.shape[1]}), got {tuple(x.shape)}")
        if known is None:
            known, known_mask = torch.zeros_like(x), x.new_zeros(b, 1, *self.shape)
        if known.shape != x.shape or known_mask is None or tuple(known_mask.shape) != (b, 1, *self.shape):
            raise InputError(f"known must be {tuple(x.shape)} and known_mask (B, 1, H, W), got "
                             f"{tuple(known.shape)} and {None if known_mask is None else tuple(known_mask.shape)}")
        m = known_mask.to(x.dtype)
        inputs = torch.cat([x, known.to(x.dtype) * m, m], dim=1).to(self.dtype)  # (B, 5, H, W)
        v = self.dit(inputs, timestep)
        if self.head is None:
            return v
        return v + self.head(torch.cat([v.to(inputs.dtype), inputs], dim=1), batch_times(timestep, b, x.device))
