"""One text view per modality of a window: what a text encoder can read.

A sentence encoder is poor at raw numbers, so every shift is said in words relative to the
service's own baseline ("cartservice p99 latency very high (about 6x usual)"), the most
deviating first, because the encoder truncates long inputs. Log templates are Drain3's.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.embedding.baseline import Deviation
from services.embedding.ingest import TemplateBook
from services.embedding.windows import LOG_FEATURES, METRIC_FEATURES, SPAN_FEATURES, Window

MODALITIES = ("metrics", "traces", "logs")
NOTABLE_Z = 4.0
MODALITY_OF = {
    **{f: "metrics" for f in METRIC_FEATURES.values()},
    **{f: "traces" for f in SPAN_FEATURES},
    **{f: "logs" for f in LOG_FEATURES},
}
WORDS = {
    "cpu": "CPU usage",
    "memory": "memory usage",
    "disk_io": "disk I/O",
    "net_rx": "network receive",
    "net_tx": "network transmit",
    "sockets": "open sockets",
    "restarts": "container restarts",
    "request_rate": "request rate",
    "error_rate": "error rate",
    "latency_p50": "median latency",
    "latency_p90": "p90 latency",
    "latency_p99": "p99 latency",
    "spans": "span count",
    "span_errors": "failed spans",
    "span_p50": "own span time",
    "span_p99": "slowest span time",
    "call_gap_p90": "network wait on calls into it",
    "blamed_by_callers": "failed calls naming it",
    "log_errors": "error logs",
    "log_warnings": "warning logs",
    "log_lines": "log volume",
    "new_templates": "lines of new log patterns",
    "blamed_in_logs": "other services' error logs naming it",
}


@dataclass
class Views:
    metrics: str
    traces: str
    logs: str

    def texts(self) -> list[str]:
        return [self.metrics, self.traces, self.logs]


def describe(d: Deviation) -> str:
    """A deviation in words: direction, size, and the ratio to usual when that means something."""
    size = abs(d.z)
    strength = "slightly " if size < 6 else "" if size < 15 else "very " if size < 50 else "extremely "
    direction = "high" if d.z > 0 else "low"
    if d.value == 0 and d.z < 0:
        return f"{WORDS[d.feature]} dropped to zero"
    if abs(d.baseline) < 1e-9:
        return f"{WORDS[d.feature]} {strength}{direction} (usually none)"
    ratio = d.value / d.baseline
    if ratio >= 1.5:
        how = f"about {ratio:.0f}x usual" if ratio >= 3 else "about double"
    elif ratio <= 0.67:
        how = "about half" if ratio > 0.3 else "a fraction of usual"
    else:
        return f"{WORDS[d.feature]} {strength}{direction}"
    return f"{WORDS[d.feature]} {strength}{direction} ({how})"


def _by_service(deviations: list[Deviation], modality: str, services: int = 4, per_service: int = 4) -> list[str]:
    grouped: dict[str, list[Deviation]] = {}
    for d in deviations:
        if MODALITY_OF[d.feature] == modality and abs(d.z) >= NOTABLE_Z:
            grouped.setdefault(d.service, []).append(d)
    lines = []
    for service, found in list(grouped.items())[:services]:  # deviations come most deviating first
        lines.append(f"{service}: " + ", ".join(describe(d) for d in found[:per_service]) + ".")
    return lines


def render(window: Window, deviations: list[Deviation], templates: TemplateBook, warm: bool = True) -> Views:
    quiet = "all services as usual." if warm else "no baseline yet."
    metric_lines = _by_service(deviations, "metrics")
    metrics = f"metrics of {window.system}, {len(window.services)} services. " + (" ".join(metric_lines) or quiet)

    trace_lines = _by_service(deviations, "traces")
    messages: dict[str, int] = {}
    for service in window.services.values():
        for message, count in service.error_messages.items():
            messages[message] = messages.get(message, 0) + count
    top = sorted(messages.items(), key=lambda kv: -kv[1])[:3]
    said = " ".join(f"failed spans say '{m}' ({c} times)." for m, c in top if c >= 3) if trace_lines else ""
    traces = f"traces: {window.spans} spans, {len(window.edges)} call edges. " + (
        " ".join(trace_lines) + (" " + said if said else "") if trace_lines else quiet
    )

    log_lines = _by_service(deviations, "logs", per_service=3)
    new: list[str] = []
    noisy = {d.service for d in deviations if MODALITY_OF[d.feature] == "logs" and abs(d.z) >= NOTABLE_Z}
    for name in sorted(noisy):
        service = window.services[name]
        for cluster, count in service.templates.most_common(3):
            new.append(f"{name} logs '{templates.template(cluster)}' ({count} times).")
    logs = f"logs: {window.log_records} records. " + (" ".join(log_lines + new[:6]) if log_lines else quiet)
    return Views(metrics, traces, logs)
