"""Scenarios on disk: the RCAEval case layout, and the project's own OTLP record files.

RCAEval layout (what its ``read_data``/methods expect): ``data.csv`` with an integer ``time``
column (unix seconds) and ``<service>_<metric>`` columns, ``inject_time.txt`` (unix seconds),
``logs.csv`` and ``traces.csv`` (µs ``startTime``/``duration``).

The project's own format keeps exactly the bytes the services consume from Kafka: each of
``otlp_spans.pb``, ``otlp_metrics.pb`` and ``otlp_logs.pb`` is a sequence of serialized
``Export*ServiceRequest`` records, each preceded by its length (4 bytes, big-endian), so a
dataset replays into the topics unchanged. ``ground_truth.json`` says what was injected.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from loadtests.simulator.agents import AgentRun, labels, run_to_otlp_steps
from loadtests.simulator.otlp_encode import SpanEncoder, logs_requests, metrics_requests
from loadtests.simulator.scenario import Chunk, Scenario
from services.common import topics

NATIVE_FILES = {
    topics.OTLP_SPANS: "otlp_spans.pb",
    topics.OTLP_METRICS: "otlp_metrics.pb",
    topics.OTLP_LOGS: "otlp_logs.pb",
}
_LENGTH = struct.Struct(">I")


def traces_frame(scenario: Scenario, chunk: Chunk) -> pd.DataFrame:
    spans = chunk.spans
    ops = np.array(spans.operations)[spans.op]
    service, method = np.char.partition(ops.astype(str), "/")[:, 0], np.char.partition(ops.astype(str), "/")[:, 2]
    trace_hex = np.array([f"{int(hi):016x}{int(lo):016x}" for hi, lo in spans.trace_ids])
    return pd.DataFrame(
        {
            "traceID": trace_hex[spans.trace],
            "spanID": [f"{int(s):016x}" for s in spans.span_id],
            "parentSpanID": [f"{int(s):016x}" if s else "" for s in spans.parent_id],
            "serviceName": service,
            "podName": np.array(scenario.fault_model.pod_names)[spans.pod],
            "methodName": method,
            "operationName": method,
            "startTime": spans.start_us,
            "duration": spans.duration_us,
            "statusCode": np.where(spans.status == 2, 2, 0),
        }
    ).sort_values("startTime", kind="stable")


def write_rcaeval(scenario: Scenario, chunk: Chunk, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    truth = scenario.ground_truth()
    chunk.metrics.services.to_csv(out / "data.csv", index=False)
    if truth["inject_time"] is not None:
        (out / "inject_time.txt").write_text(f"{truth['inject_time']}\n")
    logs = chunk.logs.assign(time=chunk.logs.time_ns // 1_000_000_000, timestamp=chunk.logs.time_ns)
    logs.rename(columns={"service": "container_name", "pod": "pod_name"})[
        ["time", "timestamp", "container_name", "pod_name", "level", "message", "trace_id"]
    ].to_csv(out / "logs.csv", index=False)
    traces_frame(scenario, chunk).to_csv(out / "traces.csv", index=False)
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    return out


def otlp_records(scenario: Scenario, chunk: Chunk) -> Iterator[tuple[str, bytes, int]]:
    """(topic, record value, latest telemetry time in ms) for one chunk.

    The time is the newest data point in the record, so that a seek to time T (Kafka's
    offsets-for-times) lands on or before every record holding data from T on.
    """
    encoder = SpanEncoder(scenario.topology, scenario.fault_model)
    for topic, requests in (
        (topics.OTLP_SPANS, encoder.requests(chunk.spans)),
        (topics.OTLP_METRICS, metrics_requests(scenario.topology, chunk.metrics.pods, chunk.metrics.services)),
        (topics.OTLP_LOGS, logs_requests(scenario.topology, chunk.logs)),
    ):
        for request, time_ns in requests:
            yield topic, request.SerializeToString(), time_ns // 1_000_000


def write_native(scenario: Scenario, out: Path, chunk_s: float = 60.0) -> dict[str, int]:
    """Streams the scenario to the OTLP record files; returns records written per topic."""
    out.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(NATIVE_FILES, 0)
    files = {t: (out / name).open("wb") for t, name in NATIVE_FILES.items()}
    try:
        for chunk in scenario.chunks(chunk_s):
            for topic, value, _time_ms in otlp_records(scenario, chunk):
                files[topic].write(_LENGTH.pack(len(value)) + value)
                counts[topic] += 1
    finally:
        for f in files.values():
            f.close()
    (out / "ground_truth.json").write_text(json.dumps(scenario.ground_truth(), indent=2))
    return counts


def write_agent_runs(runs: list[AgentRun], out: Path) -> Path:
    """Multi-agent runs: ``runs.jsonl`` (the steps, for training), ``labels.jsonl`` (ground truth)
    and ``otlp_spans.pb`` (one length-prefixed OTLP request per step, in arrival order)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "runs.jsonl").open("w") as f:
        for run in runs:
            record = {
                "run_id": run.run_id,
                "system": run.system,
                "task": run.task,
                "steps": [asdict(step) for step in run.steps],
            }
            f.write(json.dumps(record) + "\n")
    with (out / "labels.jsonl").open("w") as f:
        for run in runs:
            f.write(json.dumps(labels(run)) + "\n")
    with (out / NATIVE_FILES[topics.OTLP_SPANS]).open("wb") as f:
        for run in runs:
            for request in run_to_otlp_steps(run):
                value = request.SerializeToString()
                f.write(_LENGTH.pack(len(value)) + value)
    return out


def read_native(directory: Path, topic: str) -> Iterator[bytes]:
    """The record values of one topic, in order, from a dataset written by :func:`write_native`."""
    with (directory / NATIVE_FILES[topic]).open("rb") as f:
        while header := f.read(_LENGTH.size):
            (size,) = _LENGTH.unpack(header)
            yield f.read(size)
