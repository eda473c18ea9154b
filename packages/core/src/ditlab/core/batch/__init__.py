"""The batch engine: items -> a predictor -> outputs, with a manifest, resume and per-item errors.

Every vertical's `batch` command is `run_batch(items, predict, out_dir)`: `predict(item)` reads
`item.input`, writes `item.output` (atomically: the verticals' writers are) and returns a dict of figures
for the manifest. A failing item is recorded with its error and the batch goes on. `out_dir/manifest.jsonl`
gets one JSON line per attempt; a re-run skips the items whose last attempt succeeded and whose output is
still there. Engines: "local" (in this process, one item at a time) and "ray" (one Ray task per item, on
a local or existing Ray cluster; needs `pip install ray`).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditlab.core.errors import InputError

ENGINES = ("local", "ray")
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Item:
    """One unit of work: a name, the input path and where its output goes."""

    id: str
    input: str
    output: str


@dataclass
class BatchReport:
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    skipped: list[str] = field(default_factory=list)
    manifest: str = ""

    @property
    def exit_code(self) -> int:
        """0 when every item succeeded (or was already done), 1 when any failed."""
        return 1 if self.failed else 0

    def summary(self) -> str:
        lines = [f"{len(self.ok)} done, {len(self.skipped)} already done, {len(self.failed)} failed "
                 f"(manifest: {self.manifest})"]
        lines += [f"  FAILED {k}: {v}" for k, v in self.failed.items()]
        return "\n".join(lines)


def items_from_folder(in_dir: str | Path, out_dir: str | Path, suffixes: Sequence[str],
                      out_name: Callable[[Path], str], include_dirs: bool = False) -> list[Item]:
    """Items for the files in `in_dir` whose names end with one of `suffixes` (and sub-folders when
    `include_dirs`, e.g. DICOM series), sorted by name; `out_name(path)` names each output in `out_dir`."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"no such input folder: {in_dir}")
    if out_dir.resolve() == in_dir.resolve():
        raise InputError(f"the output folder must differ from the input folder ({in_dir})")
    items = []
    for p in sorted(in_dir.iterdir()):
        if p.is_file() and p.name.lower().endswith(tuple(s.lower() for s in suffixes)) or include_dirs and p.is_dir():
            items.append(Item(p.name, str(p), str(out_dir / out_name(p))))
    if not items:
        raise InputError(f"{in_dir} holds no inputs; expected files ending with {list(suffixes)}"
                         + (" or folders" if include_dirs else ""))
    return items


def read_manifest(path: str | Path) -> dict[str, dict]:
    """The last recorded attempt per item id (lines that do not parse are ignored)."""
    last: dict[str, dict] = {}
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                last[rec["id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return last


def _attempt(predict: Callable[[Item], dict | None], item: Item) -> dict:
    t0 = time.perf_counter()
    try:
        figures = dict(predict(item) or {})
        rec = {"status": "ok"}
    except Exception as e:  # one bad item must not stop the batch: record it and go on
        figures, rec = {}, {"status": "error", "error": f"{type(e).__name__}: {e}",
                            "trace": traceback.format_exc(limit=3)[-2000:]}
    # the predictor's figures never overwrite the engine's own fields (a predictor's "seconds" is kept aside)
    reserved = {"id", "input", "output", "seconds", "status", "error", "trace"}
    figures = {(f"item_{k}" if k in reserved else k): v for k, v in figures.items()}
    return {**figures, "id": item.id, "input": item.input, "output": item.output,
            "seconds": round(time.perf_counter() - t0, 3), **rec}


def run_batch(items: Iterable[Item], predict: Callable[[Item], dict | None], out_dir: str | Path,
              engine: str = "local", resume: bool = True, on_item: Callable[[dict], Any] | None = None,
              ray_address: str | None = None) -> BatchReport:
    """Run `predict` over `items`, appending one manifest line per attempt to `out_dir/manifest.jsonl`."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    done = read_manifest(manifest) if resume else {}
    report = BatchReport(manifest=str(manifest))
    todo = []
    for item in items:
        prev = done.get(item.id)
        if prev and prev.get("status") == "ok" and Path(item.output).exists():
            report.skipped.append(item.id)
        else:
            todo.append(item)

    def record(rec: dict) -> None:
        if manifest.is_file() and manifest.stat().st_size:
            with open(manifest, "rb") as f:  # a line cut short by a crash must not swallow the next record
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                with open(manifest, "a") as f:
                    f.write("\n")
        with open(manifest, "a") as f:
            f.write(json.dumps({k: v for k, v in rec.items() if k != "trace"}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if rec["status"] == "ok":
            report.ok.append(rec["id"])
        else:
            report.failed[rec["id"]] = rec["error"]
        if on_item is not None:
            on_item(rec)

    if engine == "local":
        for item in todo:
            record(_attempt(predict, item))
    else:
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("engine 'ray' needs the ray package (pip install 'ray[default]'); "
                               "use engine 'local' without it") from e
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        try:
            remote = ray.remote(_attempt)
            pending = {remote.remote(predict, item): item for item in todo}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    pending.pop(ref)
                    record(ray.get(ref))
        finally:
            if started_here:
                ray.shutdown()
    return report
