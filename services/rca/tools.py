"""RCLAgent's data tools over one :class:`~services.rca.telemetry.Telemetry` window.

- Trace Tool T(s): a span and its child spans, with per-operation and per-call baselines from
  the normal period (self time, and the network overhead around each call).
- Metric Tool Q(t0, δ, C): the n-sigma (n=3) search for fluctuating KPIs of a service or pod.
- Log Tool L(t0, δ, C): logs filtered by severity, keywords and error codes.

Every answer is small and JSON-ready: an agent's context holds tool answers, never raw frames.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.rca.telemetry import Telemetry

# Resource KPIs show a fault where it is; request KPIs (rate, errors, latency) also move on
# every caller of a faulty service, so they are weak evidence of *where*.
RESOURCE_METRICS = ("cpu", "mem", "diskio", "netrx", "nettx", "socket", "restarts")
REQUEST_METRICS = ("rps", "error", "latency", "latency-50", "latency-90", "latency-99")
N_SIGMA = 3.0
ERROR_LEVELS = ("ERROR", "FATAL", "CRITICAL", "WARN", "WARNING")
# Lines that say what happened to the process itself (as opposed to a failed call to someone else).
FAULT_KEYWORDS = re.compile(
    r"out of memory|OutOfMemory|OOM|memory usage high|SIGTERM|restart|fsync|slow disk|"
    r"Exception|panic|Traceback|TypeError|ValueError|KeyError|NullReference|WRONGTYPE|invalid",
    re.IGNORECASE,
)
CALL_FAILURE = re.compile(
    r"(?:calling|call|request to|rpc error|timed out|deadline exceeded|unavailable|connection refused|upstream)",
    re.IGNORECASE,
)
ERROR_CODE = re.compile(r"code = (\w+)|HTTP/1\.1\" (5\d\d)")


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    pod: str
    node: str
    operation: str
    start_us: int
    duration_us: int
    error: bool
    status_message: str
    self_us: float
    overhead_before_us: float  # time in the parent between the previous call (or its start) and this call
    overhead_after_us: float  # time in the parent between this call's end and the next call (or its end)

    @property
    def key(self) -> str:
        return f"{self.service}/{self.operation}"

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us


@dataclass(frozen=True)
class Baseline:
    median: float
    scale: float  # robust spread: 1.4826 MAD, floored
    count: int

    def z(self, value: float) -> float:
        return (value - self.median) / self.scale


def _baseline(values: np.ndarray, floor: float) -> Baseline:
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    return Baseline(median, max(mad, floor, 0.05 * median), len(values))


class TraceTool:
    """Span trees of the window, with baselines learnt from spans before the anomalous period."""

    def __init__(self, telemetry: Telemetry) -> None:
        spans = telemetry.spans.copy()
        self.start_us = telemetry.start_us
        self.frame = _with_self_and_overhead(spans)
        self._by_trace = {t: idx for t, idx in self.frame.groupby("trace_id", sort=False).indices.items()}
        normal = self.frame[self.frame.start_us < self.start_us]
        self.op_self: dict[str, Baseline] = {}
        self.op_duration: dict[str, Baseline] = {}
        self.op_error_rate: dict[str, float] = {}
        for key, group in normal.groupby("key", sort=False):
            self.op_self[key] = _baseline(group.self_us.to_numpy(float), floor=200.0)
            self.op_duration[key] = _baseline(group.duration_us.to_numpy(float), floor=200.0)
            self.op_error_rate[key] = float(group.error.mean())
        self.edge_before: dict[tuple[str, str], Baseline] = {}
        self.edge_after: dict[tuple[str, str], Baseline] = {}
        calls = normal[normal.parent_key != ""]
        for edge, group in calls.groupby(["parent_key", "key"], sort=False):
            self.edge_before[edge] = _baseline(group.overhead_before_us.to_numpy(float), floor=300.0)
            self.edge_after[edge] = _baseline(group.overhead_after_us.to_numpy(float), floor=300.0)

    def trace_ids(self) -> list[str]:
        return list(self._by_trace)

    def spans(self, trace_id: str) -> list[Span]:
        rows = self.frame.iloc[self._by_trace.get(trace_id, [])]
        return [_span(r) for r in rows.itertuples(index=False)]

    def tree(self, trace_id: str) -> tuple[list[Span], dict[str, list[Span]]]:
        """(roots, children by parent span id); children in start order."""
        spans = self.spans(trace_id)
        ids = {s.span_id for s in spans}
        children: dict[str, list[Span]] = {}
        roots = []
        for span in sorted(spans, key=lambda s: s.start_us):
            if span.parent_id and span.parent_id in ids:
                children.setdefault(span.parent_id, []).append(span)
            else:
                roots.append(span)
        return roots, children

    def describe(self, span: Span, children: list[Span]) -> dict[str, object]:
        """Self-evidence of one span: its own time and errors against normal, and its calls' overheads."""
        base = self.op_self.get(span.key)
        out: dict[str, object] = {
            "span_id": span.span_id,
            "service": span.service,
            "pod": span.pod,
            "operation": span.operation,
            "duration_ms": round(span.duration_us / 1000, 3),
            "self_ms": round(span.self_us / 1000, 3),
            "normal_self_ms": round(base.median / 1000, 3) if base else None,
            "self_z": round(base.z(span.self_us), 2) if base else 0.0,
            "self_excess_ms": round(max(span.self_us - base.median, 0.0) / 1000, 3) if base else 0.0,
            "error": span.error,
            "status_message": span.status_message,
            "normal_error_rate": round(self.op_error_rate.get(span.key, 0.0), 4),
            "child_errors": [c.span_id for c in children if c.error],
            "calls": [self.call_overhead(span, c) for c in children],
        }
        return out

    def call_overhead(self, parent: Span, child: Span) -> dict[str, object]:
        """The time the caller spent around one call beyond the callee's own span (the network, mostly)."""
        edge = (parent.key, child.key)
        before, after = self.edge_before.get(edge), self.edge_after.get(edge)
        return {
            "span_id": child.span_id,
            "service": child.service,
            "pod": child.pod,
            "before_excess_ms": round(max(child.overhead_before_us - before.median, 0.0) / 1000, 3) if before else 0.0,
            "after_excess_ms": round(max(child.overhead_after_us - after.median, 0.0) / 1000, 3) if after else 0.0,
            "before_z": round(before.z(child.overhead_before_us), 2) if before else 0.0,
            "after_z": round(after.z(child.overhead_after_us), 2) if after else 0.0,
        }


def _span(row: object) -> Span:
    return Span(**{name: getattr(row, name) for name in Span.__dataclass_fields__})


def _with_self_and_overhead(spans: pd.DataFrame) -> pd.DataFrame:
    """Adds key, parent_key, self_us (duration minus the children's clipped time) and the overheads."""
    spans = spans.reset_index(drop=True)
    spans["key"] = spans.service.astype(str) + "/" + spans.operation.astype(str)
    spans["end_us"] = spans.start_us + spans.duration_us
    parents = spans[["trace_id", "span_id", "start_us", "end_us", "key"]].rename(
        columns={"span_id": "parent_id", "start_us": "p_start", "end_us": "p_end", "key": "parent_key"}
    )
    merged = spans.merge(parents, on=["trace_id", "parent_id"], how="left")
    has_parent = merged.p_start.notna()
    clipped = (np.minimum(merged.end_us, merged.p_end) - np.maximum(merged.start_us, merged.p_start)).clip(lower=0)
    child_time = clipped[has_parent].groupby([merged.trace_id[has_parent], merged.parent_id[has_parent]]).sum()
    child_time.index = child_time.index.set_names(["trace_id", "span_id"])
    merged = merged.merge(child_time.rename("child_us").reset_index(), on=["trace_id", "span_id"], how="left")
    merged["child_us"] = merged.child_us.fillna(0.0)
    merged["self_us"] = (merged.duration_us - merged.child_us).clip(lower=0).astype(float)
    merged["parent_key"] = merged.parent_key.fillna("")
    # Siblings in start order: the gap before a call reaches back to the previous sibling's end
    # (or the parent's start), the gap after it reaches to the next sibling's start (or the parent's end).
    merged = merged.sort_values(["trace_id", "parent_id", "start_us"], kind="stable")
    group = merged.groupby(["trace_id", "parent_id"], sort=False)
    prev_end = group.end_us.shift(1)
    next_start = group.start_us.shift(-1)
    anchor_before = np.fmax(prev_end.to_numpy(float), merged.p_start.to_numpy(float))
    anchor_after = np.fmin(next_start.to_numpy(float), merged.p_end.to_numpy(float))
    merged["overhead_before_us"] = np.where(has_parent.loc[merged.index], merged.start_us - anchor_before, 0.0)
    merged["overhead_after_us"] = np.where(has_parent.loc[merged.index], anchor_after - merged.end_us, 0.0)
    merged[["overhead_before_us", "overhead_after_us"]] = merged[["overhead_before_us", "overhead_after_us"]].clip(
        lower=0
    )
    return merged.sort_index().reset_index(drop=True)


@dataclass(frozen=True)
class Fluctuation:
    service: str
    pod: str
    metric: str
    z: float
    normal_mean: float
    peak: float

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "pod": self.pod,
            "z": round(self.z, 1),
            "normal": round(self.normal_mean, 3),
            "peak": round(self.peak, 3),
        }


class MetricTool:
    """n-sigma over every series: fit mean/std before ``t0``, score the largest |z| in ``[t0, t0 + δ)``."""

    def __init__(self, telemetry: Telemetry, delta_s: float = 300.0) -> None:
        self.t0 = telemetry.start_s
        self.delta_s = delta_s
        metrics = telemetry.metrics
        # Pod series also roll up to their service (RCAEval's service columns are pod sums).
        pods = metrics[metrics.pod != ""]
        rolled = pods.groupby(["time", "service", "metric"], as_index=False).value.sum().assign(pod="")
        has_service_series = set(metrics[metrics.pod == ""].service.unique())
        rolled = rolled[~rolled.service.isin(has_service_series)]
        self.frame = pd.concat([metrics, rolled], ignore_index=True)
        self._all: list[Fluctuation] | None = None
        self._lock = threading.Lock()

    def fluctuations(self) -> list[Fluctuation]:
        with self._lock:
            if self._all is None:
                self._all = self._search()
            return self._all

    def _search(self) -> list[Fluctuation]:
        frame = self.frame
        normal = frame[frame.time < self.t0]
        anomal = frame[(frame.time >= self.t0) & (frame.time < self.t0 + self.delta_s)]
        keys = ["service", "pod", "metric"]
        stats = normal.groupby(keys).value.agg(["mean", "std"])
        peaks = anomal.assign(
            dev=(anomal.value - anomal[keys].merge(stats, left_on=keys, right_index=True, how="left")["mean"]).abs()
        )
        # A series with no history before t0 has no deviation to rank (pandas refuses idxmax over all-NA).
        peaks = peaks.dropna(subset=["dev"])
        if peaks.empty:
            return []
        worst = peaks.loc[peaks.groupby(keys).dev.idxmax()].set_index(keys)
        joined = worst.join(stats, how="inner")
        std = joined["std"].where(joined["std"] > 1e-9 + 1e-3 * joined["mean"].abs(), np.nan)
        z = (joined.dev / std).fillna(0.0)
        # A series flat in normal times that moves at all (restarts 0 -> 1) is a strong signal.
        z = np.where(joined["std"].fillna(0) <= 1e-9, np.where(joined.dev > 0, 50.0, 0.0), z)
        out = [
            Fluctuation(str(s), str(p), str(m), float(zz), float(mean), float(value))
            for (s, p, m), zz, mean, value in zip(joined.index, z, joined["mean"], joined.value, strict=True)
        ]
        return sorted(out, key=lambda f: -f.z)

    def search(self, service: str, pod: str = "", n_sigma: float = N_SIGMA) -> list[Fluctuation]:
        """The fluctuating KPIs of a service (its service-level series) or one pod."""
        return [f for f in self.fluctuations() if f.service == service and f.pod == pod and f.z >= n_sigma]

    def resource_score(self, service: str, pod: str = "") -> tuple[float, str]:
        """The largest resource-KPI z of a service or pod, and which KPI."""
        best = max(
            (f for f in self.search(service, pod) if f.metric in RESOURCE_METRICS), key=lambda f: f.z, default=None
        )
        return (best.z, best.metric) if best else (0.0, "")


@dataclass
class LogTool:
    """Logs of a service/pod around a time, filtered by severity, keywords and error codes."""

    telemetry: Telemetry
    _by_pod: dict[str, pd.DataFrame] = field(init=False, repr=False)
    _by_trace: dict[str, pd.DataFrame] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        logs = self.telemetry.logs
        notable = logs[logs.level.isin(ERROR_LEVELS) | logs.message.str.contains(FAULT_KEYWORDS, na=False)]
        self.frame = notable
        self._by_pod = {p: g for p, g in notable.groupby("pod", sort=False)}
        traced = notable[notable.trace_id != ""]
        self._by_trace = {t: g for t, g in traced.groupby("trace_id", sort=False)}
        self._normal_rate: dict[str, float] = {}
        start = self.telemetry.start_s
        span_s = max(start - float(logs.time.min()), 1.0) if len(logs) else 1.0
        own = notable[~notable.message.str.contains(CALL_FAILURE, na=False)]
        for pod, group in own[own.time < start].groupby("pod"):
            self._normal_rate[str(pod)] = len(group) / span_s

    def search(self, pod: str, t0: float, delta_s: float = 60.0, limit: int = 5) -> list[dict[str, object]]:
        frame = self._by_pod.get(pod)
        if frame is None:
            return []
        hits = frame[(frame.time >= t0 - delta_s) & (frame.time < t0 + delta_s)]
        return [
            {"time": round(float(r.time), 3), "level": r.level, "message": r.message[:200], **_code(r.message)}
            for r in hits.head(limit).itertuples(index=False)
        ]

    def own_fault_lines(self, pod: str, t0: float, t1: float) -> tuple[int, float, list[str]]:
        """Lines about the pod itself (OOM, restarts, exceptions, slow disk) in [t0, t1): count, expected, samples."""
        frame = self._by_pod.get(pod)
        if frame is None:
            return 0, 0.0, []
        hits = frame[(frame.time >= t0) & (frame.time < t1)]
        hits = hits[hits.message.str.contains(FAULT_KEYWORDS, na=False) & ~hits.message.str.contains(CALL_FAILURE)]
        expected = self._normal_rate.get(pod, 0.0) * (t1 - t0)
        return len(hits), expected, list(hits.message.head(3))

    def trace_errors(self, trace_id: str) -> list[dict[str, object]]:
        frame = self._by_trace.get(trace_id)
        if frame is None:
            return []
        return [{"pod": r.pod, "level": r.level, "message": r.message[:200]} for r in frame.itertuples(index=False)]


def _code(message: str) -> dict[str, str]:
    match = ERROR_CODE.search(message)
    return {"code": next(g for g in match.groups() if g)} if match else {}


def mentioned_services(text: str, services: set[str], exclude: str) -> list[str]:
    """Services a failure message names as the callee ("failed to call cartservice/GetCart: ...")."""
    found = []
    for token in re.findall(r"([A-Za-z0-9][A-Za-z0-9.-]*)/", text):
        if token in services and token != exclude and token not in found:
            found.append(token)
    return found
