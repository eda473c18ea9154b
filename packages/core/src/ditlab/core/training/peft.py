"""Parameter-efficient fine-tuning of a ditlab DiT: LoRA, DiffFit, or both, and the one-file adapters they save.

- LoRA (Hu et al. 2021): the Linear layers named in `targets` inside the transformer blocks get a trainable
  low-rank update, y = x W^T + b + (alpha / rank) * x A^T B^T, with B = 0 at the start.
- DiffFit (Xie et al. 2023): every bias and every norm scale is trained, and the base stays frozen.
- Gates (DiffFit's scale factors): each block's two residual updates, attention and MLP, are scaled per channel
  by a learnable gamma that starts at 1: x + gamma_attn * gate_msa * attn(...), x + gamma_mlp * gate_mlp * mlp(...).
  They live in the block's adaLN modulation, on its two gate chunks, so a merge folds them into its Linear.

Every method starts as the base model exactly (up to rounding). The state-dict keys of a wrapped model are
those of the base plus `<linear>.lora_A`, `<linear>.lora_B` and `blocks.<i>.x.adaLN_modulation.gamma`, so the
`Trainer` trains (it optimises what requires grad) and resumes a wrapped model like any other.

An adapter file is one safetensors file: the adapter tensors in float16 (LoRA A and B, the gates and, for
DiffFit, the trained biases and norm scales) and, in its metadata, format "ditlab-adapter", version "1", the
`PeftConfig` as JSON, the base model's name and the sha256 of its weights file, and the list of keys.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ditlab.core.errors import FileFormatError, InputError, UsageError
from ditlab.core.files import atomic_write
from ditlab.core.models.dit import RMSNorm

from .resume import to_half

METHODS = ("difffit", "lora", "difffit+lora")
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
ADAPTER_FORMAT, ADAPTER_VERSION = "ditlab-adapter", "1"
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, RMSNorm)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PeftConfig:
    """What `apply_peft` trains; checked on construction."""

    method: str = "difffit+lora"  # "difffit" | "lora" | "difffit+lora"
    rank: int = 8  # LoRA rank r
    alpha: float | None = None  # LoRA updates are scaled by alpha / rank; None: rank (a scale of 1)
    targets: tuple[str, ...] = LORA_TARGETS  # Linear names inside the blocks that get LoRA ("qkv", "mlp.fc1", ...)
    gates: bool = True  # DiffFit's per-channel scale factors on each block's attention and MLP updates

    def __post_init__(self) -> None:
        def check(ok: bool, what: str, expected: str, got) -> None:
            if not ok:
                raise UsageError(f"PeftConfig.{what} is {got!r}; expected {expected}")

        check(self.method in METHODS, "method", f"one of {METHODS}", self.method)
        check(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
              "rank", "an integer >= 1", self.rank)
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(self.rank))
        check(isinstance(self.alpha, int | float) and not isinstance(self.alpha, bool) and self.alpha > 0,
              "alpha", "a number > 0 (None: the rank)", self.alpha)
        check(isinstance(self.targets, tuple | list) and all(isinstance(t, str) and t for t in self.targets),
              "targets", "a tuple of Linear names such as ('qkv', 'proj')", self.targets)
        object.__setattr__(self, "targets", tuple(self.targets))
        check(bool(self.targets) or not self.uses_lora, "targets", "at least one Linear name when the method "
              "uses LoRA", self.targets)
        check(isinstance(self.gates, bool), "gates", "True or False", self.gates)

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.method.split("+")

    @property
    def uses_difffit(self) -> bool:
        return "difffit" in self.method.split("+")


# ----------------------------------------------------------------------------------------------
# The two wrappers
# ----------------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + (x A^T B^T) * alpha / rank.

    A (rank, in) is kaiming-uniform and B (out, rank) zero, so the layer starts as the base. The base's own
    `weight` and `bias` are kept under those names, so state-dict keys only gain `lora_A` and `lora_B`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, alpha / rank
        self.weight = base.weight.requires_grad_(False)
        self.register_parameter("bias", None if base.bias is None else base.bias.requires_grad_(False))
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function: W + scale * B A, the same bias."""
        w = self.weight.detach()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            delta = self.lora_B.detach().float() @ self.lora_A.detach().float() * self.scale
            linear.weight.copy_(w.float() + delta)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class GatedModulation(nn.Sequential):
    """A block's adaLN modulation (SiLU, Linear -> shift, scale, gate of attention, then of the MLP) with DiffFit's
    scale factors: gamma (2, D), starting at 1, multiplies the attention gate and the MLP gate per channel."""

    def __init__(self, modulation: nn.Sequential):
        super().__init__(*modulation)
        w = modulation[-1].weight
        self.gamma = nn.Parameter(torch.ones(2, modulation[-1].out_features // 6, device=w.device, dtype=w.dtype))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        mod = super().forward(c).unflatten(-1, (6, -1))  # (B, 6, D)
        return (mod * self.factors().to(mod.dtype)).flatten(-2)

    def factors(self) -> torch.Tensor:
        """(6, D): ones, with gamma in the rows of the two gates (chunks 2 and 5)."""
        one = torch.ones_like(self.gamma[0])
        return torch.stack([one, one, self.gamma[0], one, one, self.gamma[1]])

    def merged(self) -> nn.Sequential:
        """The plain (SiLU, Linear) with the gates folded into the Linear's rows."""
        linear = self[-1]
        with torch.no_grad():
            f = self.factors().detach().flatten().to(linear.weight.dtype)
            linear.weight.mul_(f[:, None])
            linear.bias.mul_(f)
        return nn.Sequential(*list(self)[:-1], linear)


# ----------------------------------------------------------------------------------------------
# Applying, counting, merging
# ----------------------------------------------------------------------------------------------

def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not all(hasattr(b, "x") for b in blocks):
        raise InputError(f"expected a ditlab DiT (transformer blocks in .blocks, each with a token stream .x), "
                         f"got {type(model).__name__}")
    return blocks


def _lora_targets(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """(name in the model, layer) of every Linear in the blocks whose name inside its block is, or ends with,
    a target; each target must name at least one."""
    linears = [(f"blocks.{i}.{name}", name, m) for i, block in enumerate(_blocks(model))
               for name, m in block.named_modules() if isinstance(m, nn.Linear | LoRALinear)]
    matches = lambda name, t: name == t or name.endswith(f".{t}")  # noqa: E731
    for t in targets:
        if not any(matches(name, t) for _, name, _ in linears):
            names = sorted({name for _, name, _ in linears})
            raise InputError(f"LoRA target {t!r} names no nn.Linear in the model's blocks; expected some of {names}")
    return [(full, m) for full, name, m in linears if any(matches(name, t) for t in targets)]


def _adapter_shapes(model: nn.Module, config: PeftConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor `config` trains in `model`, read off the base or the wrapped model alike."""
    shapes: dict[str, tuple[int, ...]] = {}
    if config.uses_lora:
        for name, linear in _lora_targets(model, config.targets):
            shapes[f"{name}.lora_A"] = (config.rank, linear.in_features)
            shapes[f"{name}.lora_B"] = (linear.out_features, config.rank)
    if config.gates:
        for i, block in enumerate(_blocks(model)):
            shapes[f"blocks.{i}.x.adaLN_modulation.gamma"] = (2, block.x.adaLN_modulation[-1].out_features // 6)
    if config.uses_difffit:
        norm_params = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters()}
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias" or id(p) in norm_params:
                shapes[name] = tuple(p.shape)
    return shapes


def adapter_config(model: nn.Module) -> PeftConfig | None:
    """The PeftConfig `apply_peft` applied to `model`, or None for a plain model."""
    return getattr(model, "ditlab_peft", None)


def _check_plain(model: nn.Module) -> nn.ModuleList:
    """The blocks of `model`, a DiT without an adapter."""
    blocks = _blocks(model)
    if adapter_config(model) is not None:
        raise UsageError(f"this {type(model).__name__} already has a {adapter_config(model).method} adapter; "
                         "expected a plain base model (merge_adapter first to fine-tune the result again)")
    return blocks


def apply_peft(model: nn.Module, config: PeftConfig | None = None) -> nn.Module:
    """Freeze every parameter of `model` (a ditlab DiT), add what `config` trains (LoRA layers, gates) and
    unfreeze it; in place, returns `model`. The wrapped model computes what the base did."""
    config = config or PeftConfig()
    blocks = _check_plain(model)
    shapes = _adapter_shapes(model, config)  # checks the targets before anything changes
    model.requires_grad_(False)
    if config.uses_lora:
        for name, linear in _lora_targets(model, config.targets):
            model.set_submodule(name, LoRALinear(linear, config.rank, config.alpha))
    if config.gates:
        for block in blocks:
            block.x.adaLN_modulation = GatedModulation(block.x.adaLN_modulation)
    params = dict(model.named_parameters())
    for name in shapes:
        params[name].requires_grad_(True)
    model.ditlab_peft = config
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter of every parameter that requires grad (what the Trainer optimises)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter values."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold LoRA into its Linear weights and the gates into the modulation Linears; in place, returns `model`, a
    plain model again (the base's state-dict keys, every parameter trainable) that computes what the adapted one
    did."""
    if adapter_config(model) is None:
        raise UsageError(f"this {type(model).__name__} has no adapter to merge; expected a model from apply_peft "
                         "or load_adapter")
    for kind in (LoRALinear, GatedModulation):  # LoRA first: a gated modulation's Linear may carry LoRA too
        for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]:
            model.set_submodule(name, m.merged())
    del model.ditlab_peft
    return model.requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# Adapter files
# ----------------------------------------------------------------------------------------------

def save_adapter(model: nn.Module, path: str | Path, base_digest: str, base_name: str,
                 config: PeftConfig | None = None) -> Path:
    """Write the adapter of `model` (from apply_peft) to one safetensors file, atomically: its tensors in float16
    and what it belongs to, the base `base_name` whose weights file has sha256 `base_digest`. `config`, when
    given, must be the one the model was adapted with."""
    applied = adapter_config(model)
    if applied is None:
        raise UsageError(f"this {type(model).__name__} has no adapter to save; expected a model from apply_peft")
    if config is not None and config != applied:
        raise UsageError(f"save_adapter got {config}, but the model was adapted with {applied}")
    if not isinstance(base_digest, str) or not _SHA256.fullmatch(base_digest):
        raise InputError(f"base_digest is {base_digest!r}; expected the 64 lowercase hex digits of a sha256")
    if not isinstance(base_name, str) or not base_name:
        raise InputError(f"base_name is {base_name!r}; expected the name of the base model")
    params = dict(model.named_parameters())
    keys = sorted(_adapter_shapes(model, applied))
    tensors = {k: to_half(params[k].detach().cpu(), k) for k in keys}
    metadata = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "config": json.dumps(asdict(applied)),
        "base_name": base_name,
        "base_sha256": base_digest,
        "keys": json.dumps(keys),
    }
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_adapter_meta(path: str | Path) -> dict:
    """The metadata of an adapter file: format, version, config (a PeftConfig), base_name, base_sha256, keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    expected = f"expected a ditlab adapter written by save_adapter (safetensors, metadata format {ADAPTER_FORMAT!r})"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = dict(f.metadata() or {}), sorted(f.keys())
    except SafetensorError as e:
        raise FileFormatError(f"{path} is not a readable safetensors file ({e}); {expected}") from e
    if meta.get("format") != ADAPTER_FORMAT:
        raise FileFormatError(f"{path} is a safetensors file but not a ditlab adapter (metadata format "
                              f"{meta.get('format')!r}); {expected}")
    if meta.get("version") != ADAPTER_VERSION:
        raise FileFormatError(f"{path} is a ditlab adapter of version {meta.get('version')!r}; this ditlab reads "
                              f"version {ADAPTER_VERSION}")
    missing = [k for k in ("config", "base_name", "base_sha256", "keys") if k not in meta]
    if missing:
        raise FileFormatError(f"{path} has no {', '.join(missing)} in its metadata; {expected}")
    try:
        meta["config"] = PeftConfig(**json.loads(meta["config"]))
        meta["keys"] = json.loads(meta["keys"])
    except (ValueError, TypeError) as e:
        raise FileFormatError(f"{path} has an unreadable config or key list in its metadata ({e}); {expected}") from e
    if sorted(meta["keys"]) != names:
        raise FileFormatError(f"{path} lists the keys {sorted(meta['keys'])[:8]} but holds {names[:8]}; {expected}")
    return meta


def check_adapter(path: str | Path, expect_digest: str | None, expect_name: str | None = None) -> dict:
    """The adapter's metadata (`read_adapter_meta`), refused when it belongs to a base other than the one whose
    weights file has sha256 `expect_digest` (None: unchecked); the message names both bases."""
    meta = read_adapter_meta(path)
    if expect_digest is not None and meta["base_sha256"] != expect_digest.lower():
        raise InputError(f"adapter {path} belongs to the base {meta['base_name']!r} (sha256 "
                         f"{meta['base_sha256'][:12]}), not to {expect_name or 'the given base'!r} (sha256 "
                         f"{expect_digest.lower()[:12]}); expected an adapter trained on these base weights")
    return meta


def load_adapter(model: nn.Module, path: str | Path, expect_digest: str | None,
                 expect_name: str | None = None) -> nn.Module:
    """Apply the adapter in `path` to `model`, a plain base model whose weights file has sha256 `expect_digest`
    (None: unchecked, for a base with no recorded digest); `expect_name` names the base in the error. The
    model is left as it was when the adapter is refused. In place, returns `model`."""
    meta = check_adapter(path, expect_digest, expect_name)
    config = meta["config"]
    _check_plain(model)
    shapes = _adapter_shapes(model, config)
    tensors = load_file(str(path))
    missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    wrong = [f"{k}: expected {shapes[k]}, got {tuple(v.shape)}" for k, v in tensors.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    if missing or extra or wrong:
        parts = [f"{what} {keys[:8]}{' ...' if len(keys) > 8 else ''}" for what, keys in
                 (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", wrong)) if keys]
        raise FileFormatError(f"adapter {path} does not fit this {type(model).__name__}: " + "; ".join(parts))
    apply_peft(model, config)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v)
    return model
