"""Audio files: read users' WAV and FLAC files as mono float32 at the rate a model works at, check voice-prompt
clips, set their loudness, write results atomically.

Conversions made on reading (both always, both documented in `read_audio`): several channels are mixed down to
mono by their mean (as `librosa.to_mono`), and any sample rate is resampled to the one asked for with
`librosa.resample` (soxr, "soxr_hq"). Loudness is RMS-based, not LUFS: `normalise_loudness` scales a clip to an
RMS of `TARGET_DBFS` (-20 dBFS, an RMS of 0.1, the reference level F5-TTS sets its prompts to), keeping the
peak under `MAX_PEAK`. A voice prompt must be 1 to 30 s long and not silent (`check_reference`).

    from ditlab.audio.io import read_audio, check_reference, normalise_loudness, write_audio
    ref = check_reference(read_audio("prompt.flac", 24_000), 24_000)   # (n,) float32, mono, 24 kHz
    write_audio("out.wav", normalise_loudness(ref), 24_000)
"""

from __future__ import annotations

import re
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from ditlab.core.errors import FileFormatError, UsageError
from ditlab.core.files import atomic_write, split_suffix

AUDIO_SUFFIXES = (".wav", ".flac")
"""File types `read_audio` and `write_audio` know (case-insensitive); reading goes by the file's content."""
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
_READ_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC")  # soundfile's names of the WAV family and FLAC
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
"""Sample encodings `write_audio` writes: 16- or 24-bit integers (WAV and FLAC) or 32-bit floats (WAV only)."""

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
"""Sample rates accepted, in Hz, on reading (the file's own) and as targets."""
MAX_SECONDS = 600.0
"""Longest file `read_audio` takes (10 minutes, 230 MB as float32 at 96 kHz), checked from the header before any
sample is decoded."""

MIN_REFERENCE_SECONDS = 1.0
"""Shortest voice prompt: below about a second there is too little speech to take a voice from."""
MAX_REFERENCE_SECONDS = 30.0
"""Longest voice prompt. F5-TTS clips its prompts to about 15 s; past 30 s a prompt only slows sampling down
(attention grows with the square of the frames) and leaves less room for the generated speech."""
SILENCE_DBFS = -60.0
"""A clip whose RMS is below this level (dB relative to full scale) counts as silent."""

TARGET_DBFS = -20.0
"""Loudness `normalise_loudness` sets by default: RMS in dBFS (-20 dBFS = an RMS of 0.1)."""
MAX_PEAK = 0.99
"""`normalise_loudness` never lifts a sample's magnitude above this: the gain is lowered instead."""


class AudioError(FileFormatError):
    """An audio file or clip that cannot be used: the message says what was wrong and what was expected."""


def _check_rate(sample_rate: int, what: str = "sample rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or not (
            MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise UsageError(f"{what} must be a whole number of Hz in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], "
                         f"got {sample_rate!r}")
    return int(sample_rate)


def dbfs(audio: np.ndarray) -> float:
    """RMS level of `audio` in dB relative to full scale (a full-scale square wave is 0 dBFS; silence -inf)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else -np.inf


def _samples(audio: np.ndarray, what: str) -> np.ndarray:
    """`audio` checked and made float32, its shape kept: (n,) or (n, channels) of floats, or of signed integers
    (scaled to [-1, 1) as a WAV of that width is: int16 / 32768), finite, at least one sample and one channel."""
    audio = np.asarray(audio)
    if audio.dtype.kind not in "if" or audio.ndim not in (1, 2) or (audio.ndim == 2 and audio.shape[1] < 1):
        raise AudioError(f"{what}: expected an (n,) or (n, channels) array of floats or signed integers, got shape "
                         f"{audio.shape} of {audio.dtype}")
    if not len(audio):
        raise AudioError(f"{what}: no samples; expected at least one")
    if audio.dtype.kind == "i":
        return (audio / np.float32(-np.iinfo(audio.dtype).min)).astype(np.float32)
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise AudioError(f"{what}: holds NaN or Inf samples; expected finite values in [-1, 1]")
    return audio


def as_mono(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """`audio` as (n,) float32: (n,) or (n, channels) samples, floats or signed integers (scaled as a WAV of their
    width is: int16 / 32768), finite, not empty; several channels are mixed down by their mean."""
    audio = _samples(audio, what)
    return audio.mean(axis=1, dtype=np.float32) if audio.ndim == 2 else audio


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The samples of a WAV or FLAC file as (n,) float32 in [-1, 1] at `sample_rate` Hz.

    Two conversions, always: several channels are mixed down to one by their mean, and a file at another rate is
    resampled to `sample_rate` (librosa's soxr "soxr_hq"). The format is taken from the content, not the name.
    Refused with an `AudioError` naming the file: anything that is not a WAV or FLAC file, a damaged one, one
    without samples, with NaN/Inf samples, at a rate outside [8, 192] kHz or longer than `MAX_SECONDS`."""
    path = Path(path)
    sample_rate = _check_rate(sample_rate, "target sample rate")
    if not path.exists():
        raise FileNotFoundError(f"no such audio file: {path}")
    if not path.is_file():
        raise AudioError(f"{path}: not a file; expected a WAV or FLAC file")
    expected = "expected a WAV or FLAC file"
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)}); {expected}") from e
    if info.format not in _READ_FORMATS:
        raise AudioError(f"{path}: {info.format_info} audio is not supported; {expected}")
    cut = _truncated_wav(info.extra_info)
    if cut:
        raise AudioError(f"{path}: truncated WAV file, its header declares {cut[0]} bytes of samples but {cut[1]} are "
                         "there; expected a complete WAV or FLAC file")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz is outside [{MIN_SAMPLE_RATE}, "
                         f"{MAX_SAMPLE_RATE}] Hz")
    if info.frames > MAX_SECONDS * info.samplerate:
        raise AudioError(f"{path}: {info.frames / info.samplerate:.1f} s of audio is longer than MAX_SECONDS = "
                         f"{MAX_SECONDS:g} s; cut it first")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: the audio data could not be read, the file may be truncated or damaged "
                         f"({_reason(e)})") from e
    if not len(data):
        raise AudioError(f"{path}: no audio samples (0 frames); {expected} with sound in it")
    audio = as_mono(data, str(path))
    if rate != sample_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq").astype(np.float32)
    return audio


_STREAMED = 2**31 - 2**16
"""A WAV data size at or above this is a placeholder of a streamed file (espeak-ng --stdout writes 0x7ffff000):
length unknown, not truncated."""


def _truncated_wav(header_log: str) -> tuple[int, int] | None:
    """(declared, present) bytes of samples of a WAV file cut short, read from libsndfile's log of its header
    (`soundfile.info(...).extra_info`); None otherwise. libsndfile itself reads such a file to where it ends."""
    found = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", header_log, re.MULTILINE)
    if found is None:
        return None
    declared, present = int(found[1]), int(found[2])
    return (declared, present) if present < declared < _STREAMED else None


def _reason(e: Exception) -> str:
    """libsndfile's own words, without the file name soundfile repeats in front of them."""
    text = str(e).strip()
    return text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text


def check_reference(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """`audio` as a mono float32 voice prompt, or an `AudioError` saying why it cannot be one: silent (RMS below
    `SILENCE_DBFS`), shorter than `MIN_REFERENCE_SECONDS` or longer than `MAX_REFERENCE_SECONDS`."""
    sample_rate = _check_rate(sample_rate)
    audio = as_mono(audio, "reference audio")
    seconds = len(audio) / sample_rate
    if seconds < MIN_REFERENCE_SECONDS:
        raise AudioError(f"reference audio is {seconds:.2f} s long; expected at least {MIN_REFERENCE_SECONDS:g} s of "
                         "speech")
    if seconds > MAX_REFERENCE_SECONDS:
        raise AudioError(f"reference audio is {seconds:.1f} s long; expected at most {MAX_REFERENCE_SECONDS:g} s "
                         "(cut a clip of one speaker talking)")
    level = dbfs(audio)
    if level < SILENCE_DBFS:
        raise AudioError(f"reference audio is silent (RMS {level:.1f} dBFS); expected speech louder than "
                         f"{SILENCE_DBFS:g} dBFS")
    return audio


def normalise_loudness(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """`audio` (mono float32) scaled to an RMS level of `target_dbfs` dBFS, unless that would lift a sample above
    `MAX_PEAK`: then the gain stops there (the level stays below the target). Silence cannot be scaled: refused."""
    audio = as_mono(audio, "audio to normalise")
    if not -80.0 <= target_dbfs <= 0.0:
        raise UsageError(f"target loudness must lie in [-80, 0] dBFS, got {target_dbfs}")
    level = dbfs(audio)
    if level < SILENCE_DBFS:
        raise AudioError(f"audio is silent (RMS {level:.1f} dBFS); expected sound louder than {SILENCE_DBFS:g} dBFS "
                         "to normalise")
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    gain = min(gain, MAX_PEAK / float(np.max(np.abs(audio))))
    return (audio * np.float32(gain)).astype(np.float32)


def _format_of(path: Path) -> str:
    suffix = split_suffix(path, AUDIO_SUFFIXES)[1]
    if not suffix:
        raise UsageError(f"{path}: cannot write file type {path.suffix!r}; expected one of {AUDIO_SUFFIXES}")
    return _FORMATS[suffix]


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write (n,) or (n, channels) samples as WAV or FLAC (by suffix), atomically; floats are clipped to [-1, 1].
    `subtype` is one of `SUBTYPES` (FLOAT for WAV only). Reading back gives the samples to within one step of the
    encoding (1/32768 for PCM_16)."""
    path = Path(path)
    fmt = _format_of(path)
    sample_rate = _check_rate(sample_rate)
    if subtype not in SUBTYPES or not sf.check_format(fmt, subtype):
        allowed = [s for s in SUBTYPES if sf.check_format(fmt, s)]
        raise UsageError(f"{path}: cannot write {subtype!r} samples to {fmt}; expected one of {allowed}")
    samples = np.clip(_samples(audio, f"audio to write to {path}"), -1.0, 1.0)
    return atomic_write(path, lambda tmp: sf.write(str(tmp), samples, sample_rate, format=fmt, subtype=subtype))
