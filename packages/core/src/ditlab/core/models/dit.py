"""The ditlab diffusion transformer: one adaLN-Zero DiT for sequences, images, volumes and sets.

Read top to bottom: config and presets, embedders, tokenizers, attention, the block, the final
layer, the model. The one idea of the architecture is `modulate`: every block normalises its
input and lets the conditioning vector shift and scale it, and gates what the block adds.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ditlab.core import kernels
from ditlab.core.errors import InputError
from ditlab.core.kernels.reference import modulate as modulate  # the adaLN shift-and-scale, public in models
from ditlab.core.models.positions import rope_tables, sincos_table

TOKEN_KINDS = {"1d": 1, "2d": 2, "3d": 3, "set": 0}  # kind -> number of spatial axes


# ----------------------------------------------------------------------------------------------
# Config and presets
# ----------------------------------------------------------------------------------------------

@dataclass
class DiTConfig:
    """Everything that defines a DiT. `DiT(**asdict(cfg))` builds it; `dit.dit_config` gives it back."""

    token_kind: str = "2d"  # "1d" (B, C, L) | "2d" (B, C, H, W) | "3d" (B, C, D, H, W) | "set" (B, N, C)
    in_channels: int = 4
    out_channels: int | None = None  # None: same as in_channels (x2 with learn_sigma)
    input_size: list[int] | None = None  # nominal spatial size, informational for 1d/2d/3d
    patch_size: int | list[int] = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    norm_eps: float = 1e-6
    mlp_norm_eps: float | None = None  # None: norm_eps (diffusers' DiT uses 1e-5 here)
    num_classes: int = 0  # 0: no labels; else a table of num_classes + 1 (the last is the null class)
    class_dropout_prob: float = 0.1
    cond_dim: int = 0  # continuous conditioning vector (B, cond_dim)
    context_dim: int = 0  # context tokens (B, M, context_dim), joint attention in every block
    pos_embed: str = "sincos"  # "sincos" | "rope" | "none"
    rope_theta: float = 10000.0
    window_size: int | list[int] = 0  # 0: global attention; else windows of this many tokens per axis
    window_blocks: list[int] | None = None  # blocks using windows; None: all but every 4th
    learn_sigma: bool = False
    time_freq_shift: float = 0.0  # diffusers' DiT embeds time with a shift of 1

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_axes(self) -> int:
        return TOKEN_KINDS[self.token_kind]

    @property
    def patch(self) -> tuple[int, ...]:
        return _per_axis(self.patch_size, self.n_axes, "patch_size")

    @property
    def window(self) -> tuple[int, ...]:
        return _per_axis(self.window_size, self.n_axes, "window_size")

    @property
    def output_channels(self) -> int:
        out = self.out_channels or self.in_channels
        return out * 2 if self.learn_sigma else out

    def uses_window(self, block: int) -> bool:
        if not any(self.window):
            return False
        if self.window_blocks is None:
            return block % 4 != 3
        return block in self.window_blocks

    def validate(self) -> None:
        if self.token_kind not in TOKEN_KINDS:
            raise InputError(f"token_kind must be one of {sorted(TOKEN_KINDS)}, got {self.token_kind!r}")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed not in ("sincos", "rope", "none"):
            raise InputError(f"pos_embed must be 'sincos', 'rope' or 'none', got {self.pos_embed!r}")
        if self.token_kind == "set" and self.pos_embed != "none":
            self.pos_embed = "none"  # sets are unordered: no positions by definition
        head_dim = self.hidden_size // self.num_heads
        if self.pos_embed == "rope" and head_dim % (2 * self.n_axes):
            raise InputError(f"RoPE over {self.n_axes} axes needs head_dim divisible by {2 * self.n_axes}, "
                             f"got {head_dim}")
        if self.pos_embed == "sincos" and self.hidden_size % (2 * self.n_axes):
            raise InputError(f"sin-cos positions over {self.n_axes} axes need hidden_size divisible by "
                             f"{2 * self.n_axes}, got {self.hidden_size}")
        if any(self.window) and self.token_kind not in ("2d", "3d"):
            raise InputError(f"window attention is for 2d and 3d tokens, not {self.token_kind!r}")
        if any(self.window) and self.context_dim:
            raise InputError("window attention cannot be combined with context tokens (joint attention)")
        if self.window_blocks is not None and any(not 0 <= b < self.depth for b in self.window_blocks):
            raise InputError(f"window_blocks must lie in [0, {self.depth}), got {self.window_blocks}")
        if self.patch and min(self.patch) < 1:
            raise InputError(f"patch_size must be >= 1, got {self.patch_size}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise InputError(f"class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}")


def _per_axis(value: int | list[int] | tuple[int, ...], n_axes: int, name: str) -> tuple[int, ...]:
    if n_axes == 0:
        return ()
    if isinstance(value, int):
        return (value,) * n_axes
    if len(value) != n_axes:
        raise InputError(f"{name} needs {n_axes} values for this token kind, got {list(value)}")
    return tuple(int(v) for v in value)


# name -> (depth, hidden_size, num_heads); "tiny" is for tests and CPU demos.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 128, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def preset_config(name: str, **overrides) -> DiTConfig:
    """A named size: 'S/2' is DiT-S with patch 2; 'DiT-XL/2', 'tiny/4' and plain 'B' (patch 2) work."""
    size, _, patch = name.removeprefix("DiT-").partition("/")
    if size not in PRESETS:
        raise InputError(f"unknown preset {name!r}; sizes are {list(PRESETS)} with an optional /patch")
    depth, hidden, heads = PRESETS[size]
    kw = {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": int(patch or 2)}
    kw.update(overrides)
    return DiTConfig(**kw)


# ----------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------

class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: 256 sinusoidal frequencies ([cos, sin]) and a 2-layer MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32)
                          / (half - self.freq_shift))
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; index num_classes is the null class, used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


# ----------------------------------------------------------------------------------------------
# Tokenizers: data <-> tokens
# ----------------------------------------------------------------------------------------------

class Tokenizer(nn.Module):
    """Patchify 1D/2D/3D inputs with a strided convolution, or project set elements with a linear."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.kind, self.patch, self.in_channels = cfg.token_kind, cfg.patch, cfg.in_channels
        d = cfg.hidden_size
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(cfg.n_axes)
        self.proj = conv(cfg.in_channels, d, self.patch, self.patch) if conv else nn.Linear(cfg.in_channels, d)

    def check(self, x: torch.Tensor) -> tuple[int, ...]:
        """Validate an input batch and return its token grid ((N,) for sets)."""
        names = {"1d": "(B, C, L)", "2d": "(B, C, H, W)", "3d": "(B, C, D, H, W)", "set": "(B, N, C)"}
        rank = len(self.patch) + 2 if self.kind != "set" else 3
        if x.ndim != rank:
            raise InputError(f"expected a {self.kind} input {names[self.kind]}, got shape {tuple(x.shape)}")
        channels = x.shape[-1] if self.kind == "set" else x.shape[1]
        if channels != self.in_channels:
            raise InputError(f"expected {self.in_channels} channels, got {channels} (input shape {tuple(x.shape)})")
        if self.kind == "set":
            return (x.shape[1],)
        spatial = tuple(x.shape[2:])
        if any(s % p for s, p in zip(spatial, self.patch, strict=True)):
            raise InputError(f"spatial size {spatial} is not divisible by the patch size {self.patch}")
        return tuple(s // p for s, p in zip(spatial, self.patch, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "set":
            return self.proj(x)  # (B, N, D)
        # contiguous: the residual stream inherits this layout, and a transposed one costs a copy per norm
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, T, D)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, ...], channels: int) -> torch.Tensor:
        """(B, T, prod(patch) * C) -> (B, C, *spatial); inverse of the convolutional patchify."""
        if self.kind == "set":
            return tokens
        n = len(grid)
        x = tokens.reshape(tokens.shape[0], *grid, *self.patch, channels)
        # (B, g1..gn, p1..pn, C) -> (B, C, g1, p1, ..., gn, pn)
        order = [0, 2 * n + 1] + [i for a in range(n) for i in (1 + a, 1 + n + a)]
        x = x.permute(*order)
        return x.reshape(x.shape[0], channels, *[g * p for g, p in zip(grid, self.patch, strict=True)])


# ----------------------------------------------------------------------------------------------
# Attention and the adaLN-Zero block
# ----------------------------------------------------------------------------------------------

def window_partition(x: torch.Tensor, grid: tuple[int, ...], window: tuple[int, ...]) -> torch.Tensor:
    """(B, T, C) tokens on `grid` -> (B * n_windows, prod(window), C)."""
    b, c, n = x.shape[0], x.shape[-1], len(grid)
    x = x.reshape(b, *[v for g, w in zip(grid, window, strict=True) for v in (g // w, w)], c)
    x = x.permute(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return x.reshape(-1, math.prod(window), c)


def window_merge(x: torch.Tensor, grid: tuple[int, ...], window: tuple[int, ...], batch: int) -> torch.Tensor:
    """Inverse of `window_partition`."""
    n, c = len(grid), x.shape[-1]
    counts = [g // w for g, w in zip(grid, window, strict=True)]
    x = x.reshape(batch, *counts, *window, c)
    order = [0] + [i for a in range(n) for i in (1 + a, 1 + n + a)] + [2 * n + 1]
    return x.permute(*order).reshape(batch, -1, c)


def rope_per_row(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with angles per batch row: x (B, H, k, Dh), cos and sin (B, k, Dh/2). The rows are laid end to
    end as one sequence, the form the RoPE kernel takes."""
    b, h, k, dh = x.shape
    flat = x.transpose(0, 1).reshape(1, h, b * k, dh)
    out = kernels.apply_rope(flat, cos.reshape(b * k, -1), sin.reshape(b * k, -1))
    return out.reshape(h, b, k, dh).transpose(0, 1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Stream(nn.Module):
    """The weights one token stream owns inside a block: modulation, qkv, output projection, MLP."""

    def __init__(self, cfg: DiTConfig, pre_only: bool = False):
        super().__init__()
        d, heads = cfg.hidden_size, cfg.num_heads
        self.norm_eps = cfg.norm_eps
        self.mlp_norm_eps = cfg.mlp_norm_eps if cfg.mlp_norm_eps is not None else cfg.norm_eps
        self.pre_only = pre_only  # the last block's context stream only feeds attention
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, (2 if pre_only else 6) * d))
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)
        self.q_norm = RMSNorm(d // heads) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d // heads) if cfg.qk_norm else None
        if not pre_only:
            self.proj = nn.Linear(d, d)
            self.mlp = Mlp(d, int(d * cfg.mlp_ratio))

    def qkv_heads(self, x: torch.Tensor, mod: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
        """Modulated pre-norm, qkv, split into heads: three (B, H, L, Dh) tensors."""
        h = kernels.layernorm_modulate(x, mod[0], mod[1], self.norm_eps)
        # unbind then transpose (not one permute): backward then writes the qkv gradient without a copy
        q, k, v = (t.transpose(1, 2) for t in self.qkv(h).unflatten(-1, (3, heads, -1)).unbind(2))  # (B, H, L, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def finish(self, x: torch.Tensor, attn: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Gated residual of the attention output, then the gated, modulated MLP."""
        x, h = kernels.gated_residual_layernorm_modulate(x, mod[2], self.proj(attn), mod[3], mod[4], self.mlp_norm_eps)
        return torch.addcmul(x, mod[5].unsqueeze(1), self.mlp(h))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; with context tokens it is an MM-DiT joint-attention block."""

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.window = cfg.window if cfg.uses_window(index) else None
        self.x = Stream(cfg)
        self.ctx = Stream(cfg, pre_only=index == cfg.depth - 1) if cfg.context_dim else None

    def forward(self, x, c, rope=None, grid=(), key_mask=None, ctx=None, ctx_c=None, kv=None):
        """x (B, T, D), c (B, D); ctx (B, M, D) with its own conditioning ctx_c; key_mask (B, T + M).

        `kv(k, v) -> (k, v)`, if given, sees the token stream's keys and values (B, H, T, Dh) after RoPE and
        may return longer ones: region-adaptive sampling passes only the tokens it recomputes (with RoPE
        tables per batch row, (B, T, Dh/2)) and completes keys and values from its cache."""
        heads = self.num_heads
        mod = self.x.adaLN_modulation(c).chunk(6, dim=-1)
        q, k, v = self.x.qkv_heads(x, mod, heads)
        if rope is not None:
            apply = kernels.apply_rope if rope[0].ndim == 2 else rope_per_row
            q, k = apply(q, *rope), apply(k, *rope)
        if kv is not None:
            k, v = kv(k, v)
        n_x = q.shape[2]
        if ctx is not None:
            cmod = self.ctx.adaLN_modulation(ctx_c).chunk(2 if self.ctx.pre_only else 6, dim=-1)
            cq, ck, cv = self.ctx.qkv_heads(ctx, cmod, heads)
            q, k, v = (torch.cat([a, b], dim=2) for a, b in zip((q, k, v), (cq, ck, cv), strict=True))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if self.window is not None:
            b = q.shape[0]
            q, k, v = (window_partition(t.transpose(1, 2).flatten(2), grid, self.window)
                       .unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)
            out = window_merge(out.transpose(1, 2).flatten(2), grid, self.window, b)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.transpose(1, 2).flatten(2)  # (B, T + M, D)
        del q, k, v  # free the qkv buffer before the MLP
        x = self.x.finish(x, out[:, :n_x], mod)
        if ctx is not None and not self.ctx.pre_only:
            ctx = self.ctx.finish(ctx, out[:, n_x:], cmod)
        return x, ctx


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm_eps = cfg.norm_eps
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.linear = nn.Linear(d, math.prod(cfg.patch) * cfg.output_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(kernels.layernorm_modulate(x, shift, scale, self.norm_eps))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def _signature_from_config(init):
    """Give `DiT.__init__(**kwargs)` the keyword signature of `DiTConfig`, so diffusers' ConfigMixin
    registers, saves and reloads every field without the defaults being written twice."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields(DiTConfig)]
    init.__signature__ = inspect.Signature(params)
    return init


class DiT(ModelMixin, ConfigMixin):
    """Diffusion transformer over 1D, 2D, 3D or set tokens, conditioned by timestep, class label,
    a continuous vector and/or context tokens. `save_pretrained` / `from_pretrained` write and read
    `config.json` + `diffusion_pytorch_model.safetensors`."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiTBlock"]

    @register_to_config
    @_signature_from_config
    def __init__(self, **kwargs):
        super().__init__()
        cfg = DiTConfig(**kwargs)
        self.cfg = cfg
        d = cfg.hidden_size
        self.gradient_checkpointing = False
        self.x_embedder = Tokenizer(cfg)
        self.t_embedder = TimestepEmbedder(d, freq_shift=cfg.time_freq_shift)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout_prob) if cfg.num_classes else None
        self.cond_embedder = (nn.Sequential(nn.Linear(cfg.cond_dim, d), nn.SiLU(), nn.Linear(d, d))
                              if cfg.cond_dim else None)
        self.context_embedder = nn.Linear(cfg.context_dim, d) if cfg.context_dim else None
        self.blocks = nn.ModuleList([DiTBlock(cfg, i) for i in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    @property
    def dit_config(self) -> DiTConfig:
        return self.cfg

    @classmethod
    def from_dit_config(cls, cfg: DiTConfig) -> DiT:
        return cls(**asdict(cfg))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DiT:
        """`DiT.from_preset("S/2", token_kind="2d", in_channels=4, num_classes=1000)`."""
        return cls.from_dit_config(preset_config(name, **overrides))

    @classmethod
    def from_diffusers(cls, model_or_path, **kwargs) -> DiT:
        """Load a diffusers `DiTTransformer2DModel` (an instance or a saved folder) as a ditlab DiT."""
        from ditlab.core.models.interop import dit_from_diffusers

        return dit_from_diffusers(cls, model_or_path, **kwargs)

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) embeddings, and zero-initialised modulation
        and output layers, so every block starts as the identity and the model starts by predicting 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            for stream in (block.x, block.ctx):
                if stream is not None:
                    nn.init.zeros_(stream.adaLN_modulation[-1].weight)
                    nn.init.zeros_(stream.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed_condition(self, timestep, batch: int, class_labels=None, cond=None) -> torch.Tensor:
        """The conditioning vector c = t_emb + y_emb + cond_emb, (B, D)."""
        cfg, dev = self.cfg, self.t_embedder.mlp[0].weight.device
        t = torch.as_tensor(timestep, device=dev)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise InputError(f"timestep must be a scalar or shape ({batch},), got shape {tuple(t.shape)}")
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), cfg.num_classes, device=dev, dtype=torch.long)
            class_labels = torch.as_tensor(class_labels, device=dev).long()
            if class_labels.shape != (batch,):
                raise InputError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}")
            if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() > cfg.num_classes):
                raise InputError(f"class labels must lie in [0, {cfg.num_classes}] "
                                 f"({cfg.num_classes} is the null class), got {class_labels.tolist()}")
            c = c + self.y_embedder(class_labels)
        elif class_labels is not None:
            raise InputError("class_labels given, but this model has num_classes=0")
        if self.cond_embedder is not None:
            if cond is None or cond.shape != (batch, cfg.cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise InputError(f"expected cond of shape ({batch}, {cfg.cond_dim}), got {got}")
            c = c + self.cond_embedder(cond.to(c.dtype))
        elif cond is not None:
            raise InputError("cond given, but this model has cond_dim=0")
        return c

    def embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], tuple | None]:
        """Tokens with sin-cos positions added, their grid, and RoPE tables when RoPE is on."""
        grid = self.x_embedder.check(x)
        tokens = self.x_embedder(x)  # (B, T, D)
        rope = None
        if self.cfg.pos_embed == "sincos":
            tokens = tokens + sincos_table(self.cfg.hidden_size, grid).to(tokens.device, tokens.dtype)
        elif self.cfg.pos_embed == "rope":
            head_dim = self.cfg.hidden_size // self.cfg.num_heads
            rope = tuple(r.to(tokens.device) for r in rope_tables(head_dim, grid, self.cfg.rope_theta))
        for blk in self.blocks:
            if blk.window is not None and any(g % w for g, w in zip(grid, blk.window, strict=True)):
                raise InputError(f"token grid {grid} is not divisible by the attention window {blk.window}")
        return tokens, grid, rope

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the model output (noise, velocity or x0, as trained) with the input's shape
        (channels = output_channels). `mask` (B, N) marks valid set elements; `context_mask` (B, M)
        marks valid context tokens."""
        cfg = self.cfg
        tokens, grid, rope = self.embed_tokens(x)
        b = tokens.shape[0]
        c = self.embed_condition(timestep, b, class_labels, cond)
        key_mask = self._key_mask(mask, b, tokens.shape[1], "mask")
        ctx = None
        if cfg.context_dim:
            if context is None or context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
                got = None if context is None else tuple(context.shape)
                raise InputError(f"expected context tokens of shape ({b}, M, {cfg.context_dim}), got {got}")
            ctx = self.context_embedder(context.to(tokens.dtype))
            cmask = self._key_mask(context_mask, b, ctx.shape[1], "context_mask")
            if key_mask is not None or cmask is not None:
                ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=tokens.device)  # noqa: E731
                key_mask = torch.cat([key_mask if key_mask is not None else ones(tokens.shape[1]),
                                      cmask if cmask is not None else ones(ctx.shape[1])], dim=1)
        elif context is not None:
            raise InputError("context given, but this model has context_dim=0")
        tokens = self.run_blocks(tokens, c, rope, grid, key_mask, ctx)
        out = self.final_layer(tokens, c)  # (B, T, prod(patch) * C_out)
        return self.x_embedder.unpatchify(out, grid, cfg.output_channels)

    def run_blocks(self, tokens, c, rope=None, grid=(), key_mask=None, ctx=None) -> torch.Tensor:
        """The transformer trunk: tokens (B, T, D) -> (B, T, D). Hooks (`ditlab.core.hooks`: feature caches,
        sequence parallelism) wrap it per instance."""
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens, ctx = self._gradient_checkpointing_func(block, tokens, c, rope, grid, key_mask, ctx, c)
            else:
                tokens, ctx = block(tokens, c, rope, grid, key_mask, ctx, c)
        return tokens

    @staticmethod
    def _key_mask(mask, batch: int, n: int, name: str) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.shape != (batch, n):
            raise InputError(f"{name} must have shape ({batch}, {n}), got {tuple(mask.shape)}")
        return mask.bool()

