"""The telemetry of one analysis window: spans, metrics and logs as frames, from Kafka or a case directory.

Kafka is the platform's short-term telemetry store: live, the window is read back from the
``otlp_*`` topics with the consumer's offsets-for-times seek. Offline, the same frames come
from a case directory in the RCAEval layout (``data.csv``, ``traces.csv``, ``logs.csv``,
``inject_time.txt``) or the AIOps 2022 layout (``trace/``, ``metric/``, ``log/``, ``groundtruth.csv``).

Frames (the tools only ever see these):
- spans: trace_id, span_id, parent_id ("" for a root), service, pod, node, operation,
  start_us, duration_us, error (bool), status_message;
- metrics (long): time (unix s), service, pod ("" for service-level series), metric, value;
- logs: time (unix s, float), service, pod, level, message, trace_id.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, TopicPartition

from services.common import otlp, topics
from services.common.settings import KafkaSettings

SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_id",
    "service",
    "pod",
    "node",
    "operation",
    "start_us",
    "duration_us",
    "error",
    "status_message",
)
METRIC_COLUMNS = ("time", "service", "pod", "metric", "value")
LOG_COLUMNS = ("time", "service", "pod", "level", "message", "trace_id")

# OpenTelemetry semantic-convention names -> the short kinds the Metric Tool reasons about
# (RCAEval's column suffixes), so that live and offline windows look the same.
OTEL_METRIC_KINDS = {
    "container.cpu.utilization": "cpu",
    "container.memory.usage": "mem",
    "container.disk.io": "diskio",
    "container.network.io.receive": "netrx",
    "container.network.io.transmit": "nettx",
    "container.sockets": "socket",
    "k8s.container.restarts": "restarts",
    "rpc.server.request.rate": "rps",
    "rpc.server.error.rate": "error",
    "rpc.server.duration.p50": "latency-50",
    "rpc.server.duration.p90": "latency-90",
    "rpc.server.duration.p99": "latency-99",
}
_SEVERITY_LEVEL = {9: "INFO", 13: "WARN", 17: "ERROR", 21: "FATAL"}


class TelemetryError(ValueError):
    """The window cannot be loaded (missing files, nothing in the topics for that time)."""


@dataclass
class Telemetry:
    """One window: ``[baseline_start, start)`` is normal behaviour, ``[start, end)`` the anomalous period."""

    system: str
    start_s: float
    end_s: float
    spans: pd.DataFrame
    metrics: pd.DataFrame
    logs: pd.DataFrame
    pod_node: dict[str, str] = field(default_factory=dict)
    load_ms: float = 0.0

    def __post_init__(self) -> None:
        self.spans = _ensure(self.spans, SPAN_COLUMNS)
        self.metrics = _ensure(self.metrics, METRIC_COLUMNS)
        self.logs = _ensure(self.logs, LOG_COLUMNS)
        if not self.pod_node and len(self.spans):
            known = self.spans[self.spans.node != ""][["pod", "node"]].drop_duplicates("pod")
            self.pod_node = dict(zip(known.pod, known.node, strict=True))

    @property
    def start_us(self) -> int:
        return int(self.start_s * 1e6)


def _ensure(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for column in columns:
        if column not in frame:
            frame[column] = "" if column not in ("start_us", "duration_us", "time", "value", "error") else 0
    return frame[list(columns)].reset_index(drop=True)


# -- RCAEval layout -------------------------------------------------------------------------------


def _hex(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def load_rcaeval(directory: Path, end_s: float | None = None) -> Telemetry:
    """A case directory as RCAEval (and ``faultline simulate --format rcaeval``) writes it."""
    began = time.perf_counter()
    directory = Path(directory)
    inject_file = directory / "inject_time.txt"
    if not inject_file.is_file():
        raise TelemetryError(f"{directory}: no inject_time.txt (the start of the anomalous period)")
    start_s = float(inject_file.read_text().split()[0])
    system = ""
    truth = directory / "ground_truth.json"
    if truth.is_file():
        system = str(json.loads(truth.read_text()).get("system") or "")
    metrics = _wide_metrics(directory)
    spans = _rcaeval_spans(directory / "traces.csv")
    logs = _rcaeval_logs(directory / "logs.csv")
    if end_s is None:
        ends = [float(metrics.time.max()) + 1] if len(metrics) else []
        ends += [float((spans.start_us + spans.duration_us).max()) / 1e6] if len(spans) else []
        end_s = max(ends) if ends else start_s
    out = Telemetry(system, start_s, end_s, spans, metrics, logs)
    out.load_ms = (time.perf_counter() - began) * 1000
    return out


def _wide_metrics(directory: Path) -> pd.DataFrame:
    for name in ("data.csv", "metrics.csv", "simple_data.csv"):
        path = directory / name
        if path.is_file():
            wide = pd.read_csv(path)
            break
    else:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    wide = wide.rename(columns={"timestamp": "time"}) if "time" not in wide else wide
    long = wide.melt(id_vars="time", var_name="column", value_name="value")
    parts = long.column.str.split("_", n=1, expand=True)  # RCAEval: the service is split("_")[0]
    return pd.DataFrame(
        {
            "time": long.time.astype(np.int64),
            "service": parts[0],
            "pod": "",
            "metric": parts[1].fillna("value"),
            "value": pd.to_numeric(long.value, errors="coerce").fillna(0.0),
        }
    )


def _rcaeval_spans(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(SPAN_COLUMNS))
    raw = pd.read_csv(path, dtype={"traceID": str, "spanID": str, "parentSpanID": str}, keep_default_na=False)
    status = raw["statusCode"] if "statusCode" in raw else pd.Series(0, index=raw.index)
    operation = raw["operationName"] if "operationName" in raw else raw.get("methodName", "")
    return pd.DataFrame(
        {
            "trace_id": raw.traceID.astype(str),
            "span_id": raw.spanID.astype(str),
            "parent_id": raw.parentSpanID.astype(str),
            "service": raw.serviceName.astype(str),
            "pod": raw["podName"].astype(str) if "podName" in raw else raw.serviceName.astype(str),
            "node": "",
            "operation": operation.astype(str),
            "start_us": pd.to_numeric(raw.startTime).astype(np.int64),
            "duration_us": pd.to_numeric(raw.duration).astype(np.int64),
            "error": pd.to_numeric(status, errors="coerce").fillna(0).astype(int) == 2,
            "status_message": raw["statusMessage"].astype(str) if "statusMessage" in raw else "",
        }
    )


def _rcaeval_logs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(LOG_COLUMNS))
    raw = pd.read_csv(path, keep_default_na=False)
    if "timestamp" in raw and pd.to_numeric(raw.timestamp, errors="coerce").max() > 1e15:
        seconds = pd.to_numeric(raw.timestamp) / 1e9
    else:
        seconds = pd.to_numeric(raw.time, errors="coerce").astype(float)
    return pd.DataFrame(
        {
            "time": seconds,
            "service": raw.get("container_name", "").astype(str),
            "pod": raw.get("pod_name", raw.get("container_name", "")).astype(str),
            "level": raw["level"].astype(str).str.upper() if "level" in raw else "INFO",
            "message": raw["message"].astype(str) if "message" in raw else "",
            "trace_id": raw["trace_id"].astype(str) if "trace_id" in raw else "",
        }
    )


# -- AIOps 2022 layout ------------------------------------------------------------------------------

_POD_SUFFIX = re.compile(r"2?-\d+$")  # adservice-0, adservice2-0 -> adservice
_KPI_KINDS = (
    ("cpu", "cpu"),
    ("memory", "mem"),
    ("fs_", "diskio"),
    ("disk", "diskio"),
    ("network_receive", "netrx"),
    ("network_transmit", "nettx"),
    ("threads", "socket"),
    ("socket", "socket"),
)


def _service_of(pod: str) -> str:
    return _POD_SUFFIX.sub("", pod)


def _kpi_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for key, kind in _KPI_KINDS if key in lowered), lowered)


def load_aiops2022(directory: Path, inject_time: float | None = None, half_window_s: float = 600.0) -> Telemetry:
    """One ``<date>-cloudbed<N>`` directory; the window is ±``half_window_s`` around ``inject_time``
    (default: the first fault in ``groundtruth.csv``)."""
    began = time.perf_counter()
    directory = Path(directory)
    if inject_time is None:
        truth = directory / "groundtruth.csv"
        if not truth.is_file():
            raise TelemetryError(f"{directory}: no groundtruth.csv and no inject time given")
        inject_time = float(pd.read_csv(truth).timestamp.min())
    lo, hi = inject_time - half_window_s, inject_time + half_window_s
    span_frames = []
    for path in sorted((directory / "trace").rglob("*.csv")):
        raw = pd.read_csv(path, dtype={"span_id": str, "trace_id": str, "parent_span": str}, keep_default_na=False)
        raw = raw[(raw.timestamp / 1000 >= lo) & (raw.timestamp / 1000 < hi)]
        pods = raw.cmdb_id.astype(str)
        span_frames.append(
            pd.DataFrame(
                {
                    "trace_id": raw.trace_id,
                    "span_id": raw.span_id,
                    "parent_id": raw.parent_span,
                    "service": pods.map(_service_of),
                    "pod": pods,
                    "node": "",
                    "operation": raw.operation_name.astype(str),
                    "start_us": (raw.timestamp * 1000).astype(np.int64),
                    "duration_us": raw.duration.astype(np.int64),
                    "error": ~raw.status_code.astype(str).isin(("0", "200", "Ok", "OK", "STATUS_CODE_UNSET")),
                    "status_message": "",
                }
            )
        )
    metric_frames = []
    for path in sorted((directory / "metric" / "container").rglob("*.csv")):
        raw = pd.read_csv(path)
        raw = raw[(raw.timestamp >= lo) & (raw.timestamp < hi)]
        node_pod = raw.cmdb_id.astype(str).str.split(".", n=1, expand=True)
        pods = node_pod[1] if node_pod.shape[1] > 1 else node_pod[0]
        metric_frames.append(
            pd.DataFrame(
                {
                    "time": raw.timestamp.astype(np.int64),
                    "service": pods.map(_service_of),
                    "pod": pods,
                    "metric": raw.kpi_name.map(_kpi_kind),
                    "value": raw.value.astype(float),
                }
            )
        )
    log_frames = []
    for path in sorted((directory / "log").rglob("*.csv")):
        raw = pd.read_csv(path, keep_default_na=False)
        column = "timestamp" if "timestamp" in raw else raw.columns[1]
        raw = raw[(raw[column] >= lo) & (raw[column] < hi)]
        message = raw["value"].astype(str)
        level = np.where(message.str.contains(r"error|exception|fail", case=False, regex=True), "ERROR", "INFO")
        log_frames.append(
            pd.DataFrame(
                {
                    "time": raw[column].astype(float),
                    "service": raw.cmdb_id.astype(str).map(_service_of),
                    "pod": raw.cmdb_id.astype(str),
                    "level": level,
                    "message": message,
                    "trace_id": "",
                }
            )
        )

    def concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))

    out = Telemetry(
        "online-boutique",
        inject_time,
        hi,
        concat(span_frames, SPAN_COLUMNS),
        concat(metric_frames, METRIC_COLUMNS),
        concat(log_frames, LOG_COLUMNS),
    )
    out.load_ms = (time.perf_counter() - began) * 1000
    return out


def load_case(directory: Path) -> Telemetry:
    """Either layout, recognised by its files."""
    directory = Path(directory)
    if (directory / "inject_time.txt").is_file():
        return load_rcaeval(directory)
    if (directory / "trace").is_dir() or (directory / "groundtruth.csv").is_file():
        return load_aiops2022(directory)
    raise TelemetryError(f"{directory} is neither an RCAEval case (inject_time.txt) nor an AIOps 2022 directory")


# -- Kafka ------------------------------------------------------------------------------------------


def load_kafka(
    settings: KafkaSettings,
    system: str,
    start_s: float,
    end_s: float,
    baseline_s: float = 600.0,
    grace_s: float = 30.0,
    topic_names: tuple[str, str, str] = (topics.OTLP_SPANS, topics.OTLP_METRICS, topics.OTLP_LOGS),
) -> Telemetry:
    """Reads ``[start - baseline, end)`` back from the telemetry topics (offsets-for-times seek).

    Records carry the time of their newest data point, so the seek lands on or before every
    record holding data from the window; reading stops at the end offsets seen when the read
    began, or once a partition has moved ``grace_s`` past the window.
    """
    began = time.perf_counter()
    lo_ms, hi_ms = int((start_s - baseline_s) * 1000), int(end_s * 1000)
    consumer = KafkaConsumer(enable_auto_commit=False, **settings.client_config())
    try:
        partitions = [TopicPartition(t, p) for t in topic_names for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not partitions:
            raise TelemetryError(f"no telemetry topics {topic_names} on {settings.bootstrap_servers}")
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        starts = consumer.offsets_for_times({tp: lo_ms for tp in partitions})
        live = set()
        for tp in partitions:
            found = starts.get(tp)
            if found is not None and found.offset < ends[tp]:
                consumer.seek(tp, found.offset)
                live.add(tp)
        by_topic: dict[str, list[bytes]] = {t: [] for t in topic_names}
        while live:
            batch = consumer.poll(timeout_ms=500, max_records=2000)
            if not batch:
                live = {tp for tp in live if consumer.position(tp) < ends[tp]}
                continue
            for tp, records in batch.items():
                for record in records:
                    if tp in live and record.offset < ends[tp] and record.timestamp <= hi_ms + grace_s * 1000:
                        by_topic[tp.topic].append(record.value)
                if tp in live and (consumer.position(tp) >= ends[tp] or records[-1].timestamp > hi_ms + grace_s * 1000):
                    live.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close()
    spans = _otlp_spans(by_topic[topic_names[0]], system, lo_ms * 1000, hi_ms * 1000)
    metrics = _otlp_metrics(by_topic[topic_names[1]], system, lo_ms / 1000, hi_ms / 1000)
    logs = _otlp_logs(by_topic[topic_names[2]], system, lo_ms / 1000, hi_ms / 1000)
    out = Telemetry(system, start_s, end_s, spans, metrics, logs)
    out.load_ms = (time.perf_counter() - began) * 1000
    return out


def _in_system(resource: dict[str, object], system: str) -> bool:
    namespace = resource.get("service.namespace") or resource.get("k8s.namespace.name")
    return not system or not namespace or namespace == system


def _otlp_spans(values: list[bytes], system: str, lo_us: int, hi_us: int) -> pd.DataFrame:
    rows = []
    for value in values:
        for scoped in otlp.iter_spans(otlp.decode_spans(value)):
            if not _in_system(scoped.resource, system):
                continue
            span = scoped.item
            start_us = span.start_time_unix_nano // 1000
            if not lo_us <= start_us < hi_us:
                continue
            pod = str(scoped.resource.get("k8s.pod.name") or scoped.resource.get("service.instance.id") or "")
            rows.append(
                (
                    span.trace_id.hex(),
                    span.span_id.hex(),
                    span.parent_span_id.hex(),
                    scoped.service,
                    pod or scoped.service,
                    str(scoped.resource.get("k8s.node.name") or ""),
                    span.name,
                    start_us,
                    max(1, (span.end_time_unix_nano - span.start_time_unix_nano) // 1000),
                    span.status.code == 2,  # STATUS_CODE_ERROR
                    span.status.message,
                )
            )
    return pd.DataFrame(rows, columns=list(SPAN_COLUMNS))


def _otlp_metrics(values: list[bytes], system: str, lo_s: float, hi_s: float) -> pd.DataFrame:
    rows = []
    for value in values:
        for scoped in otlp.iter_metrics(otlp.decode_metrics(value)):
            if not _in_system(scoped.resource, system):
                continue
            metric = scoped.item
            kind = OTEL_METRIC_KINDS.get(metric.name, metric.name)
            pod = str(scoped.resource.get("k8s.pod.name") or "")
            data = metric.gauge.data_points if metric.HasField("gauge") else metric.sum.data_points
            for point in data:
                t = point.time_unix_nano / 1e9
                if lo_s <= t < hi_s:
                    number = point.as_double if point.HasField("as_double") else float(point.as_int)
                    rows.append((int(t), scoped.service, pod, kind, number))
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def _otlp_logs(values: list[bytes], system: str, lo_s: float, hi_s: float) -> pd.DataFrame:
    rows = []
    for value in values:
        for scoped in otlp.iter_logs(otlp.decode_logs(value)):
            if not _in_system(scoped.resource, system):
                continue
            record = scoped.item
            t = record.time_unix_nano / 1e9
            if not lo_s <= t < hi_s:
                continue
            level = record.severity_text or _SEVERITY_LEVEL.get(record.severity_number // 4 * 4 + 1, "INFO")
            rows.append(
                (
                    t,
                    scoped.service,
                    str(scoped.resource.get("k8s.pod.name") or scoped.service),
                    level.upper(),
                    str(otlp.any_value(record.body)),
                    record.trace_id.hex(),
                )
            )
    return pd.DataFrame(rows, columns=list(LOG_COLUMNS))
