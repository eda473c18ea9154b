"""`ditlab core benchmark` at a tiny size: the report schema and the agreement of the two models."""

import json
import math

import torch

from ditlab.core.bench import dit

TINY = dit.BenchSize(depth=2, num_heads=2, head_dim=16, latent=8, train_batch=2, infer_batch=2, warmup=1, repeats=1)


def test_benchmark_writes_the_report_schema(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(dit, "exact_rss_accounting", lambda: None)  # keep glibc's defaults for other tests
    out = tmp_path / "bench.json"
    printed = []
    returned = dit.run(TINY, out, device=torch.device("cpu"), echo=printed.append)
    report = json.loads(out.read_text())

    assert report == returned
    assert {"machine", "date", "command", "rows", "goals"} <= set(report)
    assert report["machine"]["device"] == "cpu" and report["command"].startswith("ditlab")
    assert report["rows"] and all(set(r) == {"task", "method", "metric", "value"} for r in report["rows"])
    assert "| method | images/s | x diffusers (>1: ours faster) |" in printed[0]
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind

    throughputs = [r["value"] for r in report["rows"] if r["metric"] in ("images/s", "samples/s")]
    assert len(throughputs) == 4
    assert all(math.isfinite(v) and v > 0 for v in throughputs)

    (diff,) = [r["value"] for r in report["rows"] if r["metric"] == "max abs diff"]
    assert diff < 1e-4

    assert [g["name"] for g in report["goals"]] == ["training throughput >= 1.0x diffusers",
                                                    "inference throughput >= 1.0x diffusers"]
    ratios = [r["value"] for r in report["rows"] if r["metric"].startswith("x diffusers")]
    for goal in report["goals"]:
        assert {"name", "target", "value", "met"} <= set(goal)
        assert goal["met"] is (goal["value"] >= 1.0)
        assert math.isfinite(goal["value"]) and goal["value"] > 0
    assert sorted(g["value"] for g in report["goals"]) == sorted(ratios)


def test_build_pair_shares_weights_and_ties_embedders():
    ours, ref = dit.build_pair(TINY)
    embedders = [b.norm1.emb.state_dict() for b in ref.transformer_blocks]
    for key, value in embedders[0].items():
        assert torch.equal(value, embedders[1][key])
    assert ours.cfg.depth == TINY.depth and ours.cfg.hidden_size == TINY.num_heads * TINY.head_dim
