"""Fixtures of the ditlab.audio tests: test signals, the espeak-ng check, and one tiny corpus built per session."""

import shutil

import numpy as np
import pytest

TINY = {"n_utterances": 6, "seed": 3}
"""The tiny corpus: 4 train, 1 val, 1 test utterances (about 15 s of speech, under a second to speak)."""


@pytest.fixture(scope="session")
def espeak():
    """Skip the test where espeak-ng is not installed (the phoneme front end and the corpus need it)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng; `make setup` installs it)")


@pytest.fixture(scope="session")
def voiced():
    """make(sample_rate, seconds): a voice-like test signal: a harmonic tone gliding 120 -> 200 Hz, 19 harmonics
    falling as 1/k, with a 3 Hz amplitude wobble; RMS about -22 dBFS, float32."""
    def make(sample_rate: int = 16_000, seconds: float = 1.0) -> np.ndarray:
        t = np.arange(int(sample_rate * seconds)) / sample_rate
        phase = 2 * np.pi * np.cumsum(120 + 80 * t / seconds) / sample_rate
        tone = sum(np.sin(k * phase) / k for k in range(1, 20))
        return (0.1 * tone * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)

    return make


@pytest.fixture(scope="session")
def tiny_corpus(espeak, tmp_path_factory):
    """The folder of the tiny corpus (`TINY`), built once at the default 16 kHz."""
    from ditlab.audio.data import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus") / "tiny", **TINY)
