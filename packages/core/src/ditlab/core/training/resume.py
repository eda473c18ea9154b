"""Resume files: a trainer checkpoint packed into one half-precision safetensors file, to carry a run that
lasts several sessions from one machine to the next.

The file holds the weights as `model.<key>` and the EMA as `ema.<key>` (floating tensors in float16) and the
checkpoint's state.json in the metadata under "state": the step, the optimizer's hyper-parameters, the LR
schedule, the loss window and the seconds trained. AdamW moments are left out (they would triple the file)
and restart. One file per model, `training/<model>.resume.safetensors` at the top of the repository (see its
README), overwritten in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ditlab.core.errors import FileFormatError, InputError, UsageError
from ditlab.core.files import atomic_write
from ditlab.core.weights import check_name

from .trainer import CHECKPOINT_NAME, find_checkpoint, replace_folder

TRAINING_DIR_ENV = "DITLAB_TRAINING_DIR"
RESUME_SUFFIX = ".resume.safetensors"
PARTS = ("model", "ema")


def training_dir() -> Path:
    """The repository's `training/` folder: `$DITLAB_TRAINING_DIR` when set, else the `training/` beside the
    nearest `pyproject.toml` at or above the working directory."""
    env = os.environ.get(TRAINING_DIR_ENV)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise UsageError(f"${TRAINING_DIR_ENV} is {env!r}, which is not a folder; expected the training/ "
                             "folder of a ditlab checkout")
        return folder
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "training").is_dir():
            return folder / "training"
    raise UsageError(f"no training/ folder next to a pyproject.toml at or above {cwd}: run from inside the ditlab "
                     f"checkout, set ${TRAINING_DIR_ENV}, or name the resume file explicitly")


def resume_path(model: str) -> Path:
    """Where the resume file of `model` lives: `training_dir() / "<model>.resume.safetensors"`."""
    return training_dir() / f"{check_name(model, 'model name')}{RESUME_SUFFIX}"


def export_resume(checkpoint_dir: str | Path, file: str | Path) -> Path:
    """Pack the trainer checkpoint in `checkpoint_dir` (weights, EMA, state) into `file`, overwritten atomically."""
    found = find_checkpoint(checkpoint_dir)
    if found is None:
        raise FileNotFoundError(f"no trainer checkpoint (state.json) to export in {checkpoint_dir}")
    state = (found / "state.json").read_text()
    tensors = {}
    for part in _parts(json.loads(state)):
        for key, value in load_file(found / f"{part}.safetensors").items():
            tensors[f"{part}.{key}"] = to_half(value, f"{found / part}.safetensors: {key}")
    atomic_write(file, lambda p: save_file(tensors, str(p), metadata={"format": "pt", "state": state}))
    return Path(file)


def to_half(value: torch.Tensor, name: str) -> torch.Tensor:
    """A floating tensor in float16 (others as they are), refusing values float16 cannot hold."""
    if not value.is_floating_point():
        return value.contiguous()
    half = value.half().contiguous()
    if (torch.isfinite(value) & ~torch.isfinite(half)).any():
        raise InputError(f"{name} has values beyond float16's range (|x| > 65504); expected weights a float16 "
                         "resume file can hold")
    return half


def import_resume(file: str | Path, checkpoint_dir: str | Path) -> Path | None:
    """Unpack a resume file into the trainer checkpoint `checkpoint_dir` (float32), so that a `Trainer` whose
    `output_dir/checkpoint` it is goes on from the file's step. A checkpoint already there that is as far along
    is kept (it has its AdamW moments too): then nothing is written and None is returned."""
    file, checkpoint_dir = Path(file), Path(checkpoint_dir)
    state, parts = _read_resume(file)
    local = find_checkpoint(checkpoint_dir)
    if local is not None and json.loads((local / "state.json").read_text())["step"] >= state["step"]:
        return None

    def unpack(folder: Path) -> None:
        for part, tensors in parts.items():
            save_file(tensors, str(folder / f"{part}.safetensors"), metadata={"format": "pt"})
        (folder / "state.json").write_text(json.dumps({**state, "checkpoint_dtype": "float32"}, indent=2) + "\n")

    return replace_folder(checkpoint_dir, unpack)


def resume_run(model: str, out_dir: str | Path, resume_file: str | Path | None = None) -> Path | None:
    """The start of every recipe's `train`: go on from `resume_file` when given (it must exist), else from this
    checkout's `training/<model>.resume.safetensors` when there is one, by unpacking it into `out_dir/checkpoint`
    (`import_resume`: a local checkpoint as far along is kept). Returns the checkpoint written, or None."""
    file = Path(resume_file) if resume_file is not None else resume_path(model)
    if resume_file is None and not file.is_file():
        return None
    return import_resume(file, Path(out_dir) / CHECKPOINT_NAME)


def export_run(model: str, out_dir: str | Path, file: str | Path | None = None) -> Path:
    """Pack `out_dir/checkpoint` into `file` (default: this checkout's `training/<model>.resume.safetensors`)."""
    return export_resume(Path(out_dir) / CHECKPOINT_NAME, file or resume_path(model))


def _parts(state: dict) -> tuple[str, ...]:
    """The tensor files of a checkpoint: weights, and EMA when the run kept one."""
    return PARTS if state["ema"] else PARTS[:1]


def _read_resume(file: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(state, {"model": tensors, "ema": tensors}) of a resume file, floating tensors as float32."""
    if not file.is_file():
        raise FileNotFoundError(f"resume file not found: {file}")
    expected = f"expected a resume file written by export_resume (keys {'.*, '.join(PARTS)}.*, a state)"
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            parts: dict[str, dict[str, torch.Tensor]] = {}
            for key in f.keys():
                part, _, name = key.partition(".")
                if part not in PARTS or not name:
                    raise FileFormatError(f"{file} holds the tensor {key!r}; {expected}")
                value = f.get_tensor(key)
                parts.setdefault(part, {})[name] = value.float() if value.is_floating_point() else value
    except SafetensorError as e:
        raise FileFormatError(f"{file} is not a readable safetensors file ({e}); {expected}") from e
    if "state" not in metadata:
        raise FileFormatError(f"{file} has no state in its metadata; {expected}")
    state = json.loads(metadata["state"])
    missing = [part for part in _parts(state) if part not in parts]
    if missing:
        raise FileFormatError(f"{file} has no {' or '.join(missing)} tensors; {expected}")
    return state, parts
