"""Inference speed-ups that change how the same network is computed: bf16 autocast, regional
`torch.compile` of the transformer blocks, and torchao weight quantization.

Each one checks the hardware and the build first. Where it cannot run it raises a RuntimeError that
says why; with `allow_fallback=True` it warns instead and leaves the model as it was (fp32, eager,
unquantized). `optimize` applies them together and hands back the autocast context to sample in:

    model, precision_ctx = optimize(model, precision="bf16", compile=True)
    with precision_ctx():
        x = sample(model, FlowMatching(), shape)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from ditlab.core.errors import InputError

PRECISIONS = ("fp32", "bf16")
QUANT_SCHEMES = ("int8_weight_only", "int8_dynamic", "fp8")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 / AMX, Arm (Linux names)
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have fp8 tensor cores


def _unavailable(message: str, allow_fallback: bool, fallback: str) -> None:
    """Raise `message`, or warn and let the caller continue with `fallback` when the user allowed it."""
    if not allow_fallback:
        raise RuntimeError(f"{message}. Pass allow_fallback=True to {fallback} instead.")
    warnings.warn(f"{message}; {fallback} instead.", RuntimeWarning, stacklevel=3)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (x86 "flags", Arm "Features"); empty without /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith(("flags", "Features"))
            for flag in line.split(":", 1)[1].split()}


def bf16_supported(device: str | torch.device) -> tuple[bool, str]:
    """Whether `device` computes bf16 natively (so autocast pays), and a sentence saying why or why not."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available in this torch build or on this machine"
        name = torch.cuda.get_device_name(dev)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} has bf16 tensor cores"
        major, minor = torch.cuda.get_device_capability(dev)
        return False, f"{name} (compute capability {major}.{minor}) has no native bf16; it needs >= 8.0"
    if dev.type == "cpu":
        found = sorted(BF16_CPU_FLAGS & _cpu_flags())
        if found:
            return True, f"the CPU has {' and '.join(found)}"
        return False, (f"the CPU reports none of {sorted(BF16_CPU_FLAGS)}, so bf16 would be emulated and "
                       "slower than fp32")
    return False, f"bf16 autocast is only checked for CPU and CUDA devices, not {dev.type!r}"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def autocast(device: str | torch.device, precision: str = "fp32", allow_fallback: bool = False
             ) -> AbstractContextManager:
    """The context to run inference in: nothing for "fp32", `torch.autocast` to bfloat16 for "bf16"."""
    _check_precision(precision)
    dev = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    ok, why = bf16_supported(dev)
    if not ok:
        _unavailable(f"bf16 autocast is not available on {dev}: {why}", allow_fallback, "run in fp32")
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise InputError(f"expected a transformer with its repeated blocks in `.blocks` (a ditlab DiT), "
                         f"got {type(model).__name__}")
    return blocks


def _compiler_missing(device: torch.device) -> str | None:
    """Why Inductor cannot compile for `device` here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python with torch {torch.__version__}"
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as err:  # Inductor raises its own error types when no compiler is found
            return f"Inductor needs a C++ compiler for CPU code and found none ({err}); install g++ or set CXX"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Inductor needs Triton for CUDA code and cannot use it here; install triton"
    return None


def compile_blocks(model: nn.Module, mode: str | None = None, allow_fallback: bool = False) -> nn.Module:
    """Regional compilation: compile each transformer block (`dynamic=False`), leave the rest eager.

    The blocks share their code, so Inductor compiles one graph and reuses it for every block: the cold
    compile costs one block, not the whole network. Compilation happens at the first forward call and
    again for each new token count or batch size. Returns the model, compiled in place.
    """
    blocks = _blocks(model)
    device = _device_of(model)
    missing = _compiler_missing(device)
    if missing:
        _unavailable(f"torch.compile is not available on {device}: {missing}", allow_fallback, "run eagerly")
        return model
    for block in blocks:
        block.compile(mode=mode, dynamic=False)
    return model


def _import_torchao():
    """torchao's quantization module, imported quietly: its CUDA-only extensions log load failures on CPU."""
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as quant
    finally:
        log.setLevel(level)
    return quant


def _fp8_missing(device: torch.device) -> str | None:
    """Why fp8 matmuls cannot run for a model on `device`, or None when they can."""
    need = ".".join(map(str, FP8_MIN_CAPABILITY))
    if device.type != "cuda":
        where = ("a CUDA GPU is available: move the model there first" if torch.cuda.is_available()
                 else "no CUDA GPU is available")
        return f"fp8 needs a Hopper/Ada GPU (compute capability >= {need}), found the model on {device} and {where}"
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return f"fp8 needs a Hopper/Ada GPU (compute capability >= {need}), found {name} ({cap[0]}.{cap[1]})"
    return None


def quantize(model: nn.Module, scheme: str, allow_fallback: bool = False) -> nn.Module:
    """Quantize the Linear layers of the transformer blocks with torchao, in place; returns the model.

    "int8_weight_only": int8 weights with one scale per output row, activations unchanged (any device).
    "int8_dynamic": int8 weights and dynamically quantized int8 activations (int8 GEMMs; on CPUs with VNNI and
    no AMX, where bf16 does not pay, 50-step sampling of a DiT-S-size model with `compile_blocks` ran 1.95x faster
    than diffusers fp32 eager and lost 0.08 dB).
    "fp8": fp8 (e4m3) weights and dynamically scaled fp8 activations (CUDA, compute capability >= 8.9); the blocks'
    other weights become bf16, so sample under bf16 autocast (`optimize(..., quantize="fp8")` sets that up).
    Embedders and the final layer stay in full precision: they are cheap and set the output's accuracy.
    """
    if scheme not in QUANT_SCHEMES:
        raise InputError(f"unknown quantization scheme {scheme!r}; valid schemes are {QUANT_SCHEMES}")
    blocks = _blocks(model)
    if scheme == "fp8":
        missing = _fp8_missing(_device_of(model))
        if missing:
            _unavailable(missing, allow_fallback, "keep the weights unquantized")
            return model
    try:
        quant = _import_torchao()
    except ImportError as err:
        _unavailable(f"quantization needs torchao, which is not installed ({err}); "
                     "install it with `pip install 'ditlab-core[accel]'`", allow_fallback,
                     "keep the weights unquantized")
        return model
    if scheme == "fp8":  # fp8 GEMMs take bf16 biases and give bf16 outputs: the blocks run in bf16
        blocks.to(torch.bfloat16)
    config = {"int8_weight_only": quant.Int8WeightOnlyConfig,
              "int8_dynamic": quant.Int8DynamicActivationInt8WeightConfig,
              "fp8": quant.Float8DynamicActivationFloat8WeightConfig}[scheme](set_inductor_config=False)
    # (torchao's default set_inductor_config=True switches the whole process to TF32 matmuls and slow Inductor
    # autotuning: on an H200 it made every later "fp32" GEMM TF32; ditlab changes no global state here)
    quant.quantize_(blocks, config)
    return model


_quantize = quantize  # `optimize` takes a keyword argument of the same name


def optimize(
    model: nn.Module,
    *,
    precision: str = "fp32",
    compile: bool = False,
    quantize: str | None = None,
    device: str | torch.device | None = None,
    allow_fallback: bool = False,
) -> tuple[nn.Module, Callable[[], AbstractContextManager]]:
    """Quantize, then compile (torchao's recommended order), and check the precision, all up front.

    Returns the model (changed in place) and a factory of the autocast context to run inference in.
    `device` defaults to the model's. Whatever cannot run raises, or warns with `allow_fallback=True`.
    `quantize="fp8"` implies `precision="bf16"`.
    """
    _check_precision(precision)
    dev = torch.device(device) if device is not None else _device_of(model)
    if quantize == "fp8" and _fp8_missing(dev) is None:
        precision = "bf16"  # the fp8 blocks run in bf16 (see `quantize`)
    if precision == "bf16":
        ok, why = bf16_supported(dev)
        if not ok:
            _unavailable(f"bf16 autocast is not available on {dev}: {why}", allow_fallback, "run in fp32")
            precision = "fp32"
    if quantize is not None:
        model = _quantize(model, quantize, allow_fallback)
    if compile:
        model = compile_blocks(model, allow_fallback=allow_fallback)
    return model, functools.partial(autocast, dev, precision)
