"""The imaging networks: `SRDiT`, the diffusion transformer of super-resolution (x2, x4) and restoration (x1), and
`EDSR`, the convolutional baseline trained on the same data for the same CPU time.

SRDiT follows DiT4SR's two ideas on core's transformer pieces (`ditlab.core.models.dit.Stream`, adaLN-Zero):
- the low-resolution (LR) image is a second token stream on the same token grid as the noisy high-resolution (HR)
  state, and the HR tokens attend jointly to both streams in every block;
- a zero-initialised depthwise 3 x 3 convolution carries the LR stream's MLP hidden state into the HR stream's
  MLP hidden state, block by block.
One difference, for speed on a CPU: the LR tokens attend to themselves only (not to the HR tokens), so the LR
stream does not depend on the noisy state or the timestep. It is computed once per image tile (`encode_lr`) and
reused at every sampling step. Tokens live on the LR grid (`patch_size` LR pixels per token side); the HR state
enters through a pixel-unshuffle by the scale and a convolutional stem, and leaves through a convolutional head
and a pixel-shuffle, added to the bicubic upsampling of the LR image: the network starts as bicubic (head
zero-initialised) and learns the residual. It predicts the clean image x0 (the residual-shift path of
`ditlab.imaging.superres`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ditlab.core import kernels
from ditlab.core.errors import InputError
from ditlab.core.models.dit import DiTConfig, FinalLayer, Stream, TimestepEmbedder
from ditlab.core.models.positions import sincos_table

SCALES = (1, 2, 4)
"""Scales a network can be built for (x2 is also served by an x4 network, `superres.upscale`)."""


def upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic upsampling every path and baseline starts from (no antialiasing is needed upwards)."""
    if scale == 1:
        return lr
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def _check_scale(scale: int) -> int:
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    return int(scale)


def _finish(stream: Stream, x: torch.Tensor, attn: torch.Tensor, mod: tuple[torch.Tensor, ...],
            add: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A stream's gated attention residual and modulated MLP, with `add` joined to the MLP's hidden state (the
    cross-stream path); returns the new tokens and that hidden state (B, T, mlp_hidden)."""
    x, h = kernels.gated_residual_layernorm_modulate(x, mod[2], stream.proj(attn), mod[3], mod[4],
                                                     stream.mlp_norm_eps)
    hidden = F.gelu(stream.mlp.fc1(h), approximate="tanh")
    if add is not None:
        hidden = hidden + add
    return torch.addcmul(x, mod[5].unsqueeze(1), stream.mlp.fc2(hidden)), hidden


@dataclass
class LRFeatures:
    """What the HR stream needs from the LR stream, per block: keys, values (B, H, T, Dh) and the cross-stream
    term (B, T, mlp_hidden). Computed once per LR tile and reused at every step."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    cross: list[torch.Tensor]

    def take(self, j: int) -> LRFeatures:
        """Sample j's features alone (copies: the batch's tensors can be freed)."""
        return LRFeatures(*([t[j:j + 1].clone() for t in ts] for ts in (self.keys, self.values, self.cross)))

    @staticmethod
    def cat(parts: list[LRFeatures]) -> LRFeatures:
        """One batch of several samples' features, in order."""
        return LRFeatures(*([torch.cat(ts) for ts in zip(*(getattr(f, n) for f in parts), strict=True)]
                            for n in ("keys", "values", "cross")))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in (self.keys, self.values, self.cross) for t in ts)


class SRBlock(nn.Module):
    """One block: the LR stream's self-attention block, and the HR stream's block attending to both."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.hr, self.lr = Stream(cfg), Stream(cfg)
        hidden = int(cfg.hidden_size * cfg.mlp_ratio)
        self.cross = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)  # zero-initialised (SRDiT.init)

    def encode_lr(self, tokens: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]):
        """LR tokens (B, T, D) -> the next LR tokens and this block's (keys, values, cross term)."""
        mod = self.lr.adaLN_modulation(c).chunk(6, dim=-1)
        q, k, v = self.lr.qkv_heads(tokens, mod, self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        tokens, hidden = _finish(self.lr, tokens, out, mod)
        b, t, m = hidden.shape
        cross = self.cross(hidden.transpose(1, 2).reshape(b, m, *grid)).flatten(2).transpose(1, 2)
        return tokens, (k, v, cross)

    def forward(self, x: torch.Tensor, c: torch.Tensor, k_lr: torch.Tensor, v_lr: torch.Tensor,
                cross: torch.Tensor) -> torch.Tensor:
        mod = self.hr.adaLN_modulation(c).chunk(6, dim=-1)
        q, k, v = self.hr.qkv_heads(x, mod, self.num_heads)
        k, v = torch.cat([k, k_lr], dim=2), torch.cat([v, v_lr], dim=2)  # joint attention over HR + LR tokens
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return _finish(self.hr, x, out, mod, cross)[0]


def _stem(c_in: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), nn.GELU(approximate="tanh"), nn.Conv2d(c, c, 3, padding=1))


class SRDiT(ModelMixin, ConfigMixin):
    """x0 = SRDiT(x_t, t, lr): the clean HR image from the noisy HR state x_t (B, 3, s*h, s*w) at step t and the LR
    image lr (B, 3, h, w), both in [-1, 1]. `task` (B,) picks one of `num_tasks` restoration tasks (x1 models
    serving several). The config also keeps the residual-shift schedule the network was trained with, the tile
    size it saw and the number of sampling steps chosen on validation images (`sample_steps`: one number, or one
    per task; 0: all `steps`), so a weights folder says how to sample it."""

    def default_steps(self, task: int | None = None) -> int:
        """The number of sampling steps this network runs by default for `task`."""
        chosen = self.config.get("sample_steps") or 0
        if isinstance(chosen, list | tuple):
            chosen = chosen[task or 0] if chosen else 0
        return int(chosen or self.config.steps)

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, scale: int = 4, hidden_size: int = 96, depth: int = 6, num_heads: int = 4,
                 mlp_ratio: float = 4.0, stem_channels: int = 48, patch_size: int = 2, num_tasks: int = 0,
                 tile: int = 32, steps: int = 4, kappa: float = 1.0, eta_max: float = 0.999, power: float = 0.3,
                 sample_steps: int | list[int] = 0):
        super().__init__()
        _check_scale(scale)
        if tile % patch_size:
            raise InputError(f"tile {tile} is not a multiple of patch_size {patch_size}")
        cfg = DiTConfig(token_kind="2d", in_channels=3, patch_size=patch_size, hidden_size=hidden_size, depth=depth,
                        num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.cfg, self.scale, self.patch = cfg, scale, patch_size
        d, c = hidden_size, stem_channels
        self.hr_stem, self.lr_stem = _stem(3 * scale * scale, c), _stem(3, c)
        self.hr_embed = nn.Conv2d(c, d, patch_size, patch_size)
        self.lr_embed = nn.Conv2d(c, d, patch_size, patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.task_embedder = nn.Embedding(num_tasks, d) if num_tasks else None
        self.lr_cond = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList([SRBlock(cfg) for _ in range(depth)])
        cfg_out = DiTConfig(token_kind="2d", in_channels=c, patch_size=patch_size, hidden_size=d, depth=1,
                            num_heads=num_heads)
        self.final_layer = FinalLayer(cfg_out)  # tokens -> (patch^2 * stem_channels) features per token
        self.head = nn.Sequential(nn.GELU(approximate="tanh"), nn.Conv2d(c, 3 * scale * scale, 3, padding=1))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears; zero adaLN modulations, cross-stream convolutions and output convolution, so every
        block starts as the identity for the HR stream and the network starts as bicubic upsampling."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.task_embedder is not None:
            nn.init.normal_(self.task_embedder.weight, std=0.02)
        for block in self.blocks:
            for stream in (block.hr, block.lr):
                nn.init.zeros_(stream.adaLN_modulation[-1].weight)
                nn.init.zeros_(stream.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross.weight)
            nn.init.zeros_(block.cross.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def _grid(self, lr: torch.Tensor) -> tuple[int, int]:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise InputError(f"expected LR images (B, 3, h, w), got shape {tuple(lr.shape)}")
        h, w = lr.shape[2:]
        if h % self.patch or w % self.patch:
            raise InputError(f"LR size {h}x{w} is not a multiple of the patch size {self.patch}")
        return h // self.patch, w // self.patch

    def _task_vector(self, task: torch.Tensor | None, b: int, dev: torch.device) -> torch.Tensor | None:
        if self.task_embedder is None:
            if task is not None:
                raise InputError("task given, but this model serves one task (num_tasks=0)")
            return None
        n = self.task_embedder.num_embeddings
        if task is None:
            raise InputError(f"this model serves {n} tasks: pass task (B,) with values in [0, {n})")
        task = torch.as_tensor(task, device=dev).long().expand(b) if torch.as_tensor(task).ndim == 0 else \
            torch.as_tensor(task, device=dev).long()
        if task.shape != (b,) or task.min() < 0 or task.max() >= n:
            raise InputError(f"task must hold {b} values in [0, {n}), got {task.tolist()}")
        return self.task_embedder(task)

    def encode_lr(self, lr: torch.Tensor, task: torch.Tensor | None = None) -> LRFeatures:
        """The LR stream for LR images (B, 3, h, w) in [-1, 1]: what every step's HR stream attends to."""
        grid = self._grid(lr)
        feats = self.lr_stem(lr)
        tokens = self.lr_embed(feats).flatten(2).transpose(1, 2)
        tokens = tokens + sincos_table(self.cfg.hidden_size, grid).to(tokens.device, tokens.dtype)
        c = self.lr_cond.expand(lr.shape[0], -1)
        tv = self._task_vector(task, lr.shape[0], lr.device)
        if tv is not None:
            c = c + tv
        out = LRFeatures([], [], [])
        for block in self.blocks:
            tokens, (k, v, cross) = block.encode_lr(tokens, c, grid)
            out.keys.append(k)
            out.values.append(v)
            out.cross.append(cross)
        return out

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor | float, lr: torch.Tensor,
                task: torch.Tensor | None = None, lr_features: LRFeatures | None = None) -> torch.Tensor:
        s = self.scale
        grid = self._grid(lr)
        b, _, h, w = lr.shape
        if x_t.shape != (b, 3, h * s, w * s):
            raise InputError(f"expected the HR state of shape {(b, 3, h * s, w * s)} for LR {tuple(lr.shape)} at "
                             f"x{s}, got {tuple(x_t.shape)}")
        if lr_features is None:
            lr_features = self.encode_lr(lr, task)
        feats = self.hr_stem(F.pixel_unshuffle(x_t, s) if s > 1 else x_t)  # (B, c, h, w)
        tokens = self.hr_embed(feats).flatten(2).transpose(1, 2)  # (B, T, D)
        tokens = tokens + sincos_table(self.cfg.hidden_size, grid).to(tokens.device, tokens.dtype)
        t = torch.as_tensor(timestep, device=x_t.device, dtype=torch.float32)
        c = self.t_embedder(t.expand(b) if t.ndim == 0 else t)
        tv = self._task_vector(task, b, x_t.device)
        if tv is not None:
            c = c + tv
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, c, lr_features.keys[i], lr_features.values[i], lr_features.cross[i])
        out = self.final_layer(tokens, c)  # (B, T, p*p*c)
        p, ch = self.patch, feats.shape[1]
        out = out.reshape(b, *grid, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, h, w)
        residual = self.head(out + feats)
        if s > 1:
            residual = F.pixel_shuffle(residual, s)
        return upsample(lr, s).to(residual.dtype) + residual


class EDSR(ModelMixin, ConfigMixin):
    """The learned baseline: an EDSR-style residual CNN (no batch norm; residual blocks at LR resolution; a
    pixel-shuffle upsampler), plus the bicubic upsampling as a global skip, images in [-1, 1]."""

    @register_to_config
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 8, res_scale: float = 1.0,
                 num_tasks: int = 0):
        super().__init__()
        _check_scale(scale)
        self.scale, self.res_scale = scale, res_scale
        c = channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.task_embedder = nn.Embedding(num_tasks, c) if num_tasks else None
        self.body = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                                                 nn.Conv2d(c, c, 3, padding=1)) for _ in range(blocks)])
        self.body_end = nn.Conv2d(c, c, 3, padding=1)
        up = []
        for _ in range({1: 0, 2: 1, 4: 2}[scale]):
            up += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2)]
        self.up = nn.Sequential(*up)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        x = self.head(lr)
        if self.task_embedder is not None:
            if task is None:
                raise InputError("this model serves several tasks: pass task (B,)")
            x = x + self.task_embedder(torch.as_tensor(task, device=lr.device).long())[:, :, None, None]
        y = x
        for block in self.body:
            y = y + self.res_scale * block(y)
        y = self.body_end(y) + x
        return upsample(lr, self.scale) + self.tail(self.up(y))


MODEL_CLASSES = {"SRDiT": SRDiT, "EDSR": EDSR}


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> SRDiT | EDSR:
    """A packaged network by name (`sr-x4-real`, ...; sha256 checked) or a weights folder (config.json +
    model.safetensors), built from the class its config names."""
    import json

    from ditlab.core.weights import load_model as core_load
    from ditlab.core.weights import resolve

    folder, _ = resolve(name_or_path, "ditlab.imaging")
    name = json.loads((folder / "config.json").read_text()).get("_class_name", "SRDiT")
    if name not in MODEL_CLASSES:
        raise InputError(f"{folder}: config.json names class {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    return core_load(MODEL_CLASSES[name], name_or_path, "ditlab.imaging", device=device)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
