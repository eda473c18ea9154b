"""`ditlab audio`: build the seeded espeak-ng speech corpus; info.

Bad inputs (a corpus size out of range, an unknown preset, an --out that is a file or holds something else)
raise core's `InputError` family: the `ditlab` root prints one line and exits 2. The corpus is written file by
file atomically, and a folder that already holds the same corpus is reused. Options shared with every vertical
come from `ditlab.core.cli`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from ditlab.audio import __version__
from ditlab.core.cli import JSON_OPT, SEED_OPT

app = typer.Typer(
    name="audio",
    help="ditlab.audio: non-autoregressive DiT text-to-speech and joint audio-video.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info() -> None:
    """Print the package version, the feature presets, the text front ends, the corpus voices and espeak-ng."""
    from ditlab.audio.data import FRONT_ENDS, HELD_OUT, PRESETS, VOICES
    from ditlab.audio.io import AUDIO_SUFFIXES

    typer.echo(f"ditlab-audio {__version__}")
    for name, cfg in PRESETS.items():
        typer.echo(f"preset {name}: {cfg.sample_rate} Hz, {cfg.n_mels} mels, n_fft {cfg.n_fft}, hop {cfg.hop_length}, "
                   f"window {cfg.win_length}")
    typer.echo(f"text front ends: {', '.join(FRONT_ENDS)}; audio files: {', '.join(AUDIO_SUFFIXES)}")
    held = {v: f", {k} only" for k, v in HELD_OUT.items()}
    typer.echo("corpus voices: " + ", ".join(f"{v.name} ({v.espeak}{held.get(v.name, '')})" for v in VOICES))
    typer.echo(f"espeak-ng: {shutil.which('espeak-ng') or 'not installed (Debian package espeak-ng)'}")


@app.command("build-corpus")
def build_corpus_cmd(
    out: Path = typer.Option(..., "--out", help="Corpus folder: wavs/, metadata.jsonl, metadata.csv, corpus.json. "
                             "A folder that holds this corpus already is reused; a half-built one is finished."),
    n: int = typer.Option(200, "-n", "--count", help="Number of utterances (about 80% train, 10% val, 10% test)."),
    preset: str = typer.Option("default", "--preset", help="Feature preset that sets the sample rate: default "
                               "(16 kHz) | f5 (24 kHz)."),
    seed: int = SEED_OPT, json_path: Path = JSON_OPT,
) -> None:
    """Speak a seeded multi-speaker corpus with espeak-ng: held-out sentences and voices for val and test."""
    from ditlab.audio.data import build_corpus, feature_config, load_corpus
    from ditlab.core.files import write_json

    config = feature_config(preset)
    t0 = time.perf_counter()
    folder = build_corpus(out, n, seed, config)
    seconds = time.perf_counter() - t0
    rows = load_corpus(folder)
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    speech = sum(r.duration for r in rows)
    typer.echo(f"corpus of {len(rows)} utterances ({', '.join(f'{k} {v}' for k, v in counts.items())}; "
               f"{speech / 60:.1f} min of speech at {config.sample_rate} Hz) in {folder} ({seconds:.1f} s)")
    if json_path is not None:
        write_json(json_path, {"folder": str(folder), "utterances": len(rows), "splits": counts,
                               "speech_seconds": round(speech, 2), "sample_rate": config.sample_rate, "seed": seed,
                               "seconds": round(seconds, 2)})
