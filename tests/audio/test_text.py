"""The text front end: normalisation, characters, espeak-ng phonemes (one run for many texts), and the refusals:
empty text, text with no supported letter, an unknown espeak-ng voice, espeak-ng missing."""

import pytest

from ditlab.audio.data import (
    CHARACTERS,
    PAD,
    FeatureConfig,
    encode_text,
    normalise_text,
    phonemize,
    text_tokens,
    vocabulary,
)
from ditlab.core.errors import InputError, UsageError

PHONEMES = FeatureConfig(text="phoneme")


def test_normalisation():
    assert normalise_text("  Héllo,   WORLD\u2019s \u201cbest\u201d  café\u20142024!\n") == "hello, world's best cafe-!"
    assert normalise_text("Naïve\tRÉSUMÉ\u2026") == "naive resume."
    assert set(normalise_text("The quick brown fox; jumps: over? the lazy dog!")) <= set(CHARACTERS)


@pytest.mark.parametrize("text", ["", "   ", "\n\t  "])
def test_empty_text_refused(text):
    with pytest.raises(InputError, match="text is empty; expected at least one word to speak"):
        normalise_text(text)


@pytest.mark.parametrize("text", ["12345", "#@%&*", "...!?", "\u4f60\u597d", "\u2026 -- \u2019"])
def test_text_with_only_unsupported_characters_refused(text):
    with pytest.raises(InputError, match=r"has no supported letters; expected English text \(a-z, apostrophe, "
                                         r"punctuation ',\.;:!\?-'; numbers written as words\)"):
        normalise_text(text)


def test_non_string_refused():
    with pytest.raises(InputError, match="expected text as a string, got int"):
        normalise_text(42)


def test_vocabularies_are_unique_with_padding_first():
    for cfg in (FeatureConfig(), PHONEMES):
        vocab = vocabulary(cfg)
        assert vocab[0] == PAD and len(set(vocab)) == len(vocab)


def test_characters_encode_and_decode():
    cfg = FeatureConfig()
    text = "Where is the red box? It's near the lake."
    ids = encode_text(text, cfg)
    assert ids.dtype.kind == "i" and ids.min() >= 1 and ids.max() < len(vocabulary(cfg))
    assert "".join(vocabulary(cfg)[i] for i in ids) == normalise_text(text) == "".join(text_tokens(text, cfg))
    with pytest.raises(InputError, match="text is empty"):
        encode_text(" ", cfg)


def test_phonemes(espeak):
    hello, two = phonemize(["Hello, world.", "Where is it? It was near the lake."])
    assert hello == "həlˈoʊ, wˈɜːld."  # espeak-ng 1.51, en-us
    assert two.count("?") == 1 and two.endswith(".") and "ˈ" in two
    assert phonemize(["The dog."], "en")[0] != phonemize(["The dog."], "en-us")[0]  # British vs American vowel


def test_phonemes_of_many_texts_in_one_run_match_one_at_a_time(espeak):
    texts = ["Hello, world.", "well - yes; no!", "a", "Anna's cat... sat?", "one " * 120 + "end.", "-, then: go"]
    assert phonemize(texts) == [phonemize([t])[0] for t in texts]
    assert phonemize(["well - yes; no!"])[0].count(";") == 1


def test_phoneme_tokens(espeak):
    ids = encode_text("The small red cat sat near the old table.", PHONEMES)
    vocab = vocabulary(PHONEMES)
    assert ids.min() >= 1 and ids.max() < len(vocab)
    assert "".join(vocab[i] for i in ids) == phonemize(["The small red cat sat near the old table."])[0]
    with pytest.raises(InputError, match="has no supported letters"):
        text_tokens("1234", PHONEMES)  # refused before espeak-ng runs


def test_unknown_espeak_voice_refused(espeak):
    with pytest.raises(UsageError, match="espeak-ng has no voice 'xx-nope'; expected one `espeak-ng --voices=en` "
                                         "lists"):
        text_tokens("hello", FeatureConfig(text="phoneme", language="xx-nope"))


def test_missing_espeak_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="espeak-ng is not installed.*install the Debian package espeak-ng"):
        phonemize(["hello"])
    assert text_tokens("Hello!", FeatureConfig()) == list("hello!")  # characters need no espeak-ng
