"""The batch engine: per-item errors, the manifest, resume, folder discovery and engine choice."""

import importlib.util
import json
from pathlib import Path

import pytest

from ditlab.core.batch import MANIFEST, BatchReport, Item, items_from_folder, read_manifest, run_batch


def make_items(tmp_path: Path, names=("a", "b", "c")) -> list[Item]:
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    items = []
    for name in names:
        (inputs / f"{name}.txt").write_text(name * 3)
        items.append(Item(name, str(inputs / f"{name}.txt"), str(tmp_path / "out" / f"{name}.out")))
    return items


class Predictor:
    """Upper-cases the input into the output, returns its length; raises for the ids in `failing`."""

    def __init__(self, failing=()):
        self.failing, self.calls = set(failing), []

    def __call__(self, item: Item) -> dict:
        self.calls.append(item.id)
        if item.id in self.failing:
            raise ValueError(f"cannot read {item.id}")
        text = Path(item.input).read_text()
        Path(item.output).write_text(text.upper())
        return {"chars": len(text), "kind": "txt"}


def manifest_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / MANIFEST).read_text().splitlines()]


def test_a_failing_item_is_recorded_and_the_batch_goes_on(tmp_path):
    items, out = make_items(tmp_path), tmp_path / "out"
    predict, seen = Predictor(failing={"b"}), []
    report = run_batch(items, predict, out, on_item=seen.append)

    assert predict.calls == ["a", "b", "c"]
    assert report.ok == ["a", "c"] and report.skipped == []
    assert report.failed == {"b": "ValueError: cannot read b"}
    assert report.exit_code == 1
    assert report.manifest == str(out / MANIFEST)
    assert "2 done, 0 already done, 1 failed" in report.summary()
    assert "FAILED b: ValueError: cannot read b" in report.summary()
    assert (out / "a.out").read_text() == "AAA" and (out / "c.out").read_text() == "CCC"
    assert not (out / "b.out").exists()

    lines = manifest_lines(out)
    assert [r["id"] for r in lines] == ["a", "b", "c"]
    assert [r["status"] for r in lines] == ["ok", "error", "ok"]
    for rec, item in zip(lines, items, strict=True):
        assert rec["input"] == item.input and rec["output"] == item.output
        assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0
        assert "trace" not in rec  # tracebacks go to on_item, not into the manifest
    assert lines[0]["chars"] == 3 and lines[0]["kind"] == "txt" and "error" not in lines[0]
    assert lines[1]["error"] == "ValueError: cannot read b" and "chars" not in lines[1]
    # on_item sees every attempt as it happens, the failing one with its traceback
    assert [r["id"] for r in seen] == ["a", "b", "c"]
    assert "ValueError: cannot read b" in seen[1]["trace"]


def test_all_ok_gives_exit_code_zero_and_none_figures_are_allowed(tmp_path):
    items, out = make_items(tmp_path, ("a", "b")), tmp_path / "out"

    def predict(item: Item) -> None:
        Path(item.output).write_text("x")

    report = run_batch(items, predict, out)
    assert report.ok == ["a", "b"] and report.failed == {} and report.exit_code == 0
    assert [sorted(r) for r in manifest_lines(out)] == [["id", "input", "output", "seconds", "status"]] * 2
    assert BatchReport().exit_code == 0 and BatchReport(failed={"a": "E: x"}).exit_code == 1


def test_resume_skips_done_items_and_retries_failed_ones(tmp_path):
    items, out = make_items(tmp_path), tmp_path / "out"
    run_batch(items, Predictor(failing={"b"}), out)

    again = Predictor()
    report = run_batch(items, again, out)
    assert again.calls == ["b"]
    assert report.skipped == ["a", "c"] and report.ok == ["b"] and report.exit_code == 0
    assert [(r["id"], r["status"]) for r in manifest_lines(out)][3:] == [("b", "ok")]  # one line per attempt

    (out / "c.out").unlink()  # done according to the manifest, but its output is gone
    third = Predictor()
    report = run_batch(items, third, out)
    assert third.calls == ["c"] and report.skipped == ["a", "b"] and report.ok == ["c"]
    assert (out / "c.out").read_text() == "CCC"

    everything = Predictor()
    report = run_batch(items, everything, out, resume=False)
    assert everything.calls == ["a", "b", "c"] and report.skipped == [] and report.ok == ["a", "b", "c"]
    assert len(manifest_lines(out)) == 3 + 1 + 1 + 3


def test_the_last_attempt_decides(tmp_path):
    items, out = make_items(tmp_path, ("a",)), tmp_path / "out"
    run_batch(items, Predictor(), out)
    run_batch(items, Predictor(failing={"a"}), out, resume=False)  # ok, then failed: output still there
    retry = Predictor()
    report = run_batch(items, retry, out)
    assert retry.calls == ["a"] and report.ok == ["a"]


def test_an_interrupted_batch_keeps_what_it_finished(tmp_path):
    items, out = make_items(tmp_path), tmp_path / "out"

    def predict(item: Item) -> dict:
        if item.id == "b":
            raise KeyboardInterrupt  # not an item error: it stops the batch
        return Predictor()(item)

    with pytest.raises(KeyboardInterrupt):
        run_batch(items, predict, out)
    assert [r["id"] for r in manifest_lines(out)] == ["a"]
    rest = Predictor()
    report = run_batch(items, rest, out)
    assert rest.calls == ["b", "c"] and report.skipped == ["a"]


def test_read_manifest_keeps_the_last_parsable_line_per_item(tmp_path):
    path = tmp_path / MANIFEST
    path.write_text("\n".join([
        json.dumps({"id": "a", "status": "error", "error": "E: x"}),
        "{not json",
        json.dumps({"id": "b", "status": "ok"}),
        "",
        "[1, 2]",
        "42",
        "null",
        json.dumps({"status": "ok"}),  # no id
        json.dumps({"id": "a", "status": "ok", "psnr": 31.5}),
        '{"id": "b", "status": "err',  # a line cut short by a crash
    ]) + "\n")
    assert read_manifest(path) == {"a": {"id": "a", "status": "ok", "psnr": 31.5}, "b": {"id": "b", "status": "ok"}}
    assert read_manifest(tmp_path / "missing.jsonl") == {}


def test_a_corrupt_manifest_line_does_not_stop_a_resume(tmp_path):
    items, out = make_items(tmp_path, ("a", "b")), tmp_path / "out"
    run_batch(items, Predictor(), out)
    with open(out / MANIFEST, "a") as f:
        f.write("garbage\n")
    again = Predictor()
    assert run_batch(items, again, out).skipped == ["a", "b"] and again.calls == []


def test_items_from_folder_sorts_filters_and_names_outputs(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ["c.nii", "A.NII.GZ", "b.nii.gz", "d.gz", "e.txt", "f.nii.gz.bak", "notes.NPZ"]:
        (src / name).write_text("")
    (src / "series").mkdir()
    (src / "dir.nii").mkdir()  # a folder is never taken for a file, whatever its name

    items = items_from_folder(src, out, [".nii.gz", ".nii", ".npz"], lambda p: p.name.split(".")[0] + ".out")
    assert [i.id for i in items] == ["A.NII.GZ", "b.nii.gz", "c.nii", "notes.NPZ"]
    assert items[1] == Item("b.nii.gz", str(src / "b.nii.gz"), str(out / "b.out"))

    with_dirs = items_from_folder(src, out, [".nii.gz"], lambda p: p.name + ".out", include_dirs=True)
    assert [i.id for i in with_dirs] == ["A.NII.GZ", "b.nii.gz", "dir.nii", "series"]
    assert with_dirs[-1].input == str(src / "series")


def test_items_from_folder_errors(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no such input folder"):
        items_from_folder(src, out, [".nii"], str)
    src.mkdir()
    (src / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="no such input folder"):
        items_from_folder(src / "x.txt", out, [".nii"], str)
    (src / "sub").mkdir()
    with pytest.raises(ValueError, match=r"holds no inputs; expected files ending with \['.nii'\]$"):
        items_from_folder(src, out, [".nii"], str)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no inputs.* or folders"):
        items_from_folder(empty, out, [".nii"], str, include_dirs=True)
    for same in (src, src / ".", tmp_path / "in" / "sub" / ".."):
        with pytest.raises(ValueError, match="must differ from the input folder"):
            items_from_folder(src, same, [".txt"], str)


def test_unknown_engine_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"unknown engine 'dask'; expected one of \('local', 'ray'\)"):
        run_batch(make_items(tmp_path), Predictor(), tmp_path / "out", engine="dask")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_engine_without_ray_says_how_to_install_it(tmp_path):
    predict = Predictor()
    with pytest.raises(RuntimeError, match="pip install"):
        run_batch(make_items(tmp_path), predict, tmp_path / "out", engine="ray")
    assert predict.calls == []


def test_predictor_figures_never_overwrite_the_engines_fields(tmp_path):
    items = make_items(tmp_path, ("a",))

    def predict(item):
        Path(item.output).write_text("x")
        return {"id": "zzz", "status": "partial", "seconds": 123.0, "psnr": 30.0}

    report = run_batch(items, predict, tmp_path / "out")
    assert report.ok == ["a"] and not report.failed
    (line,) = manifest_lines(tmp_path / "out")
    assert line["id"] == "a" and line["status"] == "ok" and line["seconds"] < 100
    assert line["item_id"] == "zzz" and line["item_seconds"] == 123.0 and line["psnr"] == 30.0


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    items = make_items(tmp_path, ("a", "b"))
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"id": "old", "stat')  # a crash mid-write

    def predict(item):
        Path(item.output).write_text("x")

    run_batch(items, predict, out)
    assert set(read_manifest(out / MANIFEST)) == {"a", "b"}
