"""OTLP protobuf as the OpenTelemetry Collector's kafka exporter writes it (encoding ``otlp_proto``).

A record on ``otlp_spans`` / ``otlp_metrics`` / ``otlp_logs`` is one serialized
``Export{Trace,Metrics,Logs}ServiceRequest`` (wire-identical to ``TracesData`` etc.). These
helpers decode records and flatten the resource/scope nesting that every consumer walks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from services.common import topics
from services.common.cloudevents import parse_protobuf

# The message each telemetry topic carries, for consumer routes.
TOPIC_MESSAGE = {
    topics.OTLP_SPANS: ExportTraceServiceRequest,
    topics.OTLP_METRICS: ExportMetricsServiceRequest,
    topics.OTLP_LOGS: ExportLogsServiceRequest,
}


def decode_spans(data: bytes) -> ExportTraceServiceRequest:
    return parse_protobuf(ExportTraceServiceRequest, data)  # type: ignore[return-value]


def decode_metrics(data: bytes) -> ExportMetricsServiceRequest:
    return parse_protobuf(ExportMetricsServiceRequest, data)  # type: ignore[return-value]


def decode_logs(data: bytes) -> ExportLogsServiceRequest:
    return parse_protobuf(ExportLogsServiceRequest, data)  # type: ignore[return-value]


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the plain Python value it holds."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(value, kind)
    if kind == "array_value":
        return [any_value(v) for v in raw.values]
    if kind == "kvlist_value":
        return attributes(raw.values)
    return raw


def attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def to_any_value(value: Any) -> AnyValue:
    """The inverse of :func:`any_value`, for producers of OTLP (the simulator, tests)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list | tuple):
        out = AnyValue()
        out.array_value.values.extend(to_any_value(v) for v in value)
        return out
    if isinstance(value, Mapping):
        out = AnyValue()
        out.kvlist_value.values.extend(to_key_values(value))
        return out
    return AnyValue(string_value=str(value))


def to_key_values(mapping: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=to_any_value(v)) for k, v in mapping.items()]


T = TypeVar("T")


@dataclass(frozen=True)
class Scoped(Generic[T]):
    """One span, metric or log record with the attributes of the resource that emitted it."""

    resource: dict[str, Any]
    scope: str
    item: T

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


def _walk(groups: Any, scopes: str, items: str) -> Iterator[Scoped[Any]]:
    """Resource → scope → item, the nesting every OTLP signal shares."""
    for group in groups:
        resource = attributes(group.resource.attributes)
        for scoped in getattr(group, scopes):
            for item in getattr(scoped, items):
                yield Scoped(resource, scoped.scope.name, item)


def iter_spans(request: ExportTraceServiceRequest) -> Iterator[Scoped[Span]]:
    return _walk(request.resource_spans, "scope_spans", "spans")


def iter_metrics(request: ExportMetricsServiceRequest) -> Iterator[Scoped[Metric]]:
    return _walk(request.resource_metrics, "scope_metrics", "metrics")


def iter_logs(request: ExportLogsServiceRequest) -> Iterator[Scoped[LogRecord]]:
    return _walk(request.resource_logs, "scope_logs", "log_records")
