"""Audio files: WAV / FLAC round trips, resampling and mono mixdown on reading, loudness, and every refused input
(each an `InputError` whose one-line message names what was wrong)."""

import numpy as np
import pytest
import soundfile as sf

from ditlab.audio.io import (
    MAX_PEAK,
    MAX_REFERENCE_SECONDS,
    AudioError,
    check_reference,
    dbfs,
    normalise_loudness,
    read_audio,
    write_audio,
)
from ditlab.core.errors import InputError, UsageError


def sine(freq: float, sample_rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sample_rate * seconds)) / sample_rate)).astype(np.float32)


def peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * sample_rate / len(audio))


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".WAV"])
def test_round_trip_16_bit_within_one_step(tmp_path, voiced, suffix):
    audio = voiced(16_000, 0.5)
    path = write_audio(tmp_path / f"clip{suffix}", audio, 16_000)
    back = read_audio(path, 16_000)
    assert back.dtype == np.float32 and back.shape == audio.shape
    assert np.max(np.abs(back - audio)) <= 1 / 32768 + 1e-7


@pytest.mark.parametrize(("suffix", "subtype", "tol"), [(".wav", "FLOAT", 1e-7), (".wav", "PCM_24", 2**-23),
                                                        (".flac", "PCM_24", 2**-23)])
def test_round_trip_other_encodings(tmp_path, voiced, suffix, subtype, tol):
    audio = voiced(24_000, 0.25)
    back = read_audio(write_audio(tmp_path / f"clip{suffix}", audio, 24_000, subtype=subtype), 24_000)
    assert np.max(np.abs(back - audio)) <= tol + 1e-7
    assert sf.info(str(tmp_path / f"clip{suffix}")).subtype == subtype


def test_write_is_atomic_and_clips(tmp_path):
    path = tmp_path / "loud.wav"
    write_audio(path, np.array([2.0, -3.0, 0.5], np.float32), 16_000)
    assert np.allclose(read_audio(path, 16_000), [32767 / 32768, -1.0, 0.5], atol=1e-4)
    with pytest.raises(AudioError, match="NaN or Inf"):
        write_audio(path, np.array([0.1, np.nan], np.float32), 16_000)
    assert [p.name for p in tmp_path.iterdir()] == ["loud.wav"]  # the old file kept, no temporary left


def test_write_refuses_bad_names_and_encodings(tmp_path, voiced):
    with pytest.raises(UsageError, match=r"cannot write file type '\.mp3'; expected one of \('\.wav', '\.flac'\)"):
        write_audio(tmp_path / "a.mp3", voiced(), 16_000)
    with pytest.raises(UsageError, match="cannot write 'FLOAT' samples to FLAC; expected one of"):
        write_audio(tmp_path / "a.flac", voiced(), 16_000, subtype="FLOAT")
    with pytest.raises(UsageError, match=r"sample rate must be a whole number of Hz in \[8000, 192000\], got 100"):
        write_audio(tmp_path / "a.wav", voiced(), 100)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("file_rate", "target"), [(44_100, 16_000), (22_050, 24_000), (48_000, 24_000)])
def test_resampled_to_the_target_rate(tmp_path, file_rate, target):
    write_audio(tmp_path / "s.flac", sine(1000.0, file_rate), file_rate)
    audio = read_audio(tmp_path / "s.flac", target)
    assert abs(len(audio) - target) <= 1  # one second stays one second (to a sample: soxr rounds)
    assert abs(peak_hz(audio, target) - 1000.0) <= 2.0  # 1 kHz stays 1 kHz
    assert abs(dbfs(audio) - dbfs(sine(1000.0, file_rate))) < 0.1  # no gain change


def test_channels_mixed_down_by_their_mean(tmp_path):
    left, right = sine(300.0, 16_000, amp=0.6), sine(700.0, 16_000, amp=0.2)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    assert np.allclose(read_audio(tmp_path / "stereo.wav", 16_000), (left + right) / 2, atol=1e-6)
    sf.write(str(tmp_path / "opposed.flac"), np.stack([left, -left], axis=1), 16_000)
    assert np.max(np.abs(read_audio(tmp_path / "opposed.flac", 16_000))) < 1e-4  # opposite channels cancel


def test_integer_arrays_are_scaled_like_wav_samples():
    from ditlab.audio.io import as_mono

    assert np.allclose(as_mono(np.array([16384, -32768], np.int16)), [0.5, -1.0])


@pytest.mark.parametrize("target", [-20.0, -30.0])
def test_loudness_reaches_its_target(voiced, target):
    quiet = voiced(16_000, 2.0) * 0.05
    out = normalise_loudness(quiet, target)
    assert abs(dbfs(out) - target) < 0.01
    assert out.dtype == np.float32


def test_loudness_never_clips():
    spiky = np.zeros(16_000, np.float32)
    spiky[::1000] = 0.5  # -36 dBFS, crest factor 30 dB: -20 dBFS RMS would need peaks of 3.2
    out = normalise_loudness(spiky)
    assert np.max(np.abs(out)) == pytest.approx(MAX_PEAK, rel=1e-5)
    assert dbfs(out) < -20.0


def test_loudness_refuses_silence_and_bad_targets(voiced):
    with pytest.raises(AudioError, match="audio is silent"):
        normalise_loudness(np.zeros(16_000, np.float32))
    with pytest.raises(UsageError, match=r"target loudness must lie in \[-80, 0\] dBFS, got 6"):
        normalise_loudness(voiced(), 6.0)


def test_reference_accepted(voiced):
    clip = voiced(24_000, 3.0)
    assert check_reference(clip, 24_000) is not None
    assert np.array_equal(check_reference(np.stack([clip, clip], axis=1), 24_000), clip)


@pytest.mark.parametrize(("make", "message"), [
    (lambda v: np.zeros(32_000, np.float32), r"reference audio is silent \(RMS -inf dBFS\); expected speech louder "
                                             r"than -60 dBFS"),
    (lambda v: v(16_000, 2.0) * 1e-4, r"reference audio is silent \(RMS -1\d\d\.\d dBFS\)"),
    (lambda v: v(16_000, 0.5), r"reference audio is 0\.50 s long; expected at least 1 s of speech"),
    (lambda v: v(16_000, MAX_REFERENCE_SECONDS + 1), r"reference audio is 31\.0 s long; expected at most 30 s"),
    (lambda v: np.array([], np.float32), "reference audio: no samples; expected at least one"),
    (lambda v: np.full(32_000, np.inf, np.float32), "reference audio: holds NaN or Inf samples"),
    (lambda v: np.zeros((2, 3, 4)), r"reference audio: expected an \(n,\) or \(n, channels\) array"),
])
def test_reference_refused(voiced, make, message):
    with pytest.raises(AudioError, match=message) as e:
        check_reference(make(voiced), 16_000)
    assert isinstance(e.value, InputError) and "\n" not in str(e.value)


def _corrupt_files(folder, voiced):
    """name -> (path, the message expected): each kind of file read_audio refuses."""
    good_wav = write_audio(folder / "good.wav", voiced(16_000, 0.5), 16_000).read_bytes()
    good_flac = write_audio(folder / "good.flac", voiced(16_000, 0.5), 16_000).read_bytes()
    files = {
        "text.wav": (b"hello, not audio\n", r"text\.wav: not a readable audio file \(Format not recognised\.\); "
                                           r"expected a WAV or FLAC file"),
        "empty.flac": (b"", r"empty\.flac: not a readable audio file .*expected a WAV or FLAC file"),
        "noise.flac": (np.random.default_rng(0).bytes(4000), r"noise\.flac: not a readable audio file"),
        "header.wav": (good_wav[:30], r"header\.wav: not a readable audio file .*expected a WAV or FLAC file"),
        "cut.wav": (good_wav[: len(good_wav) // 2], r"cut\.wav: truncated WAV file, its header declares 16000 bytes "
                                                    r"of samples but \d+ are there"),
        "cut.flac": (good_flac[: len(good_flac) // 2], r"cut\.flac: the audio data could not be read, the file may "
                                                       r"be truncated or damaged"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: (folder / name, message) for name, (_, message) in files.items()}


def test_corrupt_and_non_audio_files_refused(tmp_path, voiced):
    for path, message in _corrupt_files(tmp_path, voiced).values():
        with pytest.raises(AudioError, match=message) as e:
            read_audio(path, 16_000)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_other_formats_and_odd_files_refused(tmp_path, voiced):
    sf.write(str(tmp_path / "clip.ogg"), voiced(), 16_000, format="OGG")
    with pytest.raises(AudioError, match=r"clip\.ogg: OGG .* audio is not supported; expected a WAV or FLAC file"):
        read_audio(tmp_path / "clip.ogg", 16_000)
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16_000)
    with pytest.raises(AudioError, match=r"zero\.wav: no audio samples \(0 frames\)"):
        read_audio(tmp_path / "zero.wav", 16_000)
    sf.write(str(tmp_path / "nan.wav"), np.full(100, np.nan, np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: holds NaN or Inf samples"):
        read_audio(tmp_path / "nan.wav", 16_000)
    sf.write(str(tmp_path / "slow.wav"), np.zeros(100, np.float32), 4_000)
    with pytest.raises(AudioError, match=r"slow\.wav: sample rate 4000 Hz is outside \[8000, 192000\] Hz"):
        read_audio(tmp_path / "slow.wav", 16_000)
    with pytest.raises(AudioError, match="not a file; expected a WAV or FLAC file"):
        read_audio(tmp_path, 16_000)
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        read_audio(tmp_path / "missing.wav", 16_000)
    with pytest.raises(UsageError, match="target sample rate must be a whole number of Hz"):
        read_audio(tmp_path / "zero.wav", 16_000.5)


def test_streamed_wav_with_placeholder_length_is_read(tmp_path, voiced):
    """A WAV written to a pipe (espeak-ng --stdout) declares a huge placeholder length: complete, not truncated."""
    good = bytearray(write_audio(tmp_path / "a.wav", voiced(16_000, 0.5), 16_000).read_bytes())
    good[40:44] = (0x7FFFF000).to_bytes(4, "little")  # the data chunk's size
    (tmp_path / "streamed.wav").write_bytes(bytes(good))
    assert len(read_audio(tmp_path / "streamed.wav", 16_000)) == 8000
