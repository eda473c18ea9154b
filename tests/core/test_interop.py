"""DiT.from_diffusers: a diffusers DiTTransformer2DModel folder loads with the same outputs."""

import pytest
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file

from ditlab.core.models import DiT


def reference(depth: int = 2) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    ref = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=depth,
                                sample_size=8, patch_size=2, num_embeds_ada_norm=5).eval()
    with torch.no_grad():
        for p in ref.parameters():  # random, non-zero everywhere (like a trained model)
            p.add_(0.05 * torch.randn_like(p))
        shared = ref.transformer_blocks[0].norm1.emb.state_dict()
        for block in ref.transformer_blocks[1:]:  # public checkpoints share one embedder across blocks
            block.norm1.emb.load_state_dict(shared)
    return ref


def test_from_diffusers_folder_matches(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path)
    ours = DiT.from_diffusers(tmp_path).eval()
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 421.0, 999.0])
    y = torch.tensor([0, 4, 5])  # 5 is the null class
    with torch.no_grad():
        diff = (ref(x, t, y).sample - ours(x, t, y)).abs().max().item()
    assert diff <= 1e-4


def test_from_diffusers_rejects_untied_block_embedders(tmp_path):
    ref = reference()
    with torch.no_grad():
        ref.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.weight.add_(1.0)
    with pytest.raises(ValueError, match="own timestep/label embedder"):
        DiT.from_diffusers(ref)


def test_from_diffusers_missing_and_extra_keys(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(file))
    sd.pop("proj_out_2.bias")
    sd["surprise.weight"] = torch.zeros(1)
    save_file(sd, str(file))
    with pytest.raises(KeyError, match="proj_out_2.bias"):
        DiT.from_diffusers(tmp_path)


def test_from_diffusers_refuses_pickle_only_folder(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        DiT.from_diffusers(tmp_path)
