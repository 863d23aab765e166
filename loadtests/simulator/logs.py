"""Log lines of the simulated pods: templated by language, some carrying trace ids.

Sources: error spans (the exception, or the failed/timed-out call as the caller saw it),
very slow spans, a sample of access logs at the entry, background chatter per pod, and each
fault's own lines (GC pressure and OOM kills, restarts, slow disk).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loadtests.simulator.faults import FaultModel
from loadtests.simulator.topology import Topology
from loadtests.simulator.traffic import (
    CAUSE_DOWNSTREAM,
    CAUSE_EXCEPTION,
    CAUSE_TIMEOUT,
    CAUSE_UNAVAILABLE,
    STATUS_ERROR,
    SpanTable,
)

EXCEPTIONS = {
    "java": [
        'java.lang.NullPointerException: Cannot invoke "{obj}.get()" because "{var}" is null'
        " at {cls}.{op}({cls}.java:{line})",
        "java.lang.IllegalStateException: {obj} not initialised in {op} at {cls}.{op}({cls}.java:{line})",
    ],
    "go": [
        "panic recovered in {op}: runtime error: invalid memory address or nil pointer dereference",
        '{op} failed: strconv.ParseFloat: parsing "{var}": invalid syntax',
    ],
    "python": [
        "Traceback (most recent call last): File \"/app/{var}.py\", line {line}, in {op} KeyError: '{var}_id'",
        "ValueError in {op}: invalid literal for int() with base 10: '{var}'",
    ],
    "nodejs": [
        "TypeError: Cannot read properties of undefined (reading '{var}') at {op} (/usr/src/app/server.js:{line})",
        "Unhandled promise rejection in {op}: RangeError: Invalid currency code {var}",
    ],
    "csharp": [
        "System.NullReferenceException: Object reference not set to an instance of an object."
        " at {cls}.{op}() line {line}",
        "System.InvalidOperationException: Sequence contains no elements at {cls}.{op}() line {line}",
    ],
    "c": ["ERR {op} failed: WRONGTYPE Operation against a key holding the wrong kind of value"],
}
BACKGROUND = {
    "java": ["GC (Allocation Failure) pause {ms}ms", "HikariPool-1 - Pool stats (total={n}, active={k}, idle={m})"],
    "go": ["health check ok", "grpc server stats: {n} streams active"],
    "python": ["health check ok", "refreshed recommendation cache with {n} items"],
    "nodejs": ["conversion rates refreshed ({n} currencies)", "health check ok"],
    "csharp": ["health check ok", "redis connection pool: {k} busy, {m} idle"],
    "c": ["DB saved on disk", "{n} changes in 60 seconds. Saving..."],
    "cpp": ["Slow query: find took {ms}ms", "Connection accepted from 10.0.{k}.{m}:{n} ({n} connections now open)"],
    "erlang": ["accepting AMQP connection <0.{n}.0>", "closing AMQP connection <0.{n}.0>"],
    "nginx": ['"GET /index.html HTTP/1.1" 200 {n}', "upstream response time {ms}ms"],
}
_VARS = ("cart", "product", "currency", "order", "user", "quote", "item", "price")


def _fill(template: str, rng: np.random.Generator, op: str, service: str) -> str:
    return template.format(
        op=op.split(" ")[-1].strip("/") or "index",
        obj=str(rng.choice(_VARS)).title(),
        var=str(rng.choice(_VARS)),
        cls=service.replace("service", "Service").title().replace("-", ""),
        line=int(rng.integers(20, 400)),
        ms=int(rng.integers(2, 40)),
        n=int(rng.integers(5, 200)),
        k=int(rng.integers(0, 10)),
        m=int(rng.integers(0, 10)),
    )


def build_logs(
    topology: Topology, faults: FaultModel, spans: SpanTable, t0: float, t1: float, seed: int, epoch_s: float
) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 104729)
    rows: list[tuple[int, str, str, str, str, str, str]] = []
    ops = spans.operations
    expected_us = np.array([topology.expected_latency_ms(k) * 1000 for k in ops])
    pods = faults.pod_names
    pod_service = {p: s.name for s in topology.services.values() for p in s.pods}

    def add(time_ns: int, pod: str, level: str, body: str, trace: str = "", span: str = "") -> None:
        rows.append((time_ns, pod_service[pod], pod, level, body, trace, span))

    def ids(i: int) -> tuple[str, str]:
        hi, lo = spans.trace_ids[spans.trace[i]]
        return f"{int(hi):016x}{int(lo):016x}", f"{int(spans.span_id[i]):016x}"

    # Error spans: the service that saw the failure says so, with the trace id.
    for i in np.nonzero(spans.status == STATUS_ERROR)[0]:
        service, op = ops[spans.op[i]].split("/", 1)
        end_ns = int((spans.start_us[i] + spans.duration_us[i]) * 1000)
        callee = ops[spans.failed_call[i]] if spans.failed_call[i] >= 0 else ""
        cause = spans.cause[i]
        if cause == CAUSE_EXCEPTION:
            language = topology.services[service].language
            body = _fill(str(rng.choice(EXCEPTIONS.get(language, EXCEPTIONS["go"]))), rng, op, service)
        elif cause == CAUSE_TIMEOUT:
            body = f"request to {callee} timed out: context deadline exceeded"
        elif cause == CAUSE_UNAVAILABLE:
            body = f"failed to call {callee}: rpc error: code = Unavailable desc = connection refused"
        elif cause == CAUSE_DOWNSTREAM:
            body = f"failed to call {callee}: rpc error: code = Internal desc = upstream request failed"
        else:
            continue
        add(end_ns, pods[spans.pod[i]], "ERROR", body, *ids(i))

    # Very slow spans (against the operation's usual time, its calls included): a warning, half of the time.
    slow = np.nonzero((spans.duration_us > 5 * expected_us[spans.op] + 50_000) & (rng.random(len(spans)) < 0.5))[0]
    for i in slow:
        service, op = ops[spans.op[i]].split("/", 1)
        end_ns = int((spans.start_us[i] + spans.duration_us[i]) * 1000)
        add(end_ns, pods[spans.pod[i]], "WARN", f"slow request {op} took {spans.duration_us[i] // 1000} ms", *ids(i))

    # Access log sample at the entry.
    for i in np.nonzero((spans.parent_id == 0) & (rng.random(len(spans)) < 0.1))[0]:
        _service, op = ops[spans.op[i]].split("/", 1)
        code = 500 if spans.status[i] == STATUS_ERROR else 200
        end_ns = int((spans.start_us[i] + spans.duration_us[i]) * 1000)
        add(end_ns, pods[spans.pod[i]], "INFO", f'"{op} HTTP/1.1" {code} {spans.duration_us[i] // 1000}ms', *ids(i))

    # Background chatter and fault lines, per pod.
    for service in topology.services.values():
        templates = BACKGROUND.get(service.language, BACKGROUND["go"])
        for pod in service.pods:
            for t in np.sort(rng.uniform(t0, t1, rng.poisson(0.1 * (t1 - t0)))):
                add(int((epoch_s + t) * 1e9), pod, "INFO", _fill(str(rng.choice(templates)), rng, "", service.name))
    for i, fault in enumerate(faults.faults):
        _fault_lines(fault, i, faults, topology, rng, t0, t1, epoch_s, add)

    frame = pd.DataFrame(rows, columns=["time_ns", "service", "pod", "level", "message", "trace_id", "span_id"])
    return frame.sort_values("time_ns", kind="stable").reset_index(drop=True)


def _fault_lines(fault, i, faults: FaultModel, topology: Topology, rng, t0, t1, epoch_s, add) -> None:  # type: ignore[no-untyped-def]
    service = topology.services[fault.service]
    lo, hi = max(t0, fault.start_s), min(t1, fault.end_s)
    if hi <= lo:
        return
    for pod in faults.pods_of(fault):
        name = faults.pod_names[pod]
        if fault.kind == "memory":
            ts = np.sort(rng.uniform(lo, hi, rng.poisson(0.5 * (hi - lo))))
            frac = faults.memory_fraction(i, ts)
            for t, f in zip(ts[frac > 0.7], frac[frac > 0.7], strict=True):
                add(int((epoch_s + t) * 1e9), name, "WARN", f"memory usage high: heap {int(f * 100)}% of limit")
            cycle = 0.4 * fault.duration_s
            for k in range(1, int(fault.duration_s // cycle) + 1):
                t = fault.start_s + k * cycle
                if lo <= t < hi:
                    oom = (
                        "java.lang.OutOfMemoryError: Java heap space"
                        if service.language == "java"
                        else ("fatal error: runtime: out of memory")
                    )
                    add(int((epoch_s + t) * 1e9), name, "ERROR", oom)
                    add(
                        int((epoch_s + t + 8) * 1e9), name, "INFO", f"starting {service.name} (restart after OOMKilled)"
                    )
        elif fault.kind == "pod-kill":
            if lo <= fault.start_s < hi:
                add(int((epoch_s + fault.start_s) * 1e9), name, "INFO", "received SIGTERM, shutting down")
            back = fault.start_s + min(20.0, fault.duration_s)
            if lo <= back < hi:
                add(int((epoch_s + back) * 1e9), name, "INFO", f"starting {service.name}: server listening on :8080")
        elif fault.kind == "disk":
            for t in np.sort(rng.uniform(lo, hi, rng.poisson(0.3 * (hi - lo)))):
                ms = int(rng.integers(300, 2500))
                add(int((epoch_s + t) * 1e9), name, "WARN", f"slow disk write: fsync took {ms} ms")
