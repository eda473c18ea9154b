"""Packaged weights: find them by name, verify their sha256, load them; safetensors only.

A weights folder is Hub-style: `config.json` + `model.safetensors` (diffusers' name
`diffusion_pytorch_model.safetensors` is read too) + `README.md` (the model card). Packaged folders
live in `<package>/weights/<name>/`, their digests in `<package>/weights/SHA256SUMS` (one line per folder:
the sha256 of its weights file and that file's path, `<digest>  <name>/model.safetensors`); `package()` writes
both. Only the weights file is hashed, so a model card can be edited without changing the digest.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ditlab.core.errors import FileFormatError, InputError
from ditlab.core.files import atomic_write, safe_stem, write_json, write_text

WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SUMS_NAME = "SHA256SUMS"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file: safetensors, or `.pt`/`.bin`/`.pth` through `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise FileFormatError(f"{path} is not a readable safetensors file ({e})") from e
    if path.suffix in (".pt", ".bin", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FileFormatError(f"{path} is a pickle checkpoint that does not load with weights_only=True "
                             f"(it may hold code, which ditlab never runs); convert it to safetensors ({e})") from e
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FileFormatError(f"{path}: expected a flat dict of tensors, got {type(state).__name__}")
        return state
    raise FileFormatError(f"unsupported checkpoint format {path.suffix!r} for {path}; expected .safetensors "
                     "(or .pt/.bin/.pth tensors-only, read with weights_only=True)")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load that names missing and unexpected keys and mismatched shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected keys {extra[:8]}{' ...' if len(extra) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:4]}")
        raise InputError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def save_model(model, folder: str | Path, card: str | None = None, dtype: torch.dtype | None = None) -> str:
    """Write `config.json` + `model.safetensors` (+ `README.md`) and return the weights' sha256."""
    folder = Path(folder)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    write_json(folder / "config.json", {"_class_name": type(model).__name__, **dict(model.config)})
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    if card is not None:
        write_text(folder / "README.md", card)
    return sha256_file(folder / "model.safetensors")


def packaged_root(package: str = "ditlab.core") -> Path:
    return Path(str(importlib.resources.files(package))) / "weights"


def _sums(package: str) -> dict[str, tuple[str, str]]:
    """name -> (sha256, path of the weights file relative to `weights/`), from the package's SHA256SUMS."""
    sums = packaged_root(package) / SUMS_NAME
    out = {}
    if sums.is_file():
        for line in sums.read_text().splitlines():
            if line.strip():
                digest, rel = line.split(maxsplit=1)
                out[rel.strip().split("/")[0]] = (digest, rel.strip())
    return out


def recorded_digests(package: str = "ditlab.core") -> dict[str, str]:
    """name -> sha256 of `<name>/model.safetensors`, from the package's SHA256SUMS."""
    return {name: digest for name, (digest, _) in _sums(package).items()}


def check_name(name: str, what: str = "weights name") -> str:
    """`name` itself when it is a plain name (letters, digits, `.`, `_`, `-`; no folders), else an InputError."""
    if not isinstance(name, str) or not name or safe_stem(name, default="") != name:
        raise InputError(f"{what} must be a plain name of letters, digits, '.', '_' and '-' with no folder part, "
                         f"got {name!r}")
    return name


def package(model, name: str, package: str, card: str, dtype: torch.dtype | None = None) -> dict:
    """Write `model` as the packaged weights `<package>/weights/<name>/` (config.json, model.safetensors and the
    model card README.md) and record its sha256 in that package's SHA256SUMS, the other lines kept, sorted by
    name. Safetensors only: a folder that holds pickle weights is refused. Returns {"folder", "sha256"}."""
    root = packaged_root(package)
    folder = root / check_name(name)
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(f"{folder} holds pickle weights {pickles}; packaged weights are safetensors only: "
                         "delete those files first")
    digest = save_model(model, folder, card=card, dtype=dtype)
    sums = {**_sums(package), name: (digest, f"{name}/model.safetensors")}
    write_text(root / SUMS_NAME, "".join(f"{d}  {rel}\n" for _, (d, rel) in sorted(sums.items())))
    return {"folder": str(folder), "sha256": digest}


def resolve(name_or_path: str | Path, package: str = "ditlab.core") -> tuple[Path, str | None]:
    """A weights folder and the sha256 it must have (None for user folders, which are not recorded)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path, None
    root = packaged_root(package)
    if (root / str(name_or_path)).is_dir():
        digest = recorded_digests(package).get(str(name_or_path))
        if digest is None:
            raise ValueError(f"packaged weights {name_or_path!r} have no recorded sha256 in {root / SUMS_NAME}")
        return root / str(name_or_path), digest
    names = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
    raise FileNotFoundError(f"no weights folder at '{name_or_path}' and no packaged weights of that name "
                            f"in {package} (packaged: {names})")


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    pickles = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
    hint = f" (found {pickles}: convert them to safetensors)" if pickles else ""
    raise FileNotFoundError(f"expected {' or '.join(WEIGHT_NAMES)} in {folder}{hint}")


def load_model(cls, name_or_path: str | Path, package: str = "ditlab.core", checkpoint: str | Path | None = None,
               device: str | torch.device = "cpu"):
    """Build `cls` from a weights folder's config.json and load its safetensors, verifying the recorded
    sha256 for packaged weights. `checkpoint` (a file) overrides the folder's weights."""
    folder, digest = resolve(name_or_path, package)
    config = json.loads((folder / "config.json").read_text())
    wfile = Path(checkpoint) if checkpoint is not None else weights_file(folder)
    if digest is not None and checkpoint is None:
        actual = sha256_file(wfile)
        if actual != digest:
            raise FileFormatError(f"sha256 mismatch for {wfile}: recorded {digest}, file has {actual}")
    model = cls.from_config(config)
    load_into(model, load_state_dict(wfile), source=str(wfile))
    return model.to(device).eval()
