"""The RAS task of `ditlab core benchmark --accel` alone (FULL sizes), written to benchmarks/accel-ras.json: how
the RAS table in BENCHMARKS.md was refreshed after a change to RegionAdaptive without re-running the rest."""
import sys
from datetime import datetime
from pathlib import Path

import torch

from ditlab.core.accel import bench as B
from ditlab.core.bench import describe_machine, write_json

size = B.FULL
model, note = B.ras_subject(size)
inputs = B.make_inputs(model, size.ras_batch)
report = B.Report()
ras = B.ras_task(report, model, inputs, B.reference(model, inputs, size), size, note)
B._speed_goal(report, f"G2 RAS speed-up at <= {B.CACHE_LOSS_DB} dB loss, >= 1024 tokens", ras, B.CACHE_LOSS_DB, 1.8,
              (B.UNCACHED,))
now = datetime.now().astimezone().isoformat(timespec="seconds")
out = {"machine": describe_machine(torch.device("cpu")), "date": now,
       "command": " ".join(["python", *sys.argv]), "rows": report.rows, "goals": report.goals}
print(B.format_report(out, report.notes, size))
write_json(out, Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/accel-ras.json"))
