"""precision="auto" (`ditlab.core.accel.auto`): modes, the hardware checks, calibration, the choice and its cache,
prepared networks, and `sample(..., precision=...)`."""

import json

import pytest
import torch

from ditlab.core.accel import auto, precision
from ditlab.core.accel.auto import Choice, Trial
from ditlab.core.diffusion import FlowMatching, sample
from ditlab.core.errors import InputError
from ditlab.core.models import DiT


def tiny_dit() -> DiT:
    """A 2-block class-conditional DiT over 8x8 images (16 tokens), every weight perturbed."""
    model = DiT.from_preset("tiny/2", token_kind="2d", in_channels=2, input_size=[8, 8], depth=2, hidden_size=64,
                            num_heads=4, num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "ditlab" / "precision"


def test_unknown_precision_names_the_valid_ones(monkeypatch):
    with pytest.raises(InputError, match="int8\\+compile"):
        auto.check_precision("fp16")
    monkeypatch.setenv(auto.ENV, "int4")
    with pytest.raises(InputError, match="DITLAB_PRECISION"):
        auto.default_precision()
    monkeypatch.setenv(auto.ENV, "")
    assert auto.default_precision() == "auto"


def test_a_mode_the_hardware_lacks_is_refused_naming_what_it_has(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "fma", "avx512_vnni"})
    missing = auto.available("cpu")
    assert missing["fp32"] is None and "avx512_bf16" in missing["bf16"]
    assert "compute capability" in missing["fp8+compile"]
    with pytest.raises(InputError, match="bf16.*This machine: .*avx512_vnni"):
        auto.prepare(tiny_dit(), "bf16")


def _trials(**rows) -> list[Trial]:
    return [Trial(name, ms, snr) for name, (ms, snr) in rows.items()]


def test_pick_is_the_fastest_mode_within_the_bound():
    trials = _trials(fp32=(100, float("inf")), bf16=(50, 40.0), **{"int8+compile": (40, 60.0), "int8": (90, 60.0)})
    mode, reason = auto.pick(trials, 55.0)
    assert mode == "int8+compile" and "2.50x" in reason and "bf16" in reason  # bf16 named as outside the bound
    assert auto.pick(trials, 55.0, allowed=lambda m: not m.compile)[0] == "int8"
    assert auto.pick(trials, 30.0)[0] == "int8+compile"
    mode, reason = auto.pick(trials, 70.0)
    assert mode == "fp32" and "fell back to fp32" in reason


def test_pick_needs_a_real_gain_over_the_simpler_mode():
    trials = _trials(fp32=(100, float("inf")), **{"fp32+compile": (97, 120.0)})  # 3%: noise, not worth a compile
    assert auto.pick(trials, 55.0)[0] == "fp32"
    trials = _trials(fp32=(100, float("inf")), **{"fp32+compile": (80, 120.0)})
    assert auto.pick(trials, 55.0)[0] == "fp32+compile"


def test_calibrate_times_and_measures_every_mode():
    model = tiny_dit()
    choice = auto.calibrate(model, auto.default_probe(model, 4), ["fp32", "int8", "fp8+compile"], repeats=1)
    by = {t.mode: t for t in choice.trials}
    assert by["fp32"].snr_db == float("inf") and by["fp32"].ms > 0
    assert by["int8"].ms > 0 and 15 < by["int8"].snr_db < 200  # quantized: close to fp32, not equal
    assert by["fp8+compile"].ms is None and "compute capability" in by["fp8+compile"].error
    assert choice.mode in ("fp32", "int8") and "fp32" in choice.table()


def test_the_choice_is_cached_per_model_and_recalibrated_when_the_weights_change(cache_home):
    model = tiny_dit()
    probe = auto.default_probe(model, 2)
    first = auto.choose(model, probe, modes=["fp32"])
    assert first.source == "calibrated"
    files = list(cache_home.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["mode"] == first.mode
    again = auto.choose(model, probe, modes=["fp32"])
    assert again.source == "cache file" and again.mode == first.mode and again.key == first.key
    other_batch = auto.choose(model, auto.default_probe(model, 3), modes=["fp32"])
    assert other_batch.key != first.key
    with torch.no_grad():
        model.blocks[0].x.qkv.weight.mul_(1.5)
    changed = auto.choose(model, probe, modes=["fp32"])
    assert changed.source == "calibrated" and changed.key != first.key
    (cache_home / f"{changed.key}.json").write_text("{not json")  # a damaged file is measured again, not trusted
    assert auto.choose(model, probe, modes=["fp32"]).source == "calibrated"


def test_prepare_never_changes_the_callers_model_and_is_reused(cache_home):
    model = tiny_dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = auto.prepare(model, "fp32")
    assert fp32.net is model and fp32.choice.source == "requested"
    int8 = auto.prepare(model, "int8")
    assert int8.net is not model and int8.mode == "int8"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert auto.prepare(model, "int8") is int8  # same model, request and weights: reused
    with torch.no_grad():
        model.final_layer.linear.bias.add_(0.1)
    assert auto.prepare(model, "int8") is not int8  # weights written in place: prepared anew
    with pytest.raises(InputError, match="gradients"):
        auto.prepare(model, "int8", need_grad=True)


def test_auto_respects_gradients_and_compile_restrictions(cache_home, monkeypatch):
    model = tiny_dit()
    trials = _trials(fp32=(100, float("inf")), **{"int8+compile": (30, 70.0), "int8": (60, 70.0),
                                                  "fp32+compile": (70, 130.0)})
    monkeypatch.setattr(auto, "choose", lambda *a, **k: Choice("int8+compile", "test", trials))
    monkeypatch.setattr(auto, "apply", lambda m, mode: (m, lambda: torch.autocast("cpu", enabled=False)))
    assert auto.prepare(model, "auto").mode == "int8+compile"
    assert auto.prepare(model, "auto", compile_ok=False).mode == "int8"
    grad = auto.prepare(model, "auto", need_grad=True)
    assert grad.mode == "fp32+compile" and "gradients needed" in grad.choice.reason


def test_sample_runs_the_auto_choice_close_to_fp32(cache_home, monkeypatch):
    monkeypatch.setenv(auto.ENV, "auto")
    monkeypatch.setattr(auto, "COMPILE_MIN_MS", float("inf"))  # no compiles in a fast test
    model = tiny_dit()
    kw = dict(steps=4, guidance_scale=2.0, model_kwargs={"class_labels": torch.tensor([0, 2])})
    noise = torch.randn(2, 2, 8, 8)
    x = sample(model, FlowMatching(), (2, 2, 8, 8), x_T=noise, **kw)  # the default: auto
    y = sample(model, FlowMatching(), (2, 2, 8, 8), x_T=noise, precision="fp32", **kw)
    assert auto.snr_db(x, y) > 20  # whichever mode won, the samples agree with fp32's
    saved = [json.loads(f.read_text()) for f in cache_home.glob("*.json")]
    assert len(saved) == 1 and saved[0]["trials"][0]["mode"] == "fp32"
    assert "x(4, 2, 8, 8)" in auto.Probe(torch.zeros(4, 2, 8, 8)).signature  # CFG doubles the calibration batch
    with pytest.raises(InputError, match="precision must be one of"):
        sample(model, FlowMatching(), (2, 2, 8, 8), precision="half", **kw)


def test_a_model_the_caller_already_quantized_runs_as_given(cache_home):
    model = precision.quantize(tiny_dit(), "int8_dynamic")
    run = auto.prepare(model, "auto")
    assert run.net is model and run.mode == "as given" and "quantized" in run.choice.reason
    assert not list(cache_home.glob("*.json"))  # nothing calibrated
    assert auto.weights_fingerprint(model)  # quantized weights still get a fingerprint


def test_a_network_that_is_not_reproducible_is_not_calibrated(cache_home):
    model = tiny_dit()
    model.y_embedder.train()  # label dropout on: every call draws other labels
    model.y_embedder.dropout_prob = 0.9
    probe = auto.Probe(torch.randn(8, 2, 8, 8), {"class_labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}, 1000.0)
    choice = auto.choose(model, probe, modes=["fp32", "int8"])
    assert choice.mode == "fp32" and "not reproducible" in choice.reason and choice.source == "not calibrated"
    assert not list(cache_home.glob("*.json"))
