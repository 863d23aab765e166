"""The rca load test's step against a real rca gRPC server on loopback (case directories, no broker):
one client for a second or so gets real analyses back, and the latency percentiles are ordered."""

from __future__ import annotations

from pathlib import Path

from loadtests.load.rca import local_server, make_cases, step


def test_one_tiny_step_gets_real_analyses(tmp_path: Path) -> None:
    cases = make_cases(1, base_s=1_700_000_000)  # a fixed stretch of time: the same telemetry every run
    with local_server(cases, tmp_path) as address:
        row = step(address, cases, concurrency=1, seconds=1.0)
    assert row["concurrency"] == 1 and row["requests"] >= 1, row
    assert row["errors"] == 0 and row["ok"] == row["requests"], row["error_kinds"]  # each had ranked root causes
    assert row["requests_per_s"] > 0
    assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]
    assert row["top1_correct"] == row["ok"], row  # cpu:productcatalogservice: the evidence path names it
