"""Weights: safetensors only, pickle refused, keys checked, sha256 verified, packaged with their SHA256SUMS line."""

import pickle
import sys

import pytest
import torch

from ditlab.core.errors import FileFormatError, InputError
from ditlab.core.models import DiT
from ditlab.core.weights import (
    load_into,
    load_model,
    load_state_dict,
    package,
    packaged_root,
    recorded_digests,
    save_model,
    sha256_file,
)


def small() -> DiT:
    return DiT(token_kind="1d", in_channels=2, depth=1, hidden_size=32, num_heads=2)


def test_save_and_load_model(tmp_path):
    m = small()
    digest = save_model(m, tmp_path / "w", card="# card\n")
    assert len(digest) == 64 and (tmp_path / "w" / "README.md").exists()
    m2 = load_model(DiT, tmp_path / "w")
    # stored weights: a lossless fp32 safetensors round trip, no arithmetic, so exactly equal on any CPU
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


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """An importable throwaway package, `weights_pkg`, whose weights/ folder lies in tmp_path."""
    (tmp_path / "weights_pkg").mkdir()
    (tmp_path / "weights_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("weights_pkg", None)
    yield "weights_pkg"
    sys.modules.pop("weights_pkg", None)


def test_package_writes_the_folder_and_its_sha256_line_keeping_the_others(pkg):
    root = packaged_root(pkg)
    root.mkdir()
    others = [f"{'a' * 64}  zeta/model.safetensors", f"{'b' * 64}  alpha/diffusion_pytorch_model.safetensors"]
    (root / "SHA256SUMS").write_text("\n".join(others) + "\n")

    torch.manual_seed(0)
    result = package(small(), "mid", pkg, "# card\n", dtype=torch.float16)
    folder = root / "mid"
    assert result == {"folder": str(folder), "sha256": sha256_file(folder / "model.safetensors")}
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / "README.md").read_text() == "# card\n"
    assert {v.dtype for v in load_state_dict(folder / "model.safetensors").values()} == {torch.float16}
    assert (root / "SHA256SUMS").read_text().splitlines() == [
        others[1], f"{result['sha256']}  mid/model.safetensors", others[0]]  # sorted by name

    torch.manual_seed(1)
    again = package(small(), "mid", pkg, "# card\n")  # other weights: the line is replaced, not added
    assert again["sha256"] != result["sha256"]
    assert recorded_digests(pkg) == {"alpha": "b" * 64, "mid": again["sha256"], "zeta": "a" * 64}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_packaged_weights_are_verified_on_load(pkg):
    torch.manual_seed(0)
    m = small()
    package(m, "w", pkg, "# card\n")
    loaded = load_model(DiT, "w", package=pkg)
    # stored weights: a lossless fp32 safetensors round trip, no arithmetic, so exactly equal on any CPU
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values(), strict=True))

    (packaged_root(pkg) / "w" / "README.md").write_text("# a rewritten card\n")  # only the weights are hashed
    load_model(DiT, "w", package=pkg)
    weights = packaged_root(pkg) / "w" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1  # one bit of the last tensor: still a readable safetensors file
    weights.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="sha256 mismatch"):
        load_model(DiT, "w", package=pkg)


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "", ".hidden", "/abs"])
def test_package_refuses_names_with_folder_parts(pkg, tmp_path, name):
    with pytest.raises(InputError, match="plain name"):
        package(small(), name, pkg, "# card\n")
    assert not (tmp_path / "evil").exists() and not (packaged_root(pkg) / "SHA256SUMS").exists()


def test_package_refuses_a_folder_holding_pickle_weights(pkg):
    folder = packaged_root(pkg) / "w"
    folder.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"pickle weights \['pytorch_model.bin'\]; .*safetensors only"):
        package(small(), "w", pkg, "# card\n")
    assert not (folder / "model.safetensors").exists()
