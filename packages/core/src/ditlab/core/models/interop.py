"""Convert between diffusers' `DiTTransformer2DModel` (the format of the public DiT-XL/2 checkpoints) and
a ditlab DiT, both ways.

diffusers keeps a timestep+label embedder inside every block; the original DiT (and every converted
public checkpoint) shares one. We load the shared copy and refuse checkpoints whose copies differ; going
back, every block gets a copy of ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ditlab.core.errors import InputError
from ditlab.core.weights import load_state_dict

if TYPE_CHECKING:
    from diffusers import DiTTransformer2DModel

    from ditlab.core.models.dit import DiT, DiTConfig

_EMB = "transformer_blocks.{i}.norm1.emb."


def _read_diffusers(model_or_path) -> tuple[dict, dict[str, torch.Tensor]]:
    if isinstance(model_or_path, torch.nn.Module):
        return dict(model_or_path.config), {k: v.detach() for k, v in model_or_path.state_dict().items()}
    path = Path(model_or_path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"expected a diffusers model folder with config.json, got {path}")
    config = json.loads(cfg_file.read_text())
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors weights in {path} (pickle checkpoints are not loaded)")
    state: dict[str, torch.Tensor] = {}
    for w in weights:
        state.update(load_state_dict(w))
    return config, state


def dit_from_diffusers(cls, model_or_path, dtype: torch.dtype = torch.float32):
    config, sd = _read_diffusers(model_or_path)
    if config.get("_class_name", "DiTTransformer2DModel") != "DiTTransformer2DModel":
        raise InputError(f"expected a DiTTransformer2DModel, got {config.get('_class_name')}")
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise InputError(f"expected norm_type 'ada_norm_zero', got {config.get('norm_type')!r}")
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise InputError(f"expected activation_fn 'gelu-approximate', got {config.get('activation_fn')!r}")
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    hidden, depth = heads * head_dim, config["num_layers"]
    sd = dict(sd)
    table = sd.get("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight")
    if table is None:
        raise KeyError("missing key transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight")
    num_classes = config["num_embeds_ada_norm"]
    if table.shape[0] != num_classes + 1:
        raise InputError(f"expected a label table with a null class ({num_classes + 1} rows), got {table.shape[0]}")
    mlp_hidden = sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0]
    dit = cls(
        token_kind="2d", in_channels=config["in_channels"], out_channels=config.get("out_channels"),
        input_size=[config["sample_size"]] * 2, patch_size=config["patch_size"], hidden_size=hidden,
        depth=depth, num_heads=heads, mlp_ratio=mlp_hidden / hidden, qkv_bias=config.get("attention_bias", True),
        norm_eps=1e-6, mlp_norm_eps=config.get("norm_eps", 1e-5), num_classes=num_classes,
        class_dropout_prob=0.1, pos_embed="sincos", time_freq_shift=1.0,
    )
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:
        if src not in sd:
            raise KeyError(f"missing key {src!r} in the diffusers checkpoint")
        out[dst] = sd.pop(src)

    for wb in ("weight", "bias"):
        take(f"pos_embed.proj.{wb}", f"x_embedder.proj.{wb}")
        take(f"{_EMB.format(i=0)}timestep_embedder.linear_1.{wb}", f"t_embedder.mlp.0.{wb}")
        take(f"{_EMB.format(i=0)}timestep_embedder.linear_2.{wb}", f"t_embedder.mlp.2.{wb}")
        take(f"proj_out_1.{wb}", f"final_layer.adaLN_modulation.1.{wb}")
        take(f"proj_out_2.{wb}", f"final_layer.linear.{wb}")
    take(f"{_EMB.format(i=0)}class_embedder.embedding_table.weight", "y_embedder.embedding_table.weight")
    shared_names = {"timestep_embedder.linear_1": "t_embedder.mlp.0", "timestep_embedder.linear_2": "t_embedder.mlp.2",
                    "class_embedder.embedding_table": "y_embedder.embedding_table"}
    for i in range(1, depth):
        for name in [k for k in sd if k.startswith(_EMB.format(i=i))]:
            rest = name.removeprefix(_EMB.format(i=i))
            stem, _, wb = rest.rpartition(".")
            if stem not in shared_names or not torch.equal(sd.pop(name), out[f"{shared_names[stem]}.{wb}"]):
                raise InputError(f"block {i} has its own timestep/label embedder ({rest} differs from block 0); "
                                 "ditlab's DiT shares one embedder across blocks, as the original DiT does")
    for i in range(depth):
        p, q = f"transformer_blocks.{i}.", f"blocks.{i}.x."
        for wb in ("weight", "bias"):
            take(f"{p}norm1.linear.{wb}", f"{q}adaLN_modulation.1.{wb}")
            if f"{p}attn1.to_q.{wb}" in sd:
                out[f"{q}qkv.{wb}"] = torch.cat([sd.pop(f"{p}attn1.to_{n}.{wb}") for n in "qkv"], dim=0)
            take(f"{p}attn1.to_out.0.{wb}", f"{q}proj.{wb}")
            take(f"{p}ff.net.0.proj.{wb}", f"{q}mlp.fc1.{wb}")
            take(f"{p}ff.net.2.{wb}", f"{q}mlp.fc2.{wb}")
    if sd:
        raise KeyError(f"unexpected keys in the diffusers checkpoint: {sorted(sd)[:8]}")
    dit.load_state_dict(out, strict=True)
    return dit if dtype == torch.float32 else dit.to(dtype=dtype)


def _diffusers_misfit(cfg: DiTConfig) -> str | None:
    """The first field of a ditlab `DiTConfig` that diffusers' DiT cannot express, as 'field=value (expected)'."""
    patch = cfg.patch
    checks = [
        ("token_kind", cfg.token_kind == "2d", "'2d'"),
        ("pos_embed", cfg.pos_embed == "sincos", "'sincos'"),
        ("num_classes", cfg.num_classes > 0, "> 0 (diffusers' DiT is class-conditional)"),
        ("time_freq_shift", cfg.time_freq_shift == 1.0, "1.0"),
        ("norm_eps", cfg.norm_eps == 1e-6, "1e-6"),
        ("mlp_ratio", cfg.mlp_ratio == 4.0, "4.0"),
        ("patch_size", len(set(patch)) == 1, "one size for both axes"),
        ("input_size", cfg.input_size is not None and len(set(cfg.input_size)) == 1,
         "a square size [s, s] (diffusers' sample_size)"),
        ("qk_norm", not cfg.qk_norm, "False"),
        ("cond_dim", cfg.cond_dim == 0, "0"),
        ("context_dim", cfg.context_dim == 0, "0"),
        ("window_size", not any(cfg.window), "0 (global attention)"),
        ("learn_sigma", not cfg.learn_sigma, "False"),
    ]
    for name, ok, expected in checks:
        if not ok:
            return f"{name}={getattr(cfg, name)!r} (diffusers' DiT needs {expected})"
    return None


def dit_to_diffusers(dit: DiT) -> DiTTransformer2DModel:
    """A diffusers `DiTTransformer2DModel` with the same outputs as the ditlab `dit` (fp32, eval mode).

    Only for configs diffusers can express (2d, sin-cos, class-conditional, time shift 1, attention-norm eps
    1e-6 (the MLP norm's eps becomes diffusers' norm_eps), MLP ratio 4, square patches and input size, no
    qk-norm / cond / context / windows / learn-sigma); otherwise a ValueError names the first field that
    does not fit. Our fused qkv is split into to_q/to_k/to_v and the shared embedders are copied into every
    block. diffusers fixes the label dropout at 0.1, which matters for training only.
    """
    from diffusers import DiTTransformer2DModel

    cfg = dit.cfg
    misfit = _diffusers_misfit(cfg)
    if misfit is not None:
        raise InputError(f"this DiT has no diffusers DiTTransformer2DModel equivalent: {misfit}")
    ref = DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
        attention_bias=cfg.qkv_bias, sample_size=cfg.input_size[0], patch_size=cfg.patch[0],
        num_embeds_ada_norm=cfg.num_classes,
        norm_eps=cfg.mlp_norm_eps if cfg.mlp_norm_eps is not None else cfg.norm_eps,
    )
    sd = {k: v.detach().float() for k, v in dit.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    shared = {"timestep_embedder.linear_1": "t_embedder.mlp.0", "timestep_embedder.linear_2": "t_embedder.mlp.2",
              "class_embedder.embedding_table": "y_embedder.embedding_table"}
    top = {"pos_embed.proj": "x_embedder.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
           "proj_out_2": "final_layer.linear"}
    per_block = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "proj", "ff.net.0.proj": "mlp.fc1",
                 "ff.net.2": "mlp.fc2"}
    for key in ref.state_dict():
        stem, _, wb = key.rpartition(".")
        if stem in top:
            out[key] = sd[f"{top[stem]}.{wb}"]
            continue
        _, i, rest = stem.split(".", 2)  # transformer_blocks.{i}.{rest}
        if rest.startswith("norm1.emb."):
            out[key] = sd[f"{shared[rest.removeprefix('norm1.emb.')]}.{wb}"].clone()
        elif rest.startswith("attn1.to_") and rest[-1] in "qkv":
            out[key] = sd[f"blocks.{i}.x.qkv.{wb}"].chunk(3, dim=0)["qkv".index(rest[-1])].clone()
        else:
            out[key] = sd[f"blocks.{i}.x.{per_block[rest]}.{wb}"]
    ref.load_state_dict(out, strict=True)
    return ref.eval()
