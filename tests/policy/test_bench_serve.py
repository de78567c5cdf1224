"""benchmarks/bench_serve.py end to end at toy size: the real ``gwp serve``, the figures it reports."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # a server subprocess importing torch, on the shared cores
def test_bench_serve_reports_overhead_and_rates_with_what_ran_where(tmp_path, capsys):
    from benchmarks.bench_serve import main

    out = tmp_path / "serve.json"
    argv = ["--requests", "4", "--rate-requests", "2", "--warmup", "1", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["request_bytes"] == 2 * 64 * 64 * 3 + 4 * 4  # two 64² cameras and the Sawyer state (float32)
    for key in ("rtt_ms", "server_infer_ms", "overhead_ms", "local_predict_ms"):
        assert 0 < r[key]["p50"] <= r[key]["p95"], key
    # the server's inference is part of its round trip: what is left over is the overhead
    assert r["overhead_ms"]["p50"] < r["rtt_ms"]["p50"] and r["server_infer_ms"]["p95"] < r["rtt_ms"]["p95"]
    assert set(r["requests_per_s"]) == {"1", "4"} and all(v > 0 for v in r["requests_per_s"].values())
    text = capsys.readouterr().out.strip().splitlines()
    assert text[0].startswith(f"`python -m benchmarks.bench_serve {' '.join(argv)}` (commit `")
    assert "| **overhead p50 / p95** |" in text[2] and len(text) == 5
    assert f"**{r['overhead_ms']['p50']:.2f} / {r['overhead_ms']['p95']:.2f} ms**" in text[4]
