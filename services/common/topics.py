"""The platform's Kafka topics: telemetry in (OpenTelemetry Collector names) and events between services."""

from __future__ import annotations

from dataclasses import dataclass

OTLP_SPANS = "otlp_spans"
OTLP_METRICS = "otlp_metrics"
OTLP_LOGS = "otlp_logs"

HEARTBEATS = "faultline.heartbeats.v1"
STATES = "faultline.states.v1"
INCIDENTS = "faultline.incidents.v1"
ALERTS = "faultline.alerts.v1"
MITIGATIONS = "faultline.mitigations.v1"
RCA_REPORTS = "faultline.rca-reports.v1"
KG_UPDATES = "faultline.kg-updates.v1"
DOCUMENTS = "faultline.documents.v1"

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int


_HOUR = 3_600_000
# Telemetry is also the rca service's short-term store (read back by timestamp), so it
# keeps a day; platform events are small and kept for a week.
CATALOGUE: tuple[TopicSpec, ...] = (
    *(TopicSpec(t, 4, 24 * _HOUR) for t in (OTLP_SPANS, OTLP_METRICS, OTLP_LOGS)),
    *(
        TopicSpec(t, 2, 7 * 24 * _HOUR)
        for t in (HEARTBEATS, STATES, INCIDENTS, ALERTS, MITIGATIONS, RCA_REPORTS, KG_UPDATES, DOCUMENTS)
    ),
)


def dlq(topic: str, suffix: str = DLQ_SUFFIX) -> str:
    return topic + suffix


def with_dead_letters(specs: tuple[TopicSpec, ...] = CATALOGUE) -> list[TopicSpec]:
    """Each topic and its dead-letter topic (one partition, two weeks: it is read by people)."""
    out: list[TopicSpec] = []
    for spec in specs:
        out += [spec, TopicSpec(dlq(spec.name), 1, 14 * 24 * _HOUR)]
    return out
