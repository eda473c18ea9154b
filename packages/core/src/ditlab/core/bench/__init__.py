"""Benchmarks: the harness every `ditlab <v> benchmark` is built on (`harness`), and `ditlab core benchmark`,
our DiT against diffusers' (`dit`)."""

from __future__ import annotations

from pathlib import Path

from ditlab.core.bench.harness import (
    ChildRun,
    PeakMemory,
    Recorder,
    Report,
    command,
    exact_rss_accounting,
    machine,
    machine_line,
    run_in_child,
    select_parts,
    time_interleaved,
    utc_now,
)

__all__ = ["ChildRun", "PeakMemory", "Recorder", "Report", "command", "exact_rss_accounting", "machine", "machine_line",
           "main", "run_in_child", "select_parts", "time_interleaved", "utc_now"]


def main(quick: bool, json_path: Path | None) -> None:
    """Entry point of `ditlab core benchmark`: the full DiT-S/2 comparison, or a smaller one with --quick.
    diffusers is imported only here, so a vertical's benchmark does not pay for it."""
    from ditlab.core.bench import dit

    dit.run(dit.QUICK if quick else dit.FULL, json_path)
