"""Files and app helpers every vertical shares: atomic writes, safe names, upload guard, model cache, pages."""

import gzip
import os

import pytest

from ditlab.core.errors import InputError, is_input_error
from ditlab.core.files import atomic_write, safe_stem, split_suffix, write_json
from ditlab.core.ui import ModelCache, Page, discover_pages, friendly_errors, guard_upload, request_dir

NIFTI = (".nii", ".nii.gz")


def test_atomic_write_leaves_the_old_file_and_no_temporary_on_error(tmp_path):
    path = write_json(tmp_path / "out.json", {"a": 1})
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def fail(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(("name", "stem", "suffix"), [
    ("scan.nii.gz", "scan", ".nii.gz"), ("Scan.NII.GZ", "Scan", ".nii.gz"), ("a.b.nii", "a.b", ".nii"),
    ("notes.txt", "notes.txt", ""), (".nii.gz", ".nii.gz", ""),
])
def test_split_suffix_takes_the_longest_known_suffix(name, stem, suffix):
    assert split_suffix(name, NIFTI) == (stem, suffix)


@pytest.mark.parametrize(("name", "stem"), [
    ("../../etc/passwd.nii.gz", "passwd"), ("C:\\\\scans\\\\head ct (1).nii", "head-ct-1"), ("...", "output"),
    ("phantom quick 64x64x32", "phantom-quick-64x64x32"), ("ünïcode scan.nii.gz", "n-code-scan"),
])
def test_safe_stem_drops_folders_and_odd_characters(name, stem):
    assert safe_stem(name, NIFTI) == stem


def test_upload_guard_checks_suffix_size_and_magic_bytes(tmp_path):
    magic = {".nii.gz": (b"\x1f\x8b",)}
    good = tmp_path / "ok.nii.gz"
    good.write_bytes(gzip.compress(b"x" * 100))
    assert guard_upload(good, NIFTI, 1000, magic) == good
    with pytest.raises(InputError, match=r"ok\.nii\.gz is .* at most"):
        guard_upload(good, NIFTI, 10, magic)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(InputError, match="not a .nii.gz file"):
        guard_upload(fake, NIFTI, 1000, magic)
    with pytest.raises(InputError, match="unsupported file type; expected one of .nii, .nii.gz"):
        guard_upload(tmp_path / "x.png", NIFTI, 1000)
    with pytest.raises(InputError, match="did not arrive"):
        guard_upload(tmp_path / "gone.nii", NIFTI, 1000)
    with pytest.raises(InputError) as e:
        guard_upload(tmp_path / "x.png", NIFTI, 1000)
    assert str(tmp_path) not in str(e.value)  # the server's folder is never shown


def test_model_cache_loads_once_and_request_folders_are_fresh():
    cache, loads = ModelCache(), []
    assert cache.get("m", lambda: loads.append(1) or "model") == "model"
    assert cache.get("m", lambda: loads.append(1) or "other") == "model"
    assert loads == [1]
    a, b = request_dir("medical"), request_dir("medical")
    assert a != b and a.is_dir() and b.is_dir() and "medical" in a.name


def test_friendly_errors_tell_bad_input_from_bugs():
    import gradio as gr

    @friendly_errors
    def bad():
        raise InputError("views must be an integer in [2, 720], got 1")

    @friendly_errors
    def bug():
        return {}["key"]

    with pytest.raises(gr.Error, match=r"views must be an integer in \[2, 720\]"):
        bad()
    with pytest.raises(gr.Error, match="internal error"):
        bug()
    assert is_input_error(FileNotFoundError()) and not is_input_error(KeyError("x"))


def test_the_suite_finds_every_installed_page():
    pages = discover_pages()
    assert all(isinstance(p, Page) for p in pages)
    routes = [p.route for p in pages]
    assert routes[:2] == ["", "medical"]  # the core demo is the landing page, ordered first
