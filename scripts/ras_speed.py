"""RegionAdaptive's bookkeeping, before and after the token-row caches: uncached sampling, RegionAdaptive(ratio) as it
is now and as it was at commit OLD (its ras.py loaded from git at run time), timed in one process like the RAS rows
of `ditlab core benchmark --accel` (shapes64, 1024 tokens, 50 Euler steps, CFG 2, 2 CPU threads), all in fp32
eager; interleaved A B C A B C ..., median of the repeats after a 2-step warm-up, so that a second job on the
machine slows them alike. Then one RAS run of each under torch.profiler: the share of its wall clock spent on
keeping the caches.

    python scripts/ras_speed.py [--batch 8] [--repeats 3] [--steps 50] [--ratio 0.4] [--threads 2] [--old COMMIT]
"""
import argparse
import contextlib
import dataclasses
import functools
import os
import subprocess
import time
import types
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ditlab.core.accel.bench.subjects import FULL, make_inputs
from ditlab.core.accel.bench.tasks import measure, ours, sample_psnr
from ditlab.core.accel.bench_model import shapes64
from ditlab.core.accel.ras import RegionAdaptive

OLD = "49663fadb98f36b87bb3c9917c3a92f30e2025c1"  # the last ras.py with (B, H, T, Dh) caches and gather/scatter
RAS_PY = "packages/core/src/ditlab/core/accel/ras.py"
KV, CHOICE, OUTPUT, FINAL = "RAS K/V caches", "RAS token choice", "RAS output cache", "final layer"


def load_old(commit: str) -> type:
    """RegionAdaptive as it was at `commit`, from its ras.py in git (a module of its own, not installed)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:{RAS_PY}"], cwd=root, check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType("ras_old")
    exec(compile(source, f"{commit[:7]}:{RAS_PY}", "exec"), module.__dict__)
    return module.RegionAdaptive


def _label(name: str, fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)

    return run


@contextlib.contextmanager
def labelled(cls: type):
    """Profiler regions around the bookkeeping of a RegionAdaptive class, old or new: `_keys_values` (everything
    done to a block's keys and values after qkv), `_select`, and `_final_layer` around the final layer itself."""
    saved = {name: cls.__dict__[name] for name in ("_keys_values", "_select", "_final_layer")}

    def final_layer(self, forward, x, c):
        with record_function(OUTPUT):
            return saved["_final_layer"](self, _label(FINAL, forward), x, c)

    cls._keys_values, cls._select = _label(KV, saved["_keys_values"]), _label(CHOICE, saved["_select"])
    cls._final_layer = final_layer
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(cls, name, fn)


def profiled(name: str, cls: type, run) -> None:
    """One sampling run under the profiler: its busiest ops and the share of its wall clock in each region."""
    with labelled(cls), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    events = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    shares = {KV: events.get(KV, 0.0), CHOICE: events.get(CHOICE, 0.0),
              OUTPUT: events.get(OUTPUT, 0.0) - events.get(FINAL, 0.0)}
    print(f"\n{name}: one run under the profiler, {wall:.1f} s wall")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    for region, seconds in shares.items():
        print(f"  {region:<18} {seconds:6.2f} s  {seconds / wall:6.1%}")
    print(f"  {'bookkeeping':<18} {sum(shares.values()):6.2f} s  {sum(shares.values()) / wall:6.1%} of the run")


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=8, help="samples (CFG doubles the rows of a network call)")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--steps", type=int, default=FULL.steps)
parser.add_argument("--ratio", type=float, default=0.4)
parser.add_argument("--threads", type=int, default=2, help="torch threads (1: a busy machine slows every op alike)")
parser.add_argument("--old", default=OLD, help="the commit whose ras.py is the old implementation")
args = parser.parse_args()

torch.set_num_threads(args.threads)
# all three run the network in fp32 eager: precision "auto" would calibrate per call shape, and compile the blocks
# under the old class, which `sample` does not know as region-adaptive
os.environ["DITLAB_PRECISION"] = "fp32"
size = dataclasses.replace(FULL, steps=args.steps, repeats=args.repeats)
model, _ = shapes64(FULL.ras_train_steps, FULL.ras_train_batch)
inputs = make_inputs(model, args.batch)
Old = load_old(args.old)
NEW, OLD_NAME = f"RegionAdaptive(ratio={args.ratio}) now", f"RegionAdaptive(ratio={args.ratio}) at {args.old[:7]}"
methods = {"uncached": ours(model, inputs, size), NEW: ours(model, inputs, size, lambda: RegionAdaptive(args.ratio)),
           OLD_NAME: ours(model, inputs, size, lambda: Old(args.ratio))}
print(f"shapes64, batch {args.batch}, {size.steps} Euler steps, CFG {size.guidance:g}, {torch.get_num_threads()} "
      f"threads, median of {size.repeats} interleaved repeats")
results = measure(methods, size)
base = results["uncached"]
for name, r in results.items():
    print(f"  {name:<40} {r.seconds:7.2f} s  {base.seconds / r.seconds:5.2f}x  NFE {r.nfe:5.1f}  "
          f"PSNR vs uncached {sample_psnr(r.sample, base.sample):6.2f} dB")
print(f"  now vs old: {results[OLD_NAME].seconds / results[NEW].seconds:.2f}x faster, samples "
      f"{sample_psnr(results[NEW].sample, results[OLD_NAME].sample):.1f} dB apart "
      f"(max |difference| {(results[NEW].sample - results[OLD_NAME].sample).abs().max():.2e})")
profiled(NEW, RegionAdaptive, functools.partial(methods[NEW], size.steps))
profiled(OLD_NAME, Old, functools.partial(methods[OLD_NAME], size.steps))
