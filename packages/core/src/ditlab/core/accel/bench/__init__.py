"""`ditlab core benchmark --accel`: feature caches, region-adaptive sampling and precision/compile, against the
uncached sample and against diffusers' own cache hooks, side by side in one process.

`subjects` holds the models and inputs, `tasks` what is measured on them, `runs` the CPU and GPU runs and
their goals; all on core's harness (`ditlab.core.bench.harness`).

Every run draws 50 Euler steps of flow matching with CFG 2 (conditional and unconditional rows batched in
one network call) from one fixed noise draw and label set per task:
- cache policies on the demo model (16 tokens) and on shapes32 (256 tokens);
- diffusers' `TaylorSeerCacheConfig` and `FirstBlockCacheConfig` hooks on shapes32 converted to a diffusers
  `DiTTransformer2DModel` (`dit_to_diffusers`, same weights), sampled by the same sampler;
- bf16 autocast, `compile_blocks` and shapes32's best cache against diffusers fp32 eager, on shapes32-S (DiT-S
  size, the size of issue 4's probe; trained in the benchmark cache on first use, not shipped) in the full run
  and on shapes32 in the quick one;
- RAS on a 1024-token model (shapes64, trained in the benchmark cache on first use, not shipped);
- with `--gpu` instead (`gpu_run`), on CUDA: the fused kernels' bandwidth against copy bandwidth, and bf16 /
  `compile_blocks` / fp8 / cache speed-ups end to end on shapes32-S and a DiT-XL/2-size network.

Quality is PSNR in dB over data range 2 (samples clamped to [-1, 1]), averaged over samples. "PSNR vs
baseline" compares a method's final sample with its task's baseline sample. The goals' "PSNR loss" needs a
yardstick both are judged by: the uncached ditlab sample of a Heun (2nd-order) solve with twice the steps
(same noise, labels and guidance), a near-converged solution of the same ODE. loss = PSNR(baseline,
reference) - PSNR(method, reference): how much accuracy towards the converged sample the method gives up;
<= 0 means none. (Euler with twice the steps is a worse yardstick: it still carries about half of the
baseline's first-order error, which overstates the baseline's accuracy, by 2-6 dB on these models.) Wall time is the
median of interleaved repeats (A B C A B C ...) after an untimed 2-step warm-up run of each method (which
also compiles; its time is reported for compiled methods).
"""

from __future__ import annotations

from pathlib import Path

from ditlab.core.accel.bench.runs import gpu_run, run
from ditlab.core.accel.bench.subjects import FULL, GPU, QUICK

__all__ = ["gpu_run", "main", "run"]


def main(quick: bool, json_path: Path | None, gpu: bool = False, only: str | None = None) -> None:
    """Entry point of `ditlab core benchmark --accel [--gpu] [--only TASK]`."""
    if gpu:
        gpu_run(GPU, json_path)
        return
    run(QUICK if quick else FULL, json_path, only=only)
