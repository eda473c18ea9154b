"""The espeak-ng corpus: the grammar, seeded plans (the same seed gives the same texts and voices), splits disjoint
in sentences, held-out voices never in train, the files and metadata written, reuse, resume and refusals."""

import json
import time

import numpy as np
import pytest
import soundfile as sf

from ditlab.audio.data import (
    ADJECTIVES,
    ADVERBS,
    ANIMALS,
    FOODS,
    HELD_OUT,
    INTRANSITIVE,
    NAMES,
    NUMBERS,
    OBJECTS,
    PATTERNS,
    PLACES,
    PREPOSITIONS,
    SEEN_VOICES,
    TIMES,
    TRANSITIVE,
    VOICES,
    build_corpus,
    cache_dir,
    corpus_name,
    load_corpus,
    plan_utterance,
    sentence,
    sentence_split,
    split_sizes,
)
from ditlab.audio.io import dbfs, read_audio
from ditlab.core.errors import InputError, UsageError

FIELDS = {"id", "path", "text", "phonemes", "voice", "espeak_voice", "pitch", "speed", "split", "duration"}


def plans(split: str, n: int, seed: int = 0) -> list:
    return [plan_utterance(split, i, seed) for i in range(n)]


def test_vocabulary_and_grammar():
    words = {w for group in (NAMES, ANIMALS, OBJECTS, FOODS, PLACES, ADJECTIVES, ADVERBS, PREPOSITIONS, NUMBERS)
             for w in group} | {w for pair in TRANSITIVE + INTRANSITIVE for w in pair}
    words |= {w for t in TIMES for w in t.split()}
    assert len(words) >= 300 and len(PATTERNS) >= 8
    rng = np.random.default_rng(0)
    texts = [sentence(rng) for _ in range(300)]
    assert len(set(texts)) > 290 and all(t[0].isupper() and t[-1] in ".?!" for t in texts)
    assert [sentence(np.random.default_rng(5)) for _ in range(2)] == [sentence(np.random.default_rng(5))] * 2


def test_same_seed_same_plan_other_seed_other_plan():
    for split in ("train", "val", "test"):
        assert plans(split, 20, seed=1) == plans(split, 20, seed=1)
        other = [p[0] for p in plans(split, 20, seed=2)]
        assert sum(a[0] != b for a, b in zip(plans(split, 20, seed=1), other, strict=True)) >= 18


def test_splits_are_disjoint_in_sentences():
    texts = {split: {p[0] for seed in (0, 1) for p in plans(split, n, seed)}
             for split, n in (("train", 300), ("val", 100), ("test", 100))}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
    assert all(sentence_split(t) == split for split, group in texts.items() for t in group)


def test_held_out_voices():
    names = {split: {p[1].name for p in plans(split, n)} for split, n in (("train", 200), ("val", 40), ("test", 40))}
    assert names["train"] == {v.name for v in SEEN_VOICES} and len(SEEN_VOICES) >= 6
    assert not names["train"] & set(HELD_OUT.values())
    assert HELD_OUT["val"] in names["val"] and HELD_OUT["test"] not in names["val"]
    assert HELD_OUT["test"] in names["test"] and HELD_OUT["val"] not in names["test"]
    assert plan_utterance("test", 0, 0)[1].name == HELD_OUT["test"]  # a corpus of any size hears it
    assert len({(v.espeak, v.pitch, v.speed) for v in VOICES}) == len(VOICES)


def test_pitch_and_speed_vary_around_the_voice():
    for _, voice, pitch, speed in plans("train", 50):
        assert abs(pitch - voice.pitch) <= 6 and abs(speed / voice.speed - 1) <= 0.1 + 1e-9


def test_split_sizes():
    assert split_sizes(6) == {"train": 4, "val": 1, "test": 1}
    assert split_sizes(3) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(1000) == {"train": 800, "val": 100, "test": 100}
    for bad in (2, 0, 100_001, True, 5.0):
        with pytest.raises(UsageError, match=r"a corpus needs between 3 and 100000 utterances \(one for each split "
                                             r"at least\), got"):
            split_sizes(bad)


def test_tiny_corpus_files_and_metadata(tiny_corpus):
    rows = load_corpus(tiny_corpus)
    assert [r.split for r in rows] == ["train"] * 4 + ["val", "test"]
    record = json.loads((tiny_corpus / "corpus.json").read_text())
    assert record["complete"] and record["sample_rate"] == 16_000 and record["seed"] == 3
    jsonl = [json.loads(line) for line in (tiny_corpus / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(tiny_corpus / "metadata.csv", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    assert set(jsonl[0]) == set(header) == FIELDS and len(jsonl) == 6
    for row, (text, voice, pitch, speed) in zip(rows, [plan_utterance(r.split, int(r.id[-5:]), 3) for r in rows],
                                                strict=True):
        assert (row.text, row.voice, row.espeak_voice, row.pitch, row.speed) == (text, voice.name, voice.espeak,
                                                                                 pitch, speed)
        info = sf.info(str(tiny_corpus / row.path))
        assert info.samplerate == 16_000 and info.channels == 1 and info.subtype == "PCM_16"
        assert row.duration == pytest.approx(info.duration, abs=1e-3) and 0.8 < row.duration < 8
        assert -21.0 < dbfs(read_audio(tiny_corpus / row.path, 16_000)) < -19.9  # -20 dBFS unless peak-limited
        assert row.phonemes and "ˈ" in row.phonemes and row.phonemes[-1] in ".?!"
    assert rows[-1].voice == HELD_OUT["test"] and rows[-2].voice == HELD_OUT["val"]
    assert not {r.voice for r in rows if r.split == "train"} & set(HELD_OUT.values())
    assert [r.id for r in load_corpus(tiny_corpus, "val")] == ["val-00000"]


def test_same_seed_same_corpus(tiny_corpus, tmp_path):
    again = load_corpus(build_corpus(tmp_path / "again", 6, seed=3))
    first = load_corpus(tiny_corpus)
    key = [(r.id, r.text, r.phonemes, r.voice, r.pitch, r.speed, r.split) for r in first]
    assert [(r.id, r.text, r.phonemes, r.voice, r.pitch, r.speed, r.split) for r in again] == key
    assert np.allclose([r.duration for r in again], [r.duration for r in first], atol=1e-3)
    a, b = read_audio(tmp_path / "again" / again[0].path, 16_000), read_audio(tiny_corpus / first[0].path, 16_000)
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-3)


def test_built_corpus_is_reused(tiny_corpus):
    wav = tiny_corpus / "wavs" / "train-00000.wav"
    stamp, meta = wav.stat().st_mtime_ns, (tiny_corpus / "metadata.jsonl").read_text(encoding="utf-8")
    t0 = time.perf_counter()
    assert build_corpus(tiny_corpus, 6, seed=3) == tiny_corpus
    assert time.perf_counter() - t0 < 1.0
    assert wav.stat().st_mtime_ns == stamp and (tiny_corpus / "metadata.jsonl").read_text(encoding="utf-8") == meta


def test_half_built_corpus_is_finished(espeak, tmp_path):
    folder = build_corpus(tmp_path / "c", 3, seed=0)
    rows = load_corpus(folder)
    record = json.loads((folder / "corpus.json").read_text())
    (folder / "corpus.json").write_text(json.dumps({**record, "complete": False}))
    (folder / rows[1].path).unlink()
    (folder / "metadata.jsonl").unlink()
    kept = (folder / rows[0].path).stat().st_mtime_ns
    build_corpus(folder, 3, seed=0)
    assert (folder / rows[0].path).stat().st_mtime_ns == kept and (folder / rows[1].path).is_file()
    assert load_corpus(folder) == rows and json.loads((folder / "corpus.json").read_text())["complete"]


def test_default_folder_is_the_cache(espeak, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = build_corpus(None, 3, seed=1)
    assert folder == cache_dir() / corpus_name(3, 1) == tmp_path / "ditlab" / "audio" / "corpus-v1-3-seed1-16000hz"
    assert len(load_corpus(folder)) == 3


def test_bad_folders_refused(tiny_corpus, tmp_path):
    with pytest.raises(UsageError, match=r"holds a corpus built with \{.*'seed': 3.*\}, not \{.*'seed': 4.*\}; "
                                         "choose another folder or delete this one"):
        build_corpus(tiny_corpus, 6, seed=4)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no corpus.json; expected a new or empty folder"):
        build_corpus(tmp_path, 3, seed=0)
    with pytest.raises(UsageError, match="is a file; expected a folder for the corpus"):
        build_corpus(tmp_path / "notes.txt", 3, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(InputError, match="no metadata.jsonl; expected a corpus folder written by build_corpus"):
        load_corpus(tmp_path)
    with pytest.raises(UsageError, match=r"unknown split 'dev'; expected one of \('train', 'val', 'test'\)"):
        load_corpus(tiny_corpus, "dev")
