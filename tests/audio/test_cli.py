"""`ditlab audio` through the `ditlab` root's `main`, in-process: build-corpus (exit 0, its summary and JSON) and
exit 2 with one line for bad arguments; info."""

import json

import pytest

from ditlab.audio.data import load_corpus


@pytest.fixture
def ditlab(vertical_cli):
    """run(*args): `ditlab audio ARGS` through the root's `main`, with only this vertical plugged in."""
    return vertical_cli("audio")


def test_build_corpus(espeak, ditlab, tmp_path):
    r = ditlab("build-corpus", "--out", tmp_path / "c", "-n", 3, "--seed", 2, "--preset", "f5",
               "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    assert "corpus of 3 utterances (train 1, val 1, test 1;" in r.stdout and "at 24000 Hz" in r.stdout
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["utterances"] == 3 and summary["sample_rate"] == 24_000 and summary["seed"] == 2
    assert len(load_corpus(tmp_path / "c")) == 3
    again = ditlab("build-corpus", "--out", tmp_path / "c", "-n", 3, "--seed", 2, "--preset", "f5")
    assert again.returncode == 0 and "corpus of 3 utterances" in again.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-n", "2"], "error: a corpus needs between 3 and 100000 utterances"),
    (["--preset", "f6"], "error: unknown feature preset 'f6'; expected one of ('default', 'f5')"),
    (["--out-file"], "No such option"),
])
def test_bad_arguments_exit_2(ditlab, tmp_path, args, message):
    if "--out-file" not in args:
        args = ["--out", tmp_path / "c", *args]
    r = ditlab("build-corpus", *args)
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "c").exists()


def test_out_that_is_a_file_exits_2(ditlab, tmp_path):
    (tmp_path / "taken").write_text("x")
    r = ditlab("build-corpus", "--out", tmp_path / "taken", "-n", 3)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'taken'}: is a file; expected a folder for the corpus"


def test_info(ditlab):
    r = ditlab("info")
    assert r.returncode == 0
    assert "preset f5: 24000 Hz, 100 mels" in r.stdout and "gb-m6 (en+m6, test only)" in r.stdout
