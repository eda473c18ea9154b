"""Files every vertical writes: atomically (readers never see half a file), with safe, predictable names."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, then move it into place with the permissions
    `open()` would give (0666 minus the umask). On any error the temporary file is removed and `path` is left
    as it was. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj) -> Path:
    """Write `obj` as indented JSON (one trailing newline) atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=list) + "\n")


def split_suffix(path: str | Path, suffixes: Iterable[str]) -> tuple[str, str]:
    """(stem, suffix) of a file name, where `suffix` is the longest of `suffixes` it ends with (case-insensitive),
    so `scan.nii.gz` gives ("scan", ".nii.gz"); ("name", "") when none matches."""
    name = Path(path).name
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suffix.lower()) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix.lower()
    return name, ""


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(name: str, suffixes: Iterable[str] = (), default: str = "output", max_len: int = 80) -> str:
    """A file stem safe on every file system from a user-supplied name: the known suffix and any folders
    dropped, runs of other characters replaced by `-`, no leading dot, at most `max_len` characters."""
    stem, _ = split_suffix(Path(str(name).replace("\\", "/")).name, suffixes)
    stem = _UNSAFE.sub("-", stem).strip("._-")[:max_len]
    return stem or default
