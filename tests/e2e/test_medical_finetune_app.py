"""The medical app fine-tunes the prior on uploaded scans (NIfTI files or a zip of them) into an adapter that its
reconstructions then use, and shows the safeguard's verdict beside the metrics. The handlers are called directly:
what they return is what the page shows."""

import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch

from ditlab.core.training.peft import apply_peft, read_adapter_meta, save_adapter
from ditlab.medical import app
from ditlab.medical.families import SPLITS, family_affine, make_volume
from ditlab.medical.finetune import PEFT
from ditlab.medical.io import Volume, save_volume, spacing_of
from ditlab.medical.models import PRIOR_NAME, prior_model

USER = SPLITS["user"]
FULL_WINDOW = "full [-1000, 1000]"


def no_progress(*args, **kwargs) -> None:
    """Stands in for gr.Progress outside a request."""


def scan(path: Path, seed: int, shape=(32, 32, 16), spacing=(1.0, 1.0, 2.0)) -> Path:
    affine = family_affine("head", shape, seed, spacing)
    return save_volume(Volume(make_volume("head", shape, seed), affine, spacing_of(affine)), path)


def zip_of(path: Path, *files: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            z.write(f, f"scans/{f.name}")
        z.writestr("scans/README.txt", "not a scan: skipped")
    return path


@pytest.fixture(scope="module")
def one_thread_here():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, one_thread_here):
    """(adapter path, note) of a 2-step fine-tune on a zip of two scans."""
    folder = tmp_path_factory.mktemp("upload")
    upload = zip_of(folder / "my-scans.zip", scan(folder / "a.nii.gz", USER), scan(folder / "b.nii.gz", USER + 1))
    return app.run_finetune([str(upload)], 2, progress=no_progress)


def test_finetune_on_a_zip_returns_an_adapter_and_a_note(tuned):
    adapter, note = tuned
    assert Path(adapter).name == "ct-prior-adapter.safetensors" and Path(adapter).stat().st_size < 2**20
    assert read_adapter_meta(adapter)["base_name"] == PRIOR_NAME
    assert "Fine-tuned on 2 scans (32 slices) for 2 steps" in note and "for ct-prior" in note
    assert "Resampled" not in note


def test_finetune_names_resampled_uploads_by_their_own_names(tmp_path, one_thread_here):
    files = [scan(tmp_path / "fine.nii.gz", USER), scan(tmp_path / "coarse.nii", USER + 1, spacing=(2.0, 2.0, 2.0))]
    calls = []
    _, note = app.run_finetune([str(f) for f in files], 2, progress=lambda *a, **k: calls.append(k.get("desc")))
    assert note.endswith("Resampled in-plane to 1 mm: coarse.nii.")
    assert str(tmp_path) not in note
    assert calls[0] == "reading the scans" and calls[-1].startswith("fine-tuning 2/2, loss ")


@pytest.mark.parametrize(("steps", "n", "message"), [
    (2, 1, "fine-tuning needs at least 2 volumes, got 1"),
    (0, 2, "fine-tuning steps must be from 1 to 2000, got 0"),
    (2, 0, "no scans uploaded; expected at least 2 volumes"),
], ids=["one-volume", "zero-steps", "nothing"])
def test_finetune_reports_bad_uploads(tmp_path, steps, n, message):
    files = [scan(tmp_path / f"s{k}.nii.gz", USER + k) for k in range(n)]
    uploads = [str(zip_of(tmp_path / "scans.zip", *files))] if files else []
    with pytest.raises(gr.Error, match=message):
        app.run_finetune(uploads, steps, progress=no_progress)


def test_finetune_reports_a_broken_zip(tmp_path):
    (tmp_path / "scans.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(gr.Error, match="scans.zip: not a readable zip file"):
        app.run_finetune([str(tmp_path / "scans.zip")], 2, progress=no_progress)


def reconstruct(upload: Path, methods: list[str], adapter: str | None):
    """(metrics table, notes) of the app's reconstruction of `upload` from 8 sparse views."""
    out = app.run_reconstruction(str(upload), "phantom quick 64x64x32", "sparse-view", 8, 4.0, 0.01, methods, 2, 0,
                                 FULL_WINDOW, "none", adapter=adapter, progress=no_progress)
    table, notes = out[-3], out[-2]
    return {row["method"]: row for row in table.to_dict("records")}, notes


def test_reconstruction_with_the_adapter_shows_the_safeguard(tmp_path, tuned, one_thread_here):
    adapter, _ = tuned
    rows, notes = reconstruct(scan(tmp_path / "v.nii.gz", USER + 5), ["fbp", "dds"], adapter)
    assert app.COLUMNS[-1] == "safeguard" and list(rows) == ["FBP", "DDS (DiT)"]
    assert rows["FBP"]["safeguard"] == "-"
    verdict = rows["DDS (DiT)"]["safeguard"]
    assert verdict == "passed" or verdict.startswith("backed off ") and verdict.endswith("/16")
    assert "with the adapter ct-prior-adapter.safetensors" in notes and "**DDS (DiT)** safeguard: " in notes


def test_reconstruction_refuses_an_adapter_of_another_prior(tmp_path, one_thread_here):
    foreign = save_adapter(apply_peft(prior_model(), PEFT), tmp_path / "other.safetensors", base_digest="0" * 64,
                           base_name="other-prior")
    with pytest.raises(gr.Error, match=r"adapter other.safetensors belongs to the base 'other-prior'.*'ct-prior'") as e:
        reconstruct(scan(tmp_path / "v.nii.gz", USER + 5), ["dds"], str(foreign))
    assert str(tmp_path) not in str(e.value)


@pytest.mark.slow  # the page's slider starts at 10 steps of 16 crops: about 30 s
def test_the_finetune_endpoint_returns_the_adapter_file(serve_app, tmp_path):
    from gradio_client import handle_file

    upload = zip_of(tmp_path / "my-scans.zip", scan(tmp_path / "a.nii.gz", USER), scan(tmp_path / "b.nii.gz", USER + 1))
    with serve_app("medical.py") as client:
        adapter, note = client.predict([handle_file(str(upload))], 10, api_name="/finetune")
    assert Path(adapter).name == "ct-prior-adapter.safetensors"
    assert read_adapter_meta(adapter)["base_name"] == PRIOR_NAME and "for 10 steps" in note
