"""Speech data for ditlab.audio: the one feature configuration, log-mel features and their inverse, the text front
end, and a seeded multi-speaker corpus that espeak-ng speaks.

Features (`FeatureConfig`, named presets in `PRESETS`): "default" is 16 kHz with 80 mels; "f5" is F5-TTS's
(24 kHz, 100 mels, n_fft 1024, hop 256, window 1024). Both follow F5-TTS's conventions: magnitude (power 1) STFT
with a Hann window and centred frames (reflect padding), HTK mel scale, no filter normalisation, natural log of
the mel energies clamped at 1e-5. `mel_to_audio` inverts a log-mel: mel -> linear magnitude by librosa's
non-negative least squares, then seeded Griffin-Lim (a phase estimate: a baseline vocoder, not a neural one).

Text (`FeatureConfig.text`): "char" tokens are the characters of `normalise_text` (lowercase a-z, apostrophe,
space, `PUNCTUATION`); "phoneme" tokens are the IPA characters espeak-ng gives (`espeak-ng -q --ipa`, voice
`FeatureConfig.language`) with the text's punctuation kept between them. Token id 0 is padding (`PAD`).

Corpus (`build_corpus`): sentences drawn from the written vocabulary and grammar below, spoken by espeak-ng voices
(`VOICES`: accent + variant + pitch + speed make a speaker). The train / val / test splits are disjoint in
sentences (a sentence belongs to one split by a hash of its text, `sentence_split`) and in voices (`HELD_OUT`:
one voice heard only in "val", one only in "test"); utterance i of a split is drawn from `split_seed(split, i)`
and the corpus seed alone, so a bigger corpus extends a smaller one with the same seed.

    from ditlab.audio.data import PRESETS, log_mel, mel_to_audio, encode_text, build_corpus, load_corpus
    cfg = PRESETS["f5"]
    mel = log_mel(audio, cfg)                     # (100, 1 + len(audio) // 256) float32
    ids = encode_text("Hello, world.", cfg)       # character ids, 0 = padding
    folder = build_corpus(None, 200, seed=0)      # None: the cache folder; reused when already built
    train = load_corpus(folder, "train")
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np

from ditlab.audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, normalise_loudness, read_audio, write_audio
from ditlab.core import splits
from ditlab.core.errors import InputError, UsageError
from ditlab.core.files import atomic_write, write_json

# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------

FRONT_ENDS = ("char", "phoneme")


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that turns speech and text into model inputs: sample rate, log-mel analysis, text front end."""

    sample_rate: int = 16_000
    n_mels: int = 80
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log_floor: float = 1e-5  # mel energies are clamped here before the log
    text: str = "char"  # "char" | "phoneme"
    language: str = "en-us"  # espeak-ng voice of the phoneme front end

    def __post_init__(self) -> None:
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise UsageError(f"sample_rate must lie in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, got "
                             f"{self.sample_rate}")
        if not (self.n_mels >= 1 and self.hop_length >= 1 and 1 <= self.win_length <= self.n_fft):
            raise UsageError(f"expected n_mels >= 1, hop_length >= 1 and 1 <= win_length <= n_fft, got n_mels "
                             f"{self.n_mels}, hop_length {self.hop_length}, win_length {self.win_length}, n_fft "
                             f"{self.n_fft}")
        if not 0 <= self.fmin < self.top_hz <= self.sample_rate / 2:
            raise UsageError(f"expected 0 <= fmin < fmax <= sample_rate / 2 = {self.sample_rate / 2:g} Hz, got fmin "
                             f"{self.fmin}, fmax {self.fmax}")
        if not self.log_floor > 0:
            raise UsageError(f"log_floor must be positive, got {self.log_floor}")
        if self.text not in FRONT_ENDS:
            raise UsageError(f"text front end must be one of {FRONT_ENDS}, got {self.text!r}")

    @property
    def top_hz(self) -> float:
        """The highest frequency of the mel filters (`fmax`, or half the sample rate)."""
        return self.sample_rate / 2 if self.fmax is None else self.fmax

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def frames(self, n_samples: int) -> int:
        """Number of mel frames of `n_samples` samples (centred frames: 1 + n // hop)."""
        return 1 + n_samples // self.hop_length


PRESETS = {
    "default": FeatureConfig(),
    "f5": FeatureConfig(sample_rate=24_000, n_mels=100, n_fft=1024, hop_length=256, win_length=1024),
}
"""Named feature configurations: "default" (16 kHz, 80 mels) and "f5" (F5-TTS's 24 kHz, 100-mel features)."""


def feature_config(name: str) -> FeatureConfig:
    """The preset `name` of `PRESETS`."""
    if name not in PRESETS:
        raise UsageError(f"unknown feature preset {name!r}; expected one of {tuple(PRESETS)}")
    return PRESETS[name]


def _mel_options(config: FeatureConfig) -> dict:
    """librosa's arguments for F5-TTS's mel filters (librosa's own defaults differ: Slaney scale and norm); the
    number of mels is given apart (the inverse takes it from the mel's shape)."""
    return {"sr": config.sample_rate, "n_fft": config.n_fft, "fmin": config.fmin, "fmax": config.top_hz,
            "htk": True, "norm": None}


def log_mel(audio: np.ndarray, config: FeatureConfig = PRESETS["default"]) -> np.ndarray:
    """(n_mels, 1 + n // hop) float32: the natural log of the magnitude mel spectrogram of (n,) mono `audio` at
    `config.sample_rate`, clamped at `config.log_floor`."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or not len(audio):
        raise InputError(f"expected (n,) mono audio with n >= 1, got shape {audio.shape}")
    mel = librosa.feature.melspectrogram(y=audio, hop_length=config.hop_length, win_length=config.win_length,
                                         window="hann", center=True, pad_mode="reflect", power=1.0,
                                         n_mels=config.n_mels, **_mel_options(config))
    return np.log(np.maximum(mel, config.log_floor)).astype(np.float32)


def mel_to_audio(mel: np.ndarray, config: FeatureConfig = PRESETS["default"], n_iter: int = 32, seed: int = 0,
                 length: int | None = None) -> np.ndarray:
    """(n,) float32 audio whose log-mel is close to `mel` ((n_mels, frames), as `log_mel` makes it): mel ->
    magnitude by non-negative least squares, phase by `n_iter` Griffin-Lim iterations (momentum 0.99) from a
    random start drawn from `seed`. `length` trims or pads to that many samples (default frames - 1 hops)."""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[0] != config.n_mels or mel.shape[1] < 1:
        raise InputError(f"expected a log-mel of shape (n_mels={config.n_mels}, frames >= 1), got {mel.shape}")
    if not np.isfinite(mel).all():
        raise InputError("log-mel holds NaN or Inf; expected finite values")
    if n_iter < 1:
        raise UsageError(f"n_iter must be at least 1, got {n_iter}")
    magnitude = librosa.feature.inverse.mel_to_stft(np.exp(mel), power=1.0, **_mel_options(config))
    audio = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=config.hop_length, win_length=config.win_length,
                               n_fft=config.n_fft, window="hann", center=True, pad_mode="reflect", momentum=0.99,
                               init="random", random_state=np.random.default_rng(seed),
                               length=length if length is not None else (mel.shape[1] - 1) * config.hop_length)
    return audio.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Text front end
# ----------------------------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz'"
"""The letters of the character front end: lowercase a-z and the apostrophe (don't, Anna's)."""
PUNCTUATION = ",.;:!?-"
"""Punctuation kept by both front ends (pauses and intonation); anything else is dropped."""
CHARACTERS = " " + LETTERS + PUNCTUATION
"""Every character `normalise_text` can return."""
IPA = "abdefhijklmnoprstuvwxzæðŋɐɑɒɔəɚɛɜɡɪɹɾʃʉʊʌʍʒʔʲˈˌː\u0303\u0329\u032aθᵻ"
"""IPA characters of espeak-ng 1.51's English voices (en-us, en, en-gb-x-rp, en-gb-scotland, en-029), collected
from phonemising ~47,000 words; stress marks and length are characters of their own. Others are dropped."""
PAD = "<pad>"
"""Token 0 of every vocabulary: padding (F5-TTS's filler token); `encode_text` never returns it."""
_VOCABULARIES = {"char": (PAD, *CHARACTERS), "phoneme": (PAD, " ", *PUNCTUATION, *IPA)}  # append only: ids persist

_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                             "\u2010": "-", "\u2011": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
                             "\u2026": ".", "\t": " ", "\n": " ", "\r": " "})
_CHUNK = re.compile(r"([,.;:!?]+)")  # the phoneme front end phonemises the words between these


def normalise_text(text: str) -> str:
    """`text` as the front ends read it: accents removed (cafe for café), lowercase, typographic quotes and dashes
    made ASCII, every character outside `CHARACTERS` dropped (digits too: write numbers as words), runs of spaces
    made one. Empty text, or text with no letter left, is refused."""
    if not isinstance(text, str):
        raise InputError(f"expected text as a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("text is empty; expected at least one word to speak")
    decomposed = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHY))
    kept = "".join(c for c in decomposed.lower() if c in CHARACTERS)
    kept = re.sub(r" +", " ", kept).strip()
    if not any(c.isalpha() for c in kept):  # a-z: an apostrophe alone is nothing to say
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InputError(f"text {shown!r} has no supported letters; expected English text (a-z, apostrophe, "
                         f"punctuation {PUNCTUATION!r}; numbers written as words)")
    return kept


def espeak_binary() -> str:
    """Path of the espeak-ng program, or a RuntimeError saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed: the phoneme front end and the corpus builder need it; "
                           "install the Debian package espeak-ng (`make setup` does)")
    return path


def _espeak(args: Sequence[str], text: str, voice: str) -> str:
    """Run espeak-ng with `args` and voice `voice` on `text` (standard input); its standard output."""
    run = subprocess.run([espeak_binary(), "-v", voice, *args], input=text, capture_output=True, text=True,
                         encoding="utf-8", check=False)
    if run.returncode != 0:
        if "voice does not exist" in run.stderr:
            raise UsageError(f"espeak-ng has no voice {voice!r}; expected one `espeak-ng --voices=en` lists, such "
                             "as en-us or en-us+f2")
        raise RuntimeError(f"espeak-ng failed (exit {run.returncode}): {run.stderr.strip()}")
    return run.stdout


def phonemize(texts: Sequence[str], language: str = "en-us") -> list[str]:
    """The IPA of each text (after `normalise_text`) as espeak-ng's voice `language` speaks it, words separated by
    spaces and the text's punctuation kept where it was: "Hello, world." -> "həlˈoʊ, wˈɜːld.". One espeak-ng run
    for all texts."""
    pieces = []  # per text: [(words, punctuation), ...]
    for text in texts:
        parts = _CHUNK.split(normalise_text(text))
        pieces.append([(words.strip(), punct) for words, punct in zip(parts[::2], [*parts[1::2], ""], strict=True)])
    chunks = [words for text in pieces for words, _ in text if any(c.isalpha() for c in words)]
    out = _espeak(["-q", "--ipa"], "\n\n".join(chunks) + "\n", language).strip("\n") if chunks else ""
    groups = re.split(r"\n\s*\n", out) if out else []  # espeak-ng ends each paragraph with a blank line
    if len(groups) != len(chunks):
        raise RuntimeError(f"espeak-ng returned {len(groups)} phoneme groups for {len(chunks)} pieces of text")
    ipa = iter(" ".join(g.split()) for g in groups)
    result = []
    for text in pieces:
        spoken = [(next(ipa) if any(c.isalpha() for c in words) else "") + punct for words, punct in text]
        result.append(" ".join(s for s in spoken if s))
    return result


def vocabulary(config: FeatureConfig = PRESETS["default"]) -> tuple[str, ...]:
    """The tokens of `config`'s front end, in id order (id 0 is `PAD`)."""
    return _VOCABULARIES[config.text]


def text_tokens(text: str, config: FeatureConfig = PRESETS["default"]) -> list[str]:
    """The tokens of `text` under `config`'s front end: characters of the normalised text, or IPA characters,
    spaces and punctuation of its phonemes (characters outside `IPA` dropped)."""
    if config.text == "char":
        return list(normalise_text(text))
    known = set(_VOCABULARIES["phoneme"])
    return [c for c in phonemize([text], config.language)[0] if c in known]


def encode_text(text: str, config: FeatureConfig = PRESETS["default"]) -> np.ndarray:
    """(tokens,) int64 ids of `text_tokens(text, config)` in `vocabulary(config)` (never 0: that is padding)."""
    ids = {t: i for i, t in enumerate(vocabulary(config))}
    return np.array([ids[t] for t in text_tokens(text, config)], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Vocabulary and grammar of the generated sentences
# ----------------------------------------------------------------------------------------------

NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo", "Maya",
         "Nora", "Oscar", "Paul", "Rosa", "Sam", "Tina", "Victor")
ANIMALS = ("cat", "dog", "horse", "bird", "fox", "rabbit", "goat", "mouse", "owl", "duck", "sheep", "bear", "frog",
           "lion", "tiger", "wolf", "deer", "cow", "pig", "crow")
OBJECTS = ("table", "chair", "lamp", "book", "letter", "box", "cup", "bottle", "window", "door", "key", "coat", "hat",
           "basket", "bell", "clock", "candle", "blanket", "bucket", "ladder", "kettle", "mirror", "pencil", "ribbon",
           "rope", "shoe", "spoon", "plate", "bicycle", "boat", "wagon", "drum", "guitar", "radio", "camera", "map",
           "ticket", "umbrella", "wallet", "jar")
FOODS = ("bread", "apple", "orange", "cheese", "soup", "cake", "pie", "tea", "coffee", "honey", "rice", "lemon",
         "pear", "grape", "carrot")
PLACES = ("garden", "kitchen", "market", "station", "river", "forest", "village", "harbor", "library", "bakery",
          "bridge", "hill", "field", "beach", "valley", "school", "church", "castle", "farm", "museum", "park", "road",
          "lake", "island", "tower")
ADJECTIVES = ("small", "big", "old", "young", "red", "blue", "green", "yellow", "brown", "white", "black", "quiet",
              "loud", "warm", "cold", "bright", "dark", "heavy", "light", "soft", "hard", "clean", "dirty", "happy",
              "sleepy", "hungry", "clever", "gentle", "strange", "lovely", "tiny", "huge", "empty", "full", "broken",
              "shiny", "wooden", "golden", "tall", "short")
TRANSITIVE = (("see", "saw"), ("find", "found"), ("carry", "carried"), ("paint", "painted"), ("clean", "cleaned"),
              ("open", "opened"), ("close", "closed"), ("fix", "fixed"), ("buy", "bought"), ("sell", "sold"),
              ("bring", "brought"), ("take", "took"), ("hide", "hid"), ("follow", "followed"), ("watch", "watched"),
              ("push", "pushed"), ("pull", "pulled"), ("wash", "washed"), ("drop", "dropped"), ("lift", "lifted"),
              ("hold", "held"), ("want", "wanted"), ("like", "liked"), ("help", "helped"), ("visit", "visited"),
              ("draw", "drew"), ("borrow", "borrowed"), ("keep", "kept"), ("move", "moved"), ("count", "counted"))
"""Verbs that take an object: (base form, past tense)."""
INTRANSITIVE = (("sleep", "slept"), ("run", "ran"), ("walk", "walked"), ("sing", "sang"), ("laugh", "laughed"),
                ("wait", "waited"), ("dance", "danced"), ("swim", "swam"), ("jump", "jumped"), ("smile", "smiled"),
                ("work", "worked"), ("rest", "rested"), ("cry", "cried"), ("shout", "shouted"),
                ("listen", "listened"), ("whisper", "whispered"), ("climb", "climbed"), ("sit", "sat"),
                ("stay", "stayed"), ("arrive", "arrived"))
ADVERBS = ("quickly", "slowly", "quietly", "loudly", "happily", "sadly", "carefully", "gently", "suddenly", "again",
           "early", "late", "together", "alone", "softly", "proudly", "calmly", "eagerly", "bravely", "patiently")
TIMES = ("today", "yesterday", "this morning", "last night", "every day", "on Monday", "on Friday", "in the evening",
         "at noon", "after lunch", "before dinner", "in the spring", "in winter", "at dawn", "once")
PREPOSITIONS = ("near", "behind", "under", "beside", "inside", "past", "across", "above", "outside", "around")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")
_PLURALS = {"mouse": "mice", "sheep": "sheep", "wolf": "wolves", "deer": "deer", "fox": "foxes"}

PATTERNS = (
    "the {adj} {animal} {vt_past} the {object} {prep} the {place}.",
    "{name} {vi_past} {adverb} {time}.",
    "did {name} {vt} the {adj} {object}?",
    "{time}, {name} and {name2} {vt_past} {a_adj} {food}.",
    "look at the {adj} {animal} {prep} the {place}!",
    "the {object} is {adj}, but the {object2} is {adj2}.",
    "why did the {animal} {vi} {adverb}?",
    "{name} said that the {place} was {adj} {time}.",
    "{number} {adj} {animals} {vi_past} {prep} the {place}.",
    "please {vt} the {object} and {vt2} the {food}.",
    "where is the {adj} {object}? it was {prep} the {place}.",
    "{name} {vt_past} the {food}; then the {animal} {vi_past} {adverb}.",
)
"""The grammar: sentence patterns whose slots are filled from the word lists above."""


def sentence(rng: np.random.Generator) -> str:
    """One sentence of the grammar: a pattern of `PATTERNS` with its slots filled, drawn from `rng`."""
    def pick(words):
        return words[rng.integers(len(words))]

    name, name2 = rng.choice(NAMES, 2, replace=False)
    (object1, object2), (adj, adj2) = rng.choice(OBJECTS, 2, replace=False), rng.choice(ADJECTIVES, 2, replace=False)
    (vt, vt_past), (vt2, _) = TRANSITIVE[rng.integers(len(TRANSITIVE))], TRANSITIVE[rng.integers(len(TRANSITIVE))]
    vi, vi_past = INTRANSITIVE[rng.integers(len(INTRANSITIVE))]
    animal = pick(ANIMALS)
    plural = _PLURALS.get(animal, animal + "s")
    slots = {"name": name, "name2": name2, "object": object1, "object2": object2, "adj": adj, "adj2": adj2,
             "vt": vt, "vt_past": vt_past, "vt2": vt2, "vi": vi, "vi_past": vi_past, "animal": animal,
             "animals": plural, "food": pick(FOODS), "place": pick(PLACES), "prep": pick(PREPOSITIONS),
             "adverb": pick(ADVERBS), "time": pick(TIMES), "number": pick(NUMBERS),
             "a_adj": ("an " if adj[0] in "aeiou" else "a ") + adj}
    text = pick(PATTERNS).format(**slots)
    return re.sub(r"(^|[.?!] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)  # capitalise sentences


SENTENCE_SHARES = {"test": 10, "val": 10, "train": 80}
"""Percent of all sentences of the grammar that belong to each split (`sentence_split`)."""


def sentence_split(text: str) -> str:
    """The split a sentence belongs to, from a hash of its text: every sentence of the grammar is in exactly one,
    so "val" and "test" sentences are never heard in training, whatever the seed or corpus size."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100
    for name, share in SENTENCE_SHARES.items():
        if bucket < share:
            return name
        bucket -= share
    raise AssertionError("SENTENCE_SHARES must add up to 100")


# ----------------------------------------------------------------------------------------------
# Voices and the corpus
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Voice:
    """A speaker: an espeak-ng voice (accent + variant) with its own pitch (0-99) and speed (words per minute)."""

    name: str
    espeak: str
    pitch: int
    speed: int

    @property
    def language(self) -> str:
        """The espeak-ng voice without its variant: the accent its phonemes are written in."""
        return self.espeak.split("+")[0]


VOICES = (
    Voice("us-m3", "en-us+m3", 40, 165),
    Voice("us-f2", "en-us+f2", 60, 160),
    Voice("gb-m1", "en+m1", 45, 170),
    Voice("gb-f3", "en+f3", 65, 150),
    Voice("us-m7", "en-us+m7", 35, 155),
    Voice("rp-f4", "en-gb-x-rp+f4", 55, 175),
    Voice("us-m5", "en-us+m5", 50, 180),
    Voice("sc-m2", "en-gb-scotland+m2", 42, 160),
    Voice("us-f1", "en-us+f1", 58, 165),
    Voice("gb-m6", "en+m6", 48, 158),
)
HELD_OUT = {"val": "us-f1", "test": "gb-m6"}
"""The voice each evaluation split keeps to itself: never heard in "train" or in the other split."""
SEEN_VOICES = tuple(v for v in VOICES if v.name not in HELD_OUT.values())
"""The voices of "train"; "val" and "test" hear them too, on sentences of their own."""
PITCH_JITTER, SPEED_JITTER = 6, 0.1
"""Each utterance varies its voice's pitch by up to +-6 and its speed by up to +-10%."""

SPLITS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
"""Seed offset of each split: utterance i of split s is drawn from seed SPLITS[s] + i (and the corpus seed)."""
SPLIT_SIZE = 1_000_000
MIN_UTTERANCES, MAX_UTTERANCES = 3, 100_000
VAL_SHARE = TEST_SHARE = 0.1
"""Share of a corpus's utterances in "val" and in "test" (at least one each); the rest is "train"."""
CORPUS_VERSION = 1
"""Raised whenever the corpus a seed gives changes, so that caches built by an older version are not reused."""
_FIELDS = ("id", "path", "text", "phonemes", "voice", "espeak_voice", "pitch", "speed", "split", "duration")


@dataclass(frozen=True)
class Utterance:
    """One row of a corpus's metadata; `path` is relative to the corpus folder, `duration` in seconds."""

    id: str
    path: str
    text: str
    phonemes: str
    voice: str
    espeak_voice: str
    pitch: int
    speed: int
    split: str
    duration: float


def split_seed(split: str, i: int) -> int:
    """The seed of utterance i of `split` ("train", "val", "test")."""
    return splits.split_seed(SPLITS, SPLIT_SIZE, split, i, "utterance")


def split_sizes(n_utterances: int) -> dict[str, int]:
    """How many of `n_utterances` go to each split: `VAL_SHARE` and `TEST_SHARE` (at least one each), the rest
    to "train"."""
    if isinstance(n_utterances, bool) or not isinstance(n_utterances, int) or not (
            MIN_UTTERANCES <= n_utterances <= MAX_UTTERANCES):
        raise UsageError(f"a corpus needs between {MIN_UTTERANCES} and {MAX_UTTERANCES} utterances (one for each "
                         f"split at least), got {n_utterances!r}")
    val, test = max(1, round(VAL_SHARE * n_utterances)), max(1, round(TEST_SHARE * n_utterances))
    return {"train": n_utterances - val - test, "val": val, "test": test}


def plan_utterance(split: str, i: int, seed: int) -> tuple[str, Voice, int, int]:
    """(text, voice, pitch, speed) of utterance i of `split` in the corpus of `seed`. The text is a sentence of
    that split's share of the grammar (`sentence_split`). "train" goes round `SEEN_VOICES`; "val" and "test" give
    their even utterances to their `HELD_OUT` voice and their odd ones to the seen voices in turn."""
    rng = np.random.default_rng([int(seed) % 2**63, split_seed(split, i)])
    for _ in range(10_000):  # a split owns >= 10% of the sentences: ~10 draws on average
        text = sentence(rng)
        if sentence_split(text) == split:
            break
    else:
        raise AssertionError(f"no {split} sentence in 10,000 draws")
    if split != "train" and i % 2 == 0:
        voice = next(v for v in VOICES if v.name == HELD_OUT[split])
    else:
        voice = SEEN_VOICES[((i if split == "train" else i // 2) + seed) % len(SEEN_VOICES)]
    pitch = int(np.clip(voice.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 99))
    speed = int(round(voice.speed * rng.uniform(1 - SPEED_JITTER, 1 + SPEED_JITTER)))
    return text, voice, pitch, speed


def speak(text: str, voice: str, pitch: int, speed: int, sample_rate: int) -> np.ndarray:
    """(n,) float32: `text` spoken by espeak-ng voice `voice` at `pitch` (0-99) and `speed` (words per minute),
    resampled from espeak-ng's 22,050 Hz to `sample_rate` and set to the default loudness (`normalise_loudness`)."""
    with tempfile.TemporaryDirectory(prefix="ditlab-espeak-") as tmp:
        wav = Path(tmp) / "speech.wav"
        _espeak(["-p", str(int(pitch)), "-s", str(int(speed)), "-w", str(wav)], text, voice)
        return normalise_loudness(read_audio(wav, sample_rate))


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/ditlab/audio (default ~/.cache/ditlab/audio): generated corpora kept between runs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ditlab" / "audio"


def corpus_name(n_utterances: int, seed: int, config: FeatureConfig = PRESETS["default"]) -> str:
    """The folder name of a corpus in `cache_dir()`."""
    return f"corpus-v{CORPUS_VERSION}-{n_utterances}-seed{seed}-{config.sample_rate}hz"


def _settings(n_utterances: int, seed: int, config: FeatureConfig) -> dict:
    return {"version": CORPUS_VERSION, "n_utterances": n_utterances, "seed": seed, "sample_rate": config.sample_rate}


def _check_folder(folder: Path, settings: dict) -> dict | None:
    """The recorded `corpus.json` of `folder` when it holds this corpus (complete or not); None for a new or empty
    folder; a UsageError for a folder that holds something else."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: is a file; expected a folder for the corpus")
    if not folder.exists() or not any(folder.iterdir()):
        return None
    record = folder / "corpus.json"
    if not record.is_file():
        raise UsageError(f"{folder}: not empty and holds no corpus.json; expected a new or empty folder, or one "
                         "holding a corpus built by ditlab")
    try:
        recorded = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{record}: unreadable corpus record ({e}); delete the folder to rebuild it") from e
    theirs = {k: recorded.get(k) for k in settings}
    if theirs != settings:
        raise UsageError(f"{folder}: holds a corpus built with {theirs}, not {settings}; choose another folder or "
                         "delete this one")
    return recorded


def build_corpus(out_dir: str | Path | None, n_utterances: int, seed: int = 0,
                 config: FeatureConfig = PRESETS["default"]) -> Path:
    """Build (or reuse) a corpus of `n_utterances` espeak-ng utterances in `out_dir` (None: `cache_dir()` /
    `corpus_name(...)`) at `config.sample_rate`, and return the folder.

    The folder holds wavs/<id>.wav (16-bit PCM, mono, -20 dBFS RMS), metadata.jsonl and metadata.csv (the
    `Utterance` fields: id, path, text, phonemes in IPA in the voice's own accent, voice, espeak_voice, pitch,
    speed, split, duration in s) and corpus.json (the settings, the split sizes and the voices). A folder that
    already holds this corpus is reused as it is; one left half-built is finished, keeping the files written."""
    settings = _settings(n_utterances, seed, config)
    sizes = split_sizes(n_utterances)
    folder = Path(out_dir) if out_dir is not None else cache_dir() / corpus_name(n_utterances, seed, config)
    recorded = _check_folder(folder, settings)
    if recorded is not None and recorded.get("complete"):
        return folder
    espeak_binary()
    record = {**settings, "complete": False, "splits": sizes, "held_out": HELD_OUT,
              "voices": [asdict(v) for v in VOICES]}
    write_json(folder / "corpus.json", record)
    plans = [(split, i, *plan_utterance(split, i, seed)) for split in SPLITS for i in range(sizes[split])]
    phonemes: dict[int, str] = {}
    for language in sorted({voice.language for *_, voice, _, _ in plans}):
        index = [k for k, (*_, voice, _, _) in enumerate(plans) if voice.language == language]
        phonemes.update(zip(index, phonemize([plans[k][2] for k in index], language), strict=True))
    rows = []
    for k, (split, i, text, voice, pitch, speed) in enumerate(plans):
        uid = f"{split}-{i:05d}"
        path = folder / "wavs" / f"{uid}.wav"
        if path.is_file():  # written by an earlier run of this build (files are written atomically)
            duration = librosa.get_duration(path=path)
        else:
            audio = speak(text, voice.espeak, pitch, speed, config.sample_rate)
            write_audio(path, audio, config.sample_rate)
            duration = len(audio) / config.sample_rate
        rows.append(Utterance(uid, f"wavs/{uid}.wav", text, phonemes[k], voice.name, voice.espeak, pitch, speed,
                              split, round(duration, 4)))
    _write_utf8(folder / "metadata.jsonl", "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows))
    _write_utf8(folder / "metadata.csv", _csv(rows))
    write_json(folder / "corpus.json", {**record, "complete": True,
                                        "hours": round(sum(r.duration for r in rows) / 3600, 4)})
    return folder


def _write_utf8(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _csv(rows: Sequence[Utterance]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buf.getvalue()


def load_corpus(folder: str | Path, split: str | None = None) -> list[Utterance]:
    """The utterances of a corpus `build_corpus` wrote (those of `split` only, if given), in metadata order."""
    folder = Path(folder)
    if split is not None and split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise InputError(f"{folder}: no metadata.jsonl; expected a corpus folder written by build_corpus")
    rows = [Utterance(**json.loads(line)) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if split is None or r.split == split]
