"""Features: the presets, log-mel with F5-TTS's conventions (checked against a plain NumPy STFT), and the log-mel ->
Griffin-Lim -> log-mel round trip within a stated tolerance."""

import librosa
import numpy as np
import pytest

from ditlab.audio.data import PRESETS, FeatureConfig, feature_config, log_mel, mel_to_audio
from ditlab.core.errors import InputError, UsageError

ROUND_TRIP_NATS = 0.3
"""Largest mean |log-mel difference| (natural log units) after mel -> Griffin-Lim (32 iterations) -> mel, over the
bins within 60 dB of the clip's loudest bin. Measured here: 0.21 (16 kHz preset) and 0.17 (F5 preset) on the
voice-like test tone; a phase estimate is never exact, so this bounds the vocoder baseline, not a bit pattern."""


def round_trip_error(mel: np.ndarray, back: np.ndarray) -> float:
    active = mel > mel.max() - np.log(1000.0)  # 60 dB in amplitude
    return float(np.abs(back - mel)[active].mean())


def test_presets():
    default, f5 = PRESETS["default"], feature_config("f5")
    assert (default.sample_rate, default.n_mels, default.hop_length, default.text) == (16_000, 80, 256, "char")
    assert (f5.sample_rate, f5.n_mels, f5.n_fft, f5.hop_length, f5.win_length) == (24_000, 100, 1024, 256, 1024)
    assert f5.top_hz == 12_000 and f5.frames_per_second == pytest.approx(93.75)
    with pytest.raises(UsageError, match=r"unknown feature preset 'f6'; expected one of \('default', 'f5'\)"):
        feature_config("f6")


@pytest.mark.parametrize(("preset", "shape"), [("default", (80, 63)), ("f5", (100, 94))])
def test_log_mel_shapes(voiced, preset, shape):
    cfg = PRESETS[preset]
    mel = log_mel(voiced(cfg.sample_rate, 1.0), cfg)
    assert mel.shape == shape == (cfg.n_mels, cfg.frames(cfg.sample_rate)) and mel.dtype == np.float32
    assert mel.min() >= np.log(cfg.log_floor) - 1e-6


def test_log_mel_follows_f5_conventions(voiced):
    """Magnitude STFT (Hann, centred, reflect padding), HTK mel filters without normalisation, log clamped at 1e-5."""
    cfg = PRESETS["f5"]
    audio = voiced(cfg.sample_rate, 0.5).astype(np.float64)
    padded = np.pad(audio, cfg.n_fft // 2, mode="reflect")
    starts = np.arange(0, len(padded) - cfg.n_fft + 1, cfg.hop_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(np.stack([padded[s:s + cfg.n_fft] for s in starts]) * window, axis=1)).T
    filters = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=0.0, fmax=12_000,
                                  htk=True, norm=None, dtype=np.float64)
    expected = np.log(np.maximum(filters @ magnitude, 1e-5))
    assert np.allclose(log_mel(audio.astype(np.float32), cfg), expected, atol=2e-3)


@pytest.mark.parametrize("preset", ["default", "f5"])
def test_griffin_lim_round_trip(voiced, preset):
    cfg = PRESETS[preset]
    audio = voiced(cfg.sample_rate, 1.0)
    mel = log_mel(audio, cfg)
    back = mel_to_audio(mel, cfg, n_iter=32, seed=0, length=len(audio))
    assert back.shape == audio.shape and back.dtype == np.float32
    error = round_trip_error(mel, log_mel(back, cfg))
    assert error < ROUND_TRIP_NATS
    one_step = round_trip_error(mel, log_mel(mel_to_audio(mel, cfg, n_iter=1, length=len(audio)), cfg))
    assert error < one_step  # the iterations are what brings the phase in line
    again = mel_to_audio(mel, cfg, n_iter=32, seed=0, length=len(audio))
    assert np.allclose(again, back, atol=1e-4)  # seeded


def test_mel_to_audio_default_length(voiced):
    cfg = PRESETS["default"]
    mel = log_mel(voiced(cfg.sample_rate, 0.5), cfg)
    assert len(mel_to_audio(mel, cfg, n_iter=2)) == (mel.shape[1] - 1) * cfg.hop_length


def test_bad_feature_inputs_refused():
    cfg = PRESETS["default"]
    with pytest.raises(InputError, match=r"expected a log-mel of shape \(n_mels=80, frames >= 1\), got \(100, 5\)"):
        mel_to_audio(np.zeros((100, 5)), cfg)
    with pytest.raises(InputError, match="log-mel holds NaN or Inf"):
        mel_to_audio(np.full((80, 5), np.nan), cfg)
    with pytest.raises(UsageError, match="n_iter must be at least 1, got 0"):
        mel_to_audio(np.zeros((80, 5)), cfg, n_iter=0)
    with pytest.raises(InputError, match=r"expected \(n,\) mono audio with n >= 1, got shape \(2, 3\)"):
        log_mel(np.zeros((2, 3)), cfg)


@pytest.mark.parametrize(("changes", "message"), [
    ({"sample_rate": 100}, r"sample_rate must lie in \[8000, 192000\] Hz, got 100"),
    ({"win_length": 2048}, r"expected n_mels >= 1, hop_length >= 1 and 1 <= win_length <= n_fft"),
    ({"fmax": 9000.0}, r"expected 0 <= fmin < fmax <= sample_rate / 2 = 8000 Hz, got fmin 0.0, fmax 9000.0"),
    ({"log_floor": 0.0}, "log_floor must be positive, got 0.0"),
    ({"text": "bpe"}, r"text front end must be one of \('char', 'phoneme'\), got 'bpe'"),
])
def test_bad_configs_refused(changes, message):
    with pytest.raises(UsageError, match=message):
        FeatureConfig(**changes)
