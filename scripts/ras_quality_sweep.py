"""PSNR loss of RegionAdaptive settings on shapes64 (8 samples, 50 Euler steps, CFG 2): quality only, one run each,
no timing; NFE-equivalent from the token counts. How BENCHMARKS.md's RAS settings table was made (then with a
subclass standing in for `cooldown`, before it became a parameter)."""
import functools
import json

from ditlab.core.accel.bench.subjects import FULL, make_inputs, ras_subject
from ditlab.core.accel.bench.tasks import ours, reference, sample_psnr
from ditlab.core.accel.ras import RegionAdaptive

SETTINGS = [dict(ratio=0.35, cooldown=0), dict(ratio=0.35, cooldown=0, metric="change"),
            dict(ratio=0.35, cooldown=0, forecast=1), dict(ratio=0.35, cooldown=0, starvation=1.0),
            dict(ratio=0.35, cooldown=0, starvation=4.0), dict(ratio=0.35, cooldown=0, warmup=8),
            dict(ratio=0.35, cooldown=0, dense_every=10), dict(ratio=0.3, cooldown=0, dense_every=8),
            dict(ratio=0.4, cooldown=0, metric="change"), dict(ratio=0.35, cooldown=2), dict(ratio=0.35, cooldown=1),
            dict(ratio=0.33, cooldown=2), dict(ratio=0.3, cooldown=2), dict(ratio=0.3, cooldown=4),
            dict(ratio=0.25, cooldown=6), dict(ratio=0.2, cooldown=8)]

size = FULL
model, _ = ras_subject(size)
inputs = make_inputs(model, size.ras_batch)
ref = reference(model, inputs, size)
base, _ = ours(model, inputs, size)(size.steps)
base_db = sample_psnr(base, ref)
print("uncached PSNR vs reference", round(base_db, 3), flush=True)
for kw in SETTINGS:
    x, nfe = ours(model, inputs, size, functools.partial(RegionAdaptive, **kw))(size.steps)
    per = [round(sample_psnr(base[i:i + 1], ref[i:i + 1]) - sample_psnr(x[i:i + 1], ref[i:i + 1]), 2)
           for i in range(len(x))]
    print(json.dumps(kw), "loss", round(base_db - sample_psnr(x, ref), 3), "nfe", round(nfe, 2), "per-sample", per,
          flush=True)
