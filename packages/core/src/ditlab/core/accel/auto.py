"""`precision="auto"`: run a DiT the fastest way this machine allows, within a stated error bound.

A *mode* is how one network call is computed: a number format (fp32; bf16 autocast; int8 weights with
dynamically quantized int8 activations; fp8 on Hopper/Ada GPUs) and whether the transformer blocks are
compiled (`compile_blocks`). Which mode is fastest depends on the machine more than on anything a rule can
read from its flags: on an AMD EPYC with avx512_bf16 and VNNI (no AMX) bf16 ran a DiT-S 1.7x faster than
fp32 and int8 + compile 2.5x; on an Intel Xeon with the same flags bf16 ran at 0.64x of fp32; on an AMX Xeon
bf16 + compile ran at 3.1x. So `auto` measures:

1. the flags rule out what cannot run (bf16 without avx512_bf16/AMX/Arm bf16 or bf16 tensor cores, fp8 below
   compute capability 8.9, compile without a C++ compiler or Triton, int8 without torchao);
2. a one-time *calibration* runs every remaining mode on the model at hand, on the caller's own input shapes
   (`Probe`), at three noise levels: the median time of interleaved calls, and the error of each output
   against fp32 eager as a signal-to-noise ratio, SNR = 10 log10(|ref|^2 / |out - ref|^2) (the worst of the
   three noise levels);
3. the choice is the fastest mode whose SNR is at least `min_snr_db` (`MIN_SNR_DB`, 55 dB: on the 256-token
   benchmark models a per-call SNR of 55 dB or more cost at most 0.3 dB of 50-step sampling PSNR, BENCHMARKS.md
   "Core speed"); a mode must also beat the simpler one it builds on by `MIN_GAIN` (5%), so that timing noise
   does not pick a compiled mode that buys nothing. If no mode but fp32 passes, fp32 eager it is, and the
   choice says so;
4. the result is kept per model and machine: a JSON file under `$XDG_CACHE_HOME/ditlab/precision/` named by a
   fingerprint of the model's config and weights, the probe's shapes, the device (CPU model and flags, or GPU
   name), the torch version and thread count, the modes tried and the bound. Later processes read it instead
   of calibrating again; `recalibrate=True` (`ditlab core info --recalibrate`) measures anew.

`prepare(model, precision)` returns the network to call (the model itself in fp32/bf16 eager, else a
quantized and/or compiled copy: the caller's model is never changed) and the autocast context to call it in.
A requested mode the hardware lacks is an `InputError` naming what it lacks and what the machine has; an
unknown name is one too. The environment variable `DITLAB_PRECISION` sets the default for a process (the
tests run with `fp32`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import platform
import warnings
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ditlab.core.accel import precision as _precision
from ditlab.core.bench.harness import time_interleaved
from ditlab.core.errors import InputError

ENV = "DITLAB_PRECISION"
MIN_SNR_DB = 55.0
MIN_GAIN = 0.05
COMPILE_MIN_MS = 30.0  # compile is tried only where an fp32 eager call takes this long: below, it cannot pay back
PROBE_TIMES = (0.9, 0.5, 0.1)  # noise levels of the calibration calls, as fractions of the model's time range
CACHE_VERSION = 1


@dataclass(frozen=True)
class Mode:
    """One way of computing a network call: `fmt` "fp32" | "bf16" | "int8" | "fp8", compiled blocks or not."""

    fmt: str
    compile: bool = False

    @property
    def name(self) -> str:
        return self.fmt + ("+compile" if self.compile else "")

    @property
    def base(self) -> str | None:
        """The simpler mode this one must beat by `MIN_GAIN`: the same format eager, or fp32 for eager formats."""
        if self.compile:
            return self.fmt
        return None if self.fmt == "fp32" else "fp32"


MODES: dict[str, Mode] = {m.name: m for m in (Mode("fp32"), Mode("fp32", True), Mode("bf16"), Mode("bf16", True),
                                               Mode("int8"), Mode("int8", True), Mode("fp8", True))}
PRECISIONS: tuple[str, ...] = ("auto", *MODES)


def check_precision(precision: str) -> str:
    """`precision` if it is "auto" or a mode name, else an InputError listing the valid ones."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def default_precision() -> str:
    """The process default: $DITLAB_PRECISION if set (checked), else "auto"."""
    value = os.environ.get(ENV, "").strip() or "auto"
    if value not in PRECISIONS:
        raise InputError(f"${ENV} must be one of {list(PRECISIONS)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# What the hardware has
# ----------------------------------------------------------------------------------------------

def _machine_has(device: torch.device) -> str:
    """What the device offers, in words, for error messages."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    flags = _precision._cpu_flags()
    listed = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "bf16", "i8mm"))
    return f"{cpu_name()} with {', '.join(listed) or 'no AVX2/AVX-512/AMX flags'}"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else `platform.processor()`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mode_missing(mode: Mode, device: torch.device) -> str | None:
    """Why `mode` cannot run on `device`, or None when it can."""
    if device.type not in ("cpu", "cuda"):
        return None if mode.name == "fp32" else f"only fp32 eager is supported on {device.type!r}"
    if mode.fmt == "bf16":
        ok, why = _precision.bf16_supported(device)
        if not ok:
            return f"bf16: {why}"
    if mode.fmt == "fp8":
        missing = _precision._fp8_missing(device)
        if missing:
            return missing
    if mode.fmt in ("int8", "fp8"):
        try:
            _precision._import_torchao()
        except ImportError as err:
            return f"{mode.fmt} needs torchao ({err}); install it with `pip install 'ditlab-core[accel]'`"
    if mode.compile:
        missing = _precision._compiler_missing(device)
        if missing:
            return f"compile: {missing}"
    return None


def available(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Every mode name -> None where it can run on `device`, else why not."""
    dev = torch.device(device)
    return {name: mode_missing(mode, dev) for name, mode in MODES.items()}


def apply(model: nn.Module, mode: Mode | str) -> tuple[nn.Module, Callable[[], AbstractContextManager]]:
    """The network that computes `model` in `mode` (the model itself for fp32 and bf16 eager; otherwise a
    quantized and/or compiled copy) and the factory of the autocast context to call it in."""
    mode = MODES[mode] if isinstance(mode, str) else mode
    device = _precision._device_of(model)
    missing = mode_missing(mode, device)
    if missing:
        raise InputError(f"precision {mode.name!r} cannot run here: {missing}. This machine: {_machine_has(device)}")
    if mode.fmt in ("fp32", "bf16") and not mode.compile:
        return model, functools.partial(_precision.autocast, device, mode.fmt)
    net = copy.deepcopy(model)
    quant = {"int8": "int8_dynamic", "fp8": "fp8"}.get(mode.fmt)
    net, ctx = _precision.optimize(net, precision="bf16" if mode.fmt == "bf16" else "fp32", compile=mode.compile,
                                   quantize=quant, device=device)
    return net, ctx


def _context(model: nn.Module, mode: Mode) -> Callable[[], AbstractContextManager]:
    """The autocast context `apply` would hand back for `mode` (fp8 blocks run under bf16)."""
    fmt = "bf16" if mode.fmt in ("bf16", "fp8") else "fp32"
    return functools.partial(_precision.autocast, _precision._device_of(model), fmt)


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------

class Probe:
    """One representative network call: `probe(net, t)` runs `net` on the stored input at noise level t in
    [0, 1] (scaled by `time_scale` to the model's time units). `signature` names its shapes for the cache key."""

    def __init__(self, x: torch.Tensor, kwargs: dict | None = None, time_scale: float = 1.0):
        self.x, self.kwargs, self.time_scale = x, dict(kwargs or {}), float(time_scale)

    def __call__(self, net: nn.Module, t: float) -> torch.Tensor:
        tt = torch.full((self.x.shape[0],), t * self.time_scale, device=self.x.device)
        return net(self.x, tt, **self.kwargs)

    @property
    def signature(self) -> str:
        parts = [f"x{tuple(self.x.shape)}"] + [f"{k}{tuple(v.shape)}" for k, v in sorted(self.kwargs.items())
                                               if isinstance(v, torch.Tensor)]
        return ",".join(parts) + f",t*{self.time_scale:g}"


def default_probe(model: nn.Module, batch: int = 16, seed: int = 0) -> Probe:
    """A probe from a ditlab DiT's config: `batch` inputs of its nominal size (sets: 64 elements), the null
    class, zero conditioning vectors, 8 zero context tokens; model time in [0, 1000]."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise InputError(f"a default probe needs a ditlab DiT (with .cfg), got {type(model).__name__}; pass a Probe")
    g = torch.Generator().manual_seed(seed)
    if cfg.token_kind == "set":
        shape = (batch, 64, cfg.in_channels)
    else:
        size = list(cfg.input_size or [p * 8 for p in cfg.patch])
        shape = (batch, cfg.in_channels, *size)
    device = _precision._device_of(model)
    kwargs = {}
    if cfg.num_classes:
        kwargs["class_labels"] = torch.full((batch,), cfg.num_classes, dtype=torch.long, device=device)
    if cfg.cond_dim:
        kwargs["cond"] = torch.zeros(batch, cfg.cond_dim, device=device)
    if cfg.context_dim:
        kwargs["context"] = torch.zeros(batch, 8, cfg.context_dim, device=device)
    return Probe(torch.randn(shape, generator=g).to(device), kwargs, time_scale=1000.0)


@dataclass
class Trial:
    """One mode's calibration: median ms per call, SNR (dB) vs fp32 eager, or why it did not run."""

    mode: str
    ms: float | None = None
    snr_db: float | None = None
    error: str | None = None


@dataclass
class Choice:
    """The mode chosen, why, every trial, the bound and where the choice came from."""

    mode: str
    reason: str
    trials: list[Trial] = field(default_factory=list)
    min_snr_db: float = MIN_SNR_DB
    key: str = ""
    source: str = "calibrated"  # "calibrated" | "cache file" | "requested"

    def to_dict(self) -> dict:
        return {"version": CACHE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Choice:
        fields_ = {k: v for k, v in data.items() if k != "version"}
        fields_["trials"] = [Trial(**t) for t in fields_.get("trials", [])]
        return cls(**fields_)

    def table(self) -> str:
        """The trials as a Markdown table, fastest first, the chosen mode marked."""
        rows = ["| mode | ms per call | x fp32 | SNR vs fp32 (dB) | within bound | note |", "|---|---|---|---|---|---|"]
        fp32 = next((t.ms for t in self.trials if t.mode == "fp32"), None)
        for t in sorted(self.trials, key=lambda t: math.inf if t.ms is None else t.ms):
            speed = f"{fp32 / t.ms:.2f}" if fp32 and t.ms else ""
            snr = "" if t.snr_db is None else ("exact" if math.isinf(t.snr_db) else f"{t.snr_db:.1f}")
            ok = "" if t.snr_db is None else ("yes" if t.snr_db >= self.min_snr_db else "no")
            ms = "" if t.ms is None else f"{t.ms:.1f}"
            note = ("**chosen**" if t.mode == self.mode else "") + (t.error or "")
            rows.append(f"| {t.mode} | {ms} | {speed} | {snr} | {ok} | {note} |")
        return "\n".join(rows)


def snr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(|ref|^2 / |out - ref|^2) in dB; inf when they are equal."""
    err = (out.float() - ref.float()).pow(2).sum().item()
    power = ref.float().pow(2).sum().item()
    return math.inf if err == 0 else 10 * math.log10(max(power, 1e-30) / err)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def pick(trials: list[Trial], min_snr_db: float, allowed: Callable[[Mode], bool] = lambda m: True
         ) -> tuple[str, str]:
    """The fastest allowed mode within the bound that beats its base mode by `MIN_GAIN`, and why."""
    by = {t.mode: t for t in trials}
    ok = {t.mode: t for t in trials if t.ms is not None and t.snr_db is not None and t.snr_db >= min_snr_db
          and allowed(MODES[t.mode])}
    if "fp32" not in by or by["fp32"].ms is None:
        return "fp32", "fp32 eager (the calibration did not time it)"

    def pays(name: str) -> bool:
        base = MODES[name].base
        return base is None or base not in ok or ok[name].ms <= (1 - MIN_GAIN) * ok[base].ms

    fast = [n for n in ok if pays(n)] or ["fp32"]
    best = min(fast, key=lambda n: by[n].ms)
    fp32 = by["fp32"].ms
    failed = [t.mode for t in trials if t.snr_db is not None and t.snr_db < min_snr_db and allowed(MODES[t.mode])]
    if best == "fp32":
        reason = "fp32 eager: no other mode was faster within the bound"
        if failed:
            reason += f" ({', '.join(failed)} failed the {min_snr_db:g} dB bound; fell back to fp32)"
        return best, reason
    reason = (f"{best}: {fp32 / by[best].ms:.2f}x fp32 eager ({by[best].ms:.1f} vs {fp32:.1f} ms per call), "
              f"SNR {by[best].snr_db:.1f} dB >= {min_snr_db:g} dB")
    if failed:
        reason += f"; outside the bound: {', '.join(failed)}"
    return best, reason


@torch.no_grad()
def calibrate(model: nn.Module, probe: Probe, modes: list[str] | None = None, min_snr_db: float = MIN_SNR_DB,
              repeats: int = 3, allowed: Callable[[Mode], bool] = lambda m: True,
              log: Callable[[str], object] | None = None) -> Choice:
    """Time every mode of `modes` (default: all this device can run) on `probe`, measure its error against fp32
    eager, and pick (`pick`). Compile is tried only where an fp32 eager call takes `COMPILE_MIN_MS` or more."""
    device = _precision._device_of(model)
    names = list(modes or MODES)
    trials: dict[str, Trial] = {}
    refs = [probe(model, t) for t in PROBE_TIMES]
    fp32_ms = 1e3 * min(_timed(lambda: probe(model, 0.5), device) for _ in range(2))
    again = snr_db(probe(model, PROBE_TIMES[-1]), refs[-1])
    if again < min_snr_db:  # dropout left on, a stateful hook attached, ...: no error can be measured against it
        return Choice("fp32", f"fp32 eager: the network's output is not reproducible (two fp32 calls agree to "
                              f"{again:.1f} dB < {min_snr_db:g} dB: is it in training mode, or a stateful hook "
                              f"attached?); nothing calibrated", [Trial("fp32", fp32_ms, again)], min_snr_db,
                      source="not calibrated")
    nets = {}
    for name in names:
        mode = MODES[name]
        missing = mode_missing(mode, device)
        if missing is None and mode.compile and fp32_ms < COMPILE_MIN_MS:
            missing = f"not tried: an fp32 call takes {fp32_ms:.1f} ms < {COMPILE_MIN_MS:g} ms, too little for compile"
        if missing is not None:
            trials[name] = Trial(name, error=missing)
            continue
        if log:
            log(f"calibrating {name} ...")
        try:
            net, ctx = apply(model, mode)
            with ctx():
                outs = [probe(net, t) for t in PROBE_TIMES]  # also compiles
                probe(net, 0.5)
            trials[name] = Trial(name, snr_db=min(snr_db(o, r) for o, r in zip(outs, refs, strict=True)))
            nets[name] = (net, ctx)
        except Exception as err:  # noqa: BLE001 - a mode that fails to build or run is skipped, with the reason
            trials[name] = Trial(name, error=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    def call(net: nn.Module, ctx: Callable[[], AbstractContextManager]) -> None:
        with ctx():
            probe(net, 0.5)

    # interleaved (A B C A B C): drift of the machine hits every mode alike
    seconds = time_interleaved({n: functools.partial(call, *nc) for n, nc in nets.items()}, warmup=0,
                               repeats=repeats, device=device)
    for name, sec in seconds.items():
        trials[name].ms = 1e3 * sec
    ordered = [trials[n] for n in names]
    mode, reason = pick(ordered, min_snr_db, allowed)
    choice = Choice(mode, reason, ordered, min_snr_db)
    choice.built = {name: net for name, (net, _) in nets.items()}  # not saved: lets `prepare` skip a recompile
    return choice


# ----------------------------------------------------------------------------------------------
# The cache of choices, per model and machine
# ----------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """$XDG_CACHE_HOME/ditlab/precision (default ~/.cache/ditlab/precision)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ditlab" / "precision"


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of the model's class, config and weights: every parameter's shape, sum and first and last 256
    values (cheap for a large model, and any training step or other checkpoint changes it)."""
    h = hashlib.sha256(type(model).__name__.encode())
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        h.update(json.dumps(asdict(cfg), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if type(p) is not torch.Tensor:  # a quantized tensor subclass: its shape and type, and who it is
                h.update(f"{name}{tuple(p.shape)}{type(p).__name__}{id(p)}".encode())
                continue
            flat = p.detach().flatten().float().cpu()
            h.update(f"{name}{tuple(p.shape)}{flat.sum().item():.6e}".encode())
            h.update(flat[:256].numpy().tobytes() + flat[-256:].numpy().tobytes())
    return h.hexdigest()[:16]


def machine_key(device: torch.device) -> str:
    """What a calibration depends on besides the model: device, CPU flags, torch version and threads."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        flags = sorted(f for f in _precision._cpu_flags() if f.startswith(("avx", "amx", "fma")) or f in ("bf16",))
        where = f"{cpu_name()}|{','.join(flags)}|{os.cpu_count()}"
    return f"{device.type}|{where}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def choice_key(model: nn.Module, probe: Probe, modes: list[str], min_snr_db: float) -> str:
    device = _precision._device_of(model)
    text = f"{weights_fingerprint(model)}|{probe.signature}|{machine_key(device)}|{','.join(modes)}|{min_snr_db:g}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cached(path: Path) -> Choice | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            return None
        return Choice.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing, or written by another version: calibrate again


def choose(model: nn.Module, probe: Probe | None = None, *, min_snr_db: float = MIN_SNR_DB,
           modes: list[str] | None = None, recalibrate: bool = False, cache: bool = True,
           log: Callable[[str], object] | None = None) -> Choice:
    """The calibrated choice for `model` on `probe` (default `default_probe(model)`): from the cache file when
    one exists for this model, probe, machine, mode list and bound, else measured (and written)."""
    from ditlab.core.files import write_json

    probe = probe or default_probe(model)
    names = list(modes or MODES)
    key = choice_key(model, probe, names, min_snr_db)
    path = cache_dir() / f"{key}.json"
    if cache and not recalibrate:
        found = _read_cached(path)
        if found is not None:
            found.source, found.key = "cache file", key
            return found
    choice = calibrate(model, probe, names, min_snr_db, log=log)
    choice.key = key
    if cache and choice.source == "calibrated":
        try:
            write_json(path, choice.to_dict())
        except OSError as err:  # a read-only home: the choice still holds for this process
            warnings.warn(f"could not keep the precision choice in {path}: {err}", RuntimeWarning, stacklevel=2)
    return choice


# ----------------------------------------------------------------------------------------------
# Prepared networks, once per model per process
# ----------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """The network to call, the context to call it in, the mode it runs and the choice behind it."""

    net: nn.Module
    context: Callable[[], AbstractContextManager]
    mode: str
    choice: Choice

    @property
    def line(self) -> str:
        """One line for logs and reports: `precision bf16+compile (auto: ...)`."""
        if self.choice.reason == "requested":
            return f"precision {self.mode} (as requested)"
        return f"precision {self.mode} ({self.choice.source}: {self.choice.reason})"


_PREPARED: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _versions(model: nn.Module) -> tuple:
    """Changes whenever a weight is written in place (training, load_state_dict) or replaced."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def already_optimized(model: nn.Module) -> str | None:
    """Why `model` already is a computed form (quantized weights, compiled blocks), or None for a plain model:
    auto then runs it as it is instead of converting it again."""
    blocks = getattr(model, "blocks", None) or []
    if any(getattr(b, "_compiled_call_impl", None) is not None for b in blocks):
        return "its blocks are already compiled"
    if any(type(p.data) is not torch.Tensor for p in model.parameters()):
        return "its weights are already quantized"
    return None


def prepare(model: nn.Module, precision: str | None = None, probe: Probe | Callable[[], Probe] | None = None, *,
            need_grad: bool = False, compile_ok: bool = True, min_snr_db: float = MIN_SNR_DB,
            log: Callable[[str], object] | None = None) -> Prepared:
    """The network and context to run `model` in `precision` (None: `default_precision()`).

    "auto" calibrates once (`choose`) and picks the fastest mode within `min_snr_db`, among those that keep
    autograd through the network when `need_grad` (fp32 and bf16) and without compiled blocks when not
    `compile_ok` (a cache that changes the token count per call, like region-adaptive sampling, would make
    them recompile). An explicit mode is applied as asked; one the hardware lacks is an InputError.
    The result is reused for the same model, request and weights within the process."""
    precision = check_precision(precision or default_precision())
    key = (precision, need_grad, compile_ok, min_snr_db)
    memo = _PREPARED.setdefault(model, {})
    versions = _versions(model)
    hit = memo.get(key)
    if hit is not None and hit[0] == versions:
        return hit[1]
    if precision != "auto":
        mode = MODES[precision]
        if need_grad and mode.fmt in ("int8", "fp8"):
            raise InputError(f"precision {precision!r} computes no gradients through the network; this use needs "
                             f"them (choose fp32 or bf16, or auto)")
        net, ctx = apply(model, mode)
        prepared = Prepared(net, ctx, precision, Choice(precision, "requested", source="requested"))
    elif (given := already_optimized(model)) is not None:  # the caller built its own fast form: run it as it is
        net, ctx = model, contextlib.nullcontext
        prepared = Prepared(net, ctx, "as given", Choice("as given", f"run as given: {given}", source="requested"))
    else:
        def allowed(m: Mode) -> bool:
            return (not need_grad or m.fmt in ("fp32", "bf16")) and (compile_ok or not m.compile)

        choice = choose(model, probe() if callable(probe) and not isinstance(probe, Probe) else probe,
                        min_snr_db=min_snr_db, log=log)
        mode_name, reason = pick(choice.trials, min_snr_db, allowed)
        built = choice.__dict__.pop("built", {}).get(mode_name)  # calibrated in this process: already compiled
        if mode_name != choice.mode:
            choice = Choice(mode_name, reason + " (restricted: " + ", ".join(
                r for r, on in (("gradients needed", need_grad), ("no compile", not compile_ok)) if on) + ")",
                choice.trials, min_snr_db, choice.key, choice.source)
        net, ctx = apply(model, MODES[mode_name]) if built is None else (built, _context(model, MODES[mode_name]))
        prepared = Prepared(net, ctx, mode_name, choice)
    if net is not model:
        net.eval()
    memo[key] = (versions, prepared)
    return prepared


@contextlib.contextmanager
def running(model: nn.Module, precision: str | None = None, probe: Probe | None = None, **kw):
    """`with running(model) as net: net(...)`: the prepared network, inside its autocast context."""
    prepared = prepare(model, precision, probe, **kw)
    with prepared.context():
        yield prepared.net
