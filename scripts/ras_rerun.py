"""The RAS task of `ditlab core benchmark --accel` alone (FULL sizes), written to benchmarks/accel-ras.json: how
the RAS table in BENCHMARKS.md was refreshed after a change to RegionAdaptive without re-running the rest."""
import shlex
import sys

from ditlab.core.accel.bench.runs import TITLE, ras_goal
from ditlab.core.accel.bench.subjects import FULL, make_inputs, ras_subject
from ditlab.core.accel.bench.tasks import ras_task, reference
from ditlab.core.bench import Report

size = FULL
model, note = ras_subject(size)
inputs = make_inputs(model, size.ras_batch)
report = Report(f"{TITLE}: RAS task only", command=shlex.join(["python", *sys.argv]))
ras_goal(report, ras_task(report, model, inputs, reference(model, inputs, size), size, note))
print(report.markdown())
report.write(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/accel-ras.json")
