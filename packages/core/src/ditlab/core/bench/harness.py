"""The one benchmark harness every `ditlab <v> benchmark` is built on.

A `Report` holds rows (task, method, metric, value), goals with a direction and whether they are met, and
notes, together with the machine, the UTC date and time and the exact command of the run. It renders as
markdown (one table per task: methods as rows, metrics as columns; then the notes and the goals) and as the
JSON of ARCHITECTURE.md, written atomically. `time_interleaved` times several callables in turn (A B A B ...)
so that drift on a shared machine hits them alike; `PeakMemory` measures a region in this process and
`run_in_child` runs a job in a fresh process for its own peak RSS.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil
import torch

from ditlab.core.files import write_json

CPU_FLAGS = {"AMX": ("amx_tile",), "VNNI": ("avx512_vnni", "avx_vnni"), "avx512_bf16": ("avx512_bf16",)}
"""The CPU features that decide which bf16 / int8 kernels a CPU run gets: name -> /proc/cpuinfo flags."""
DIRECTIONS = ("higher", "lower")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _cpu(cpuinfo: Path) -> tuple[str, set[str] | None]:
    """The CPU model and its flags from `cpuinfo`; the platform's name and None (flags unknown) without it."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name":
            model = value
        elif key == "flags":
            flags = set(value.split())
            break  # the first processor's entry is enough
    return model, flags


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine(device: torch.device | str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """What the numbers depend on: CPU model, cores and the AMX / VNNI / avx512_bf16 flags (None: unknown; read
    from `cpuinfo`), torch threads, the load average at call time (other jobs skew every number), library
    versions, the device and, on CUDA, the GPU."""
    device = torch.device(device)
    model, flags = _cpu(Path(cpuinfo))
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": {name: None if flags is None else bool(flags & set(names)) for name, names in CPU_FLAGS.items()},
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict) -> str:
    """`machine()` as one line for a report's header."""
    flags = ", ".join(f"{name} {'unknown' if v is None else 'yes' if v else 'no'}" for name, v in info["flags"].items())
    libs = f"torch {info['torch']}" + (f", diffusers {info['diffusers']}" if info.get("diffusers") else "")
    device = info["device"] + (f" ({info['gpu']})" if info.get("gpu") else "")
    load = "" if info["load_average"] is None else f"; load average {' '.join(map(str, info['load_average']))}"
    return (f"{info['cpu']}, {info['cores']} cores ({flags}); {info['os']}, Python {info['python']}; {libs}, "
            f"{info['torch_threads']} torch threads; device {device}{load}")


def command(argv: Sequence[str] | None = None) -> str:
    """The command that ran, from `argv` (default `sys.argv`), shell-quoted, with the program named `ditlab`."""
    argv = sys.argv if argv is None else argv
    return shlex.join(["ditlab", *argv[1:]])


def utc_now() -> str:
    """The date and time now in UTC, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _round(value: float) -> float:
    """Six significant digits (keeps 3e-7 and 12345.6 alike); + 0.0 turns -0.0 into 0.0."""
    return float(f"{float(value):.6g}") + 0.0


def _fmt(value: float | None) -> str:
    if value is None:
        return "not measured"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def _columns(per_method: Iterable[Iterable[str]]) -> list[str]:
    """The metrics of a task in an order every method agrees with: each method's metrics in the order it gave
    them, a metric one method lacks placed after the one it follows in another's (rather than at the end)."""
    columns: list[str] = []
    for metrics in per_method:
        at = 0
        for metric in metrics:
            if metric in columns:
                at = columns.index(metric) + 1
            else:
                columns.insert(at, metric)
                at += 1
    return columns


@dataclass
class Report:
    """The rows, goals and notes of one benchmark run, with the machine, date and command it ran on."""

    title: str
    machine: dict = field(default_factory=machine)
    date: str = field(default_factory=utc_now)
    command: str = field(default_factory=command)
    rows: list[dict] = field(default_factory=list)
    goals: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # further top-level JSON keys

    def row(self, task: str, method: str, metric: str, value: float) -> None:
        """One measurement: `value` of `metric` for `method` on `task`."""
        self.rows.append({"task": task, "method": method, "metric": metric, "value": _round(value)})

    def goal(self, name: str, target: float, value: float | None, direction: str = "higher") -> bool | None:
        """A target `value` should reach: at least `target` ("higher") or at most ("lower"). Returns `met`,
        None when `value` is None (not measured in this run)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"goal {name!r}: direction must be one of {DIRECTIONS}, got {direction!r}")
        met = None if value is None else bool(value >= target if direction == "higher" else value <= target)
        self.goals.append({"name": name, "target": _round(target), "value": None if value is None else _round(value),
                           "met": met, "direction": direction})
        return met

    def to_json(self) -> dict:
        """`{"machine", "date", "command", "rows", "goals"}` of ARCHITECTURE.md, with the title, notes and extras."""
        return {"title": self.title, "machine": self.machine, "date": self.date, "command": self.command,
                "rows": self.rows, "goals": self.goals, "notes": self.notes, **self.extra}

    def write(self, path: str | Path) -> Path:
        """Write the JSON atomically (a reader never sees half a file); call it again to update the file."""
        return write_json(path, self.to_json())

    def publish(self, json_path: str | Path | None = None, echo: Callable[[str], object] = print) -> dict:
        """The end of a run: print the markdown, write the JSON when asked (and say where); return the JSON."""
        echo(self.markdown())
        if json_path is not None:
            self.write(json_path)
            echo(f"wrote {json_path}")
        return self.to_json()

    def markdown(self) -> str:
        """The header, one table per task (methods x metrics), the notes, then the goals."""
        lines = [f"## {self.title}", "", machine_line(self.machine), "", f"{self.date}: `{self.command}`", ""]
        tasks: dict[str, dict[str, dict[str, float]]] = {}
        for r in self.rows:
            tasks.setdefault(r["task"], {}).setdefault(r["method"], {})[r["metric"]] = r["value"]
        for task, methods in tasks.items():
            metrics = _columns(methods.values())
            lines += [f"**{task}**", "", f"| method | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
            lines += [f"| {method} | " + " | ".join(_fmt(v[m]) if m in v else "" for m in metrics) + " |"
                      for method, v in methods.items()]
            lines.append("")
        for note in self.notes:
            lines += [note, ""]
        if self.goals:
            lines += ["| goal | target | value | met |", "|---|---|---|---|"]
            lines += [f"| {g['name']} | {'>=' if g['direction'] == 'higher' else '<='} {_fmt(g['target'])} | "
                      f"{_fmt(g['value'])} | {'n/a' if g['met'] is None else 'yes' if g['met'] else 'no'} |"
                      for g in self.goals]
        return "\n".join(lines).rstrip("\n")


def select_parts(only: str | None, parts: Sequence[str]) -> tuple[str, ...]:
    """--only of a vertical's benchmark: `parts` when None, else the comma-separated names, each one of `parts`
    (a `UsageError` naming them otherwise)."""
    from ditlab.core.errors import UsageError

    chosen = tuple(parts) if only is None else tuple(p.strip() for p in only.split(","))
    if not chosen or any(p not in parts for p in chosen):
        raise UsageError(f"--only must be one or more of {tuple(parts)} (comma-separated), got {only!r}")
    return chosen


class Recorder:
    """`record(task, method, m)`: keep the measurement dict `m` in `results[(task, method)]` (what the goals are
    judged on), add its `metrics` as report rows, and echo one line (`line(task, method, m)`, default: every
    number of `m` at 4 significant figures)."""

    def __init__(self, report: Report, metrics: Sequence[str], echo: Callable[[str], object] = print,
                 line: Callable[[str, str, dict], str] | None = None) -> None:
        self.report, self.metrics, self.echo, self.line = report, tuple(metrics), echo, line
        self.results: dict[tuple[str, str], dict] = {}

    def __call__(self, task: str, method: str, m: dict) -> None:
        self.results[(task, method)] = m
        for metric in self.metrics:
            if metric in m:
                self.report.row(task, method, metric, m[metric])
        if self.line is not None:
            self.echo(self.line(task, method, m))
        else:
            self.echo(f"{task} / {method}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()
                                                         if isinstance(v, int | float) and not isinstance(v, bool)))


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """Median seconds per call of each function, timing them in turn (A B A B ...) after `warmup` untimed rounds;
    on a CUDA `device` each call is timed to its end (synchronized)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def exact_rss_accounting() -> None:
    """Make the process RSS follow live CPU tensors (glibc): serve allocations of 64 KiB or more by mmap,
    so that freeing one returns its pages. glibc's default adaptive threshold keeps freed tensors in the
    heap, which makes a region's RSS depend on what ran before it. Call it after all timing: one mmap
    per allocation is slower than the default."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def _release_free_heap() -> None:
    """Hand free heap pages back to the OS, so that a region's RSS starts from live memory."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of a region of this process above its start, in bytes: the CUDA allocator's peak on a GPU;
    on the CPU the process RSS, sampled every `interval` seconds from a background thread (see
    `exact_rss_accounting`). For a whole job's peak, `run_in_child` is simpler and exact."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002):
        self.device, self.interval = torch.device(device), interval
        self.start = self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_heap()
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def used(self) -> int:
        return self.peak - self.start


@dataclass(frozen=True)
class ChildRun:
    """What `run_in_child` measured: the job's return value, its seconds, and the child's own peak RSS in MiB (the
    interpreter and its imports included: what running the job as its own process takes; not the parent's)."""

    result: object
    seconds: float
    peak_mb: float


_CHILD = "import sys; from ditlab.core.bench.harness import _child; _child(sys.argv[1], sys.argv[2])"


def run_in_child(target: Callable | str, args: tuple = (), kwargs: dict | None = None, threads: int = 0) -> ChildRun:
    """Run `target(*args, **kwargs)` in a fresh Python process on `threads` torch threads (0: as many as this
    process uses) and return its result, seconds and peak RSS (`ChildRun`). `target` is a module-level function
    (sent by name, so the child must be able to import it; arguments and result are pickled) or Python code,
    whose result is the variable `result` it sets."""
    name = "code" if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
    with tempfile.TemporaryDirectory(prefix="ditlab-child-") as tmp:
        job, out = Path(tmp, "job.pickle"), Path(tmp, "out.pickle")
        job.write_bytes(pickle.dumps((target, args, kwargs or {}, threads or torch.get_num_threads())))
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(job), str(out)], check=False)
        if not out.exists():
            raise ChildProcessError(f"the child process running {name} exited with code {proc.returncode} before "
                                    f"returning a result (its stderr is above)")
        status, *payload = pickle.loads(out.read_bytes())
    if status == "error":
        raise ChildProcessError(f"{name} failed in a child process:\n{payload[0]}")
    return ChildRun(*payload)


def _child(job: str, out: str) -> None:
    """The child's side of `run_in_child`: run the job, then write ("ok", result, seconds, peak MiB) or
    ("error", traceback) to `out`."""
    target, args, kwargs, threads = pickle.loads(Path(job).read_bytes())
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        if isinstance(target, str):
            namespace: dict = {}
            exec(target, namespace)
            result = namespace.get("result")
        else:
            result = target(*args, **kwargs)
    except BaseException:  # the parent raises it, with this traceback
        Path(out).write_bytes(pickle.dumps(("error", traceback.format_exc())))
        return
    seconds = time.perf_counter() - start
    Path(out).write_bytes(pickle.dumps(("ok", result, seconds, _peak_rss_mb())))


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: Linux's VmHWM, since getrusage's ru_maxrss starts a child at its parent's
    peak (exec keeps the larger of the two); ru_maxrss where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    (kib,) = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    return int(kib) / 1024
