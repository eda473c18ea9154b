"""ditlab.audio: non-autoregressive DiT text-to-speech and joint audio-video. This first piece holds the audio
files, the features (log-mel and its Griffin-Lim inverse), the text front end and a seeded espeak-ng corpus.

    from ditlab.audio import PRESETS, build_corpus, encode_text, log_mel, read_audio

    cfg = PRESETS["f5"]                                  # 24 kHz, 100 mels, hop 256 (F5-TTS's features)
    ref = read_audio("prompt.flac", cfg.sample_rate)     # WAV / FLAC -> mono float32 at 24 kHz
    mel = log_mel(ref, cfg)                              # (100, frames)
    ids = encode_text("Hello, world.", cfg)              # character ids (0 = padding)
    folder = build_corpus("corpus", 200, seed=0)         # wavs/ + metadata.jsonl / .csv, train / val / test
"""

__version__ = "0.1.0"

from ditlab.audio.data import (  # noqa: E402
    PRESETS,
    FeatureConfig,
    Utterance,
    build_corpus,
    encode_text,
    load_corpus,
    log_mel,
    mel_to_audio,
    normalise_text,
    phonemize,
)
from ditlab.audio.io import AudioError, check_reference, normalise_loudness, read_audio, write_audio  # noqa: E402

__all__ = ["PRESETS", "AudioError", "FeatureConfig", "Utterance", "build_corpus", "check_reference", "encode_text",
           "load_corpus", "log_mel", "mel_to_audio", "normalise_loudness", "normalise_text", "phonemize",
           "read_audio", "write_audio"]
