"""Simulated telemetry as OTLP requests, byte-compatible with the OpenTelemetry Collector's
kafka exporter (``otlp_proto``): one serialized ``Export*ServiceRequest`` per Kafka record.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

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
from services.common.otlp import to_key_values

SCOPE = "faultline.simulator"
# Pod metric column -> (OTLP metric name, unit); service request metrics carry no pod.
POD_METRIC_NAMES = {
    "cpu": ("container.cpu.utilization", "%"),
    "mem": ("container.memory.usage", "By"),
    "diskio": ("container.disk.io", "By/s"),
    "netrx": ("container.network.io.receive", "By/s"),
    "nettx": ("container.network.io.transmit", "By/s"),
    "socket": ("container.sockets", "{socket}"),
    "restarts": ("k8s.container.restarts", "{restart}"),
}
SERVICE_METRIC_NAMES = {
    "rps": ("rpc.server.request.rate", "{request}/s"),
    "error": ("rpc.server.error.rate", "{request}/s"),
    "latency-50": ("rpc.server.duration.p50", "s"),
    "latency-90": ("rpc.server.duration.p90", "s"),
    "latency-99": ("rpc.server.duration.p99", "s"),
}
SEVERITY = {
    "INFO": SeverityNumber.SEVERITY_NUMBER_INFO,
    "WARN": SeverityNumber.SEVERITY_NUMBER_WARN,
    "ERROR": SeverityNumber.SEVERITY_NUMBER_ERROR,
}
_CAUSE_MESSAGE = {
    CAUSE_EXCEPTION: "unhandled exception",
    CAUSE_DOWNSTREAM: "downstream call failed: {callee}",
    CAUSE_TIMEOUT: "deadline exceeded calling {callee}",
    CAUSE_UNAVAILABLE: "{callee} unavailable",
}


def resource_attributes(topology: Topology, service: str, pod: str | None = None) -> dict[str, str]:
    attributes = {"service.name": service, "service.namespace": topology.system, "k8s.namespace.name": topology.system}
    if pod is not None:
        attributes |= {"k8s.pod.name": pod, "service.instance.id": pod, "k8s.node.name": topology.pod_node[pod]}
    return attributes


class SpanEncoder:
    """Turns rows of a :class:`SpanTable` into OTLP spans, grouped by the pod that emitted them."""

    def __init__(self, topology: Topology, faults: FaultModel) -> None:
        self.topology = topology
        self.pods = faults.pod_names
        self.pod_service = {p: s.name for s in topology.services.values() for p in s.pods}

    def requests(self, spans: SpanTable, max_spans: int = 2000) -> Iterator[tuple[ExportTraceServiceRequest, int]]:
        """(request, latest span end in ns): at most ``max_spans`` spans each, in start-time order."""
        order = np.argsort(spans.start_us, kind="stable")
        for lo in range(0, len(order), max_spans):
            rows = order[lo : lo + max_spans]
            latest_ns = int((spans.start_us[rows] + spans.duration_us[rows]).max()) * 1000
            yield self.request(spans, rows), latest_ns

    def request(self, spans: SpanTable, rows: np.ndarray) -> ExportTraceServiceRequest:
        request = ExportTraceServiceRequest()
        trace_bytes = spans.trace_ids.astype(">u8").tobytes()
        span_bytes = spans.span_id.astype(">u8").tobytes()
        parent_bytes = spans.parent_id.astype(">u8").tobytes()
        op_attrs = [self._op_attributes(k) for k in spans.operations]
        for pod in np.unique(spans.pod[rows]):
            pod_name = self.pods[pod]
            resource_spans = request.resource_spans.add()
            resource_spans.resource.attributes.extend(
                to_key_values(resource_attributes(self.topology, self.pod_service[pod_name], pod_name))
            )
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name = SCOPE
            for i in rows[spans.pod[rows] == pod]:
                t = spans.trace[i]
                op = spans.op[i]
                start_ns = int(spans.start_us[i]) * 1000
                span = scope_spans.spans.add(
                    trace_id=trace_bytes[16 * t : 16 * t + 16],
                    span_id=span_bytes[8 * i : 8 * i + 8],
                    parent_span_id=parent_bytes[8 * i : 8 * i + 8] if spans.parent_id[i] else b"",
                    name=spans.operations[op].split("/", 1)[1],
                    kind=Span.SPAN_KIND_SERVER,
                    start_time_unix_nano=start_ns,
                    end_time_unix_nano=start_ns + int(spans.duration_us[i]) * 1000,
                )
                span.attributes.extend(op_attrs[op])
                if spans.status[i] == STATUS_ERROR:
                    callee = spans.operations[spans.failed_call[i]] if spans.failed_call[i] >= 0 else ""
                    span.status.code = Status.STATUS_CODE_ERROR
                    span.status.message = _CAUSE_MESSAGE.get(int(spans.cause[i]), "error").format(callee=callee)
        return request

    def _op_attributes(self, key: str):  # type: ignore[no-untyped-def]
        service, name = key.split("/", 1)
        if self.topology.services[service].kind == "web":
            method, _, route = name.partition(" ")
            return to_key_values({"http.request.method": method, "http.route": route or "/"})
        return to_key_values({"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})


def metrics_requests(
    topology: Topology, pods: pd.DataFrame, services: pd.DataFrame
) -> Iterator[ExportMetricsServiceRequest]:
    """One request per time step: a gauge point per pod metric and per service request metric."""
    by_time = pods.groupby("time", sort=True)
    service_rows = services.set_index("time")
    for time_s, frame in by_time:
        request = ExportMetricsServiceRequest()
        time_ns = int(time_s) * 1_000_000_000
        for row in frame.itertuples(index=False):
            resource_metrics = request.resource_metrics.add()
            resource_metrics.resource.attributes.extend(
                to_key_values(resource_attributes(topology, row.service, row.pod))
            )
            scope = resource_metrics.scope_metrics.add()
            scope.scope.name = SCOPE
            for column, (name, unit) in POD_METRIC_NAMES.items():
                metric = scope.metrics.add(name=name, unit=unit)
                metric.gauge.data_points.add(time_unix_nano=time_ns, as_double=float(getattr(row, column)))
        if time_s in service_rows.index:
            values = service_rows.loc[time_s]
            for service in topology.services:
                resource_metrics = request.resource_metrics.add()
                resource_metrics.resource.attributes.extend(to_key_values(resource_attributes(topology, service)))
                scope = resource_metrics.scope_metrics.add()
                scope.scope.name = SCOPE
                for column, (name, unit) in SERVICE_METRIC_NAMES.items():
                    metric = scope.metrics.add(name=name, unit=unit)
                    metric.gauge.data_points.add(time_unix_nano=time_ns, as_double=float(values[f"{service}_{column}"]))
        yield request, time_ns


def logs_requests(
    topology: Topology, logs: pd.DataFrame, max_records: int = 2000
) -> Iterator[ExportLogsServiceRequest]:
    for lo in range(0, len(logs), max_records):
        batch = logs.iloc[lo : lo + max_records]
        request = ExportLogsServiceRequest()
        for (service, pod), frame in batch.groupby(["service", "pod"], sort=False):
            resource_logs = request.resource_logs.add()
            resource_logs.resource.attributes.extend(to_key_values(resource_attributes(topology, service, pod)))
            scope = resource_logs.scope_logs.add()
            scope.scope.name = SCOPE
            for row in frame.itertuples(index=False):
                record = scope.log_records.add(
                    time_unix_nano=int(row.time_ns),
                    observed_time_unix_nano=int(row.time_ns),
                    severity_number=SEVERITY[row.level],
                    severity_text=row.level,
                    trace_id=bytes.fromhex(row.trace_id) if row.trace_id else b"",
                    span_id=bytes.fromhex(row.span_id) if row.span_id else b"",
                )
                record.body.string_value = row.message
        yield request, int(batch.time_ns.max())
