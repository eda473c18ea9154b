"""Weights: safetensors only, pickle refused, keys checked, sha256 verified."""

import pickle

import pytest
import torch

from ditlab.core.models import DiT
from ditlab.core.weights import load_into, load_model, load_state_dict, save_model


def small() -> DiT:
    return DiT(token_kind="1d", in_channels=2, depth=1, hidden_size=32, num_heads=2)


def test_save_and_load_model(tmp_path):
    m = small()
    digest = save_model(m, tmp_path / "w", card="# card\n")
    assert len(digest) == 64 and (tmp_path / "w" / "README.md").exists()
    m2 = load_model(DiT, tmp_path / "w")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))


def test_pickle_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict(path)


def test_tensor_only_pt_loads_and_unknown_format_fails(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_state_dict(tmp_path / "ok.pt")["w"], torch.ones(2))
    (tmp_path / "m.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        load_state_dict(tmp_path / "m.ckpt")


def test_truncated_safetensors(tmp_path):
    m = small()
    save_model(m, tmp_path / "w")
    f = tmp_path / "w" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(DiT, tmp_path / "w")


def test_missing_extra_and_shape_keys_named():
    m = small()
    sd = m.state_dict()
    sd.pop("final_layer.linear.bias")
    sd["bogus"] = torch.zeros(1)
    sd["x_embedder.proj.bias"] = torch.zeros(3)
    with pytest.raises(ValueError) as e:
        load_into(m, sd)
    msg = str(e.value)
    assert "final_layer.linear.bias" in msg and "bogus" in msg and "x_embedder.proj.bias" in msg


def test_unknown_packaged_name():
    with pytest.raises(FileNotFoundError, match="no packaged weights"):
        load_model(DiT, "no-such-model")
