"""OTLP records in, closed windows out: the slicer's front end, shared by the service, training and eval.

Each OTLP record is walked once; every span, metric point and log record goes straight into
its system's pane (no intermediate objects). Log bodies are mined into templates by Drain3
(a fixed-depth parse tree over tokens, He et al. 2017) with its standard masking of ids and
numbers; the template ids are what the windows count.
"""

from __future__ import annotations

import threading

from drain3 import TemplateMiner
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.common import otlp, topics
from services.common.otlp import attributes
from services.embedding.windows import (
    COUNTER_METRICS,
    METRIC_FEATURES,
    SystemWindows,
    Window,
    WindowConfig,
    close_window,
)

STATUS_CODE_ERROR = 2
DEFAULT_SYSTEM = "default"
_LEVELS = {9: "INFO", 13: "WARN", 17: "ERROR", 21: "ERROR"}  # OTLP severity-number ranges start at these


def _system(resource: dict[str, object]) -> str:
    return str(resource.get("service.namespace") or resource.get("k8s.namespace.name") or DEFAULT_SYSTEM)


def _level(severity_number: int, severity_text: str) -> str:
    if severity_text:
        text = severity_text.upper()
        return "WARN" if text.startswith("WARN") else ("ERROR" if text in ("ERROR", "FATAL", "CRITICAL") else "INFO")
    level = "INFO"
    for floor, name in _LEVELS.items():
        if severity_number >= floor:
            level = name
    return level


class TemplateBook:
    """Drain3 over every log body, with an exact-body cache: most lines repeat verbatim."""

    CACHE = 50_000

    def __init__(self) -> None:
        config = TemplateMinerConfig()
        config.masking_instructions = [
            MaskingInstruction(r"\b[0-9a-f]{16,}\b", "ID"),
            MaskingInstruction(r"\b\d+(\.\d+)?(ms|s|%)?\b", "NUM"),
        ]
        config.drain_sim_th = 0.5
        self.miner = TemplateMiner(config=config)
        self._cache: dict[str, int] = {}
        self.first_seen: dict[int, float] = {}  # template -> start of the first window it was in

    def cluster(self, body: str) -> int:
        cluster = self._cache.get(body)
        if cluster is None:
            cluster = int(self.miner.add_log_message(body)["cluster_id"])
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            self._cache[body] = cluster
        return cluster

    def template(self, cluster: int) -> str:
        found = self.miner.drain.id_to_cluster.get(cluster)
        return found.get_template() if found is not None else f"template {cluster}"

    def is_new(self, cluster: int, window_start_s: float, window_s: float) -> bool:
        """Not seen before this window, or first seen less than two windows ago."""
        first = self.first_seen.get(cluster)
        return first is None or first >= window_start_s - window_s


class Slicer:
    """Per-system windows over the three telemetry streams; thread-safe (consumer vs. RPCs)."""

    def __init__(self, config: WindowConfig | None = None, templates: TemplateBook | None = None) -> None:
        self.config = config or WindowConfig()
        self.templates = templates or TemplateBook()
        self.systems: dict[str, SystemWindows] = {}
        self.expected: dict[str, set[str]] = {}  # modality -> the sources (partitions) the consumer holds
        self.lock = threading.Lock()
        self.spans = 0

    def expect(self, modality: str, sources: list[str]) -> None:
        """The sources of ``modality`` data to wait for (the consumer's partitions, after each rebalance)."""
        with self.lock:
            self.expected[modality] = set(sources)

    def _windows(self, system: str) -> SystemWindows:
        found = self.systems.get(system)
        if found is None:
            found = self.systems[system] = SystemWindows(system, self.config, self.expected)
        return found

    @property
    def late(self) -> int:
        return sum(s.late for s in self.systems.values())

    def add_record(self, topic: str, value: bytes, source: str = "") -> int:
        """One record of an ``otlp_*`` topic (the bytes the Collector's Kafka exporter writes), decoded and added."""
        if topic == topics.OTLP_SPANS:
            return self.add_spans(otlp.decode_spans(value), source)
        if topic == topics.OTLP_METRICS:
            return self.add_metrics(otlp.decode_metrics(value), source)
        if topic == topics.OTLP_LOGS:
            return self.add_logs(otlp.decode_logs(value), source)
        raise ValueError(f"{topic} is not a telemetry topic")

    def add_spans(self, request: ExportTraceServiceRequest, source: str = "") -> int:
        count = 0
        with self.lock:
            for group in request.resource_spans:
                resource = attributes(group.resource.attributes)
                windows = self._windows(_system(resource))
                service = str(resource.get("service.name", ""))
                for scoped in group.scope_spans:
                    for span in scoped.spans:
                        start = span.start_time_unix_nano
                        pane = windows.pane_for(start, "spans", source)
                        if pane is None:
                            continue
                        count += 1
                        pane.spans += 1
                        own = pane.service(service)
                        own.durations.append((span.end_time_unix_nano - start) / 1e9)
                        if span.status.code == STATUS_CODE_ERROR:
                            own.errors += 1
                            own.error_messages[span.status.message] += 1
                        pane.span_start[span.span_id] = (service, start)
                        if span.parent_span_id:
                            pane.children.append((span.parent_span_id, service, start))
            self.spans += count
        return count

    def add_metrics(self, request: ExportMetricsServiceRequest, source: str = "") -> int:
        count = 0
        with self.lock:
            for group in request.resource_metrics:
                resource = attributes(group.resource.attributes)
                windows = self._windows(_system(resource))
                service = str(resource.get("service.name", ""))
                pod = str(resource.get("k8s.pod.name", ""))
                for scoped in group.scope_metrics:
                    for metric in scoped.metrics:
                        feature = METRIC_FEATURES.get(metric.name)
                        kind = metric.WhichOneof("data")
                        if feature is None or kind not in ("gauge", "sum"):
                            continue
                        cumulative = metric.name in COUNTER_METRICS or (kind == "sum" and metric.sum.is_monotonic)
                        for point in getattr(metric, kind).data_points:
                            pane = windows.pane_for(point.time_unix_nano, "metrics", source)
                            if pane is None:
                                continue
                            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
                            count += 1
                            pane.metric_points += 1
                            own = pane.service(service)
                            if cumulative:
                                first_last = own.counters.get((pod, feature))
                                if first_last is None:
                                    own.counters[(pod, feature)] = [value, value]
                                else:
                                    first_last[1] = value
                            else:
                                own.metrics[feature].append(value)
        return count

    def add_logs(self, request: ExportLogsServiceRequest, source: str = "") -> int:
        count = 0
        with self.lock:
            for group in request.resource_logs:
                resource = attributes(group.resource.attributes)
                windows = self._windows(_system(resource))
                service = str(resource.get("service.name", ""))
                for scoped in group.scope_logs:
                    for record in scoped.log_records:
                        pane = windows.pane_for(record.time_unix_nano or record.observed_time_unix_nano, "logs", source)
                        if pane is None:
                            continue
                        count += 1
                        pane.log_records += 1
                        body = record.body.string_value
                        level = _level(record.severity_number, record.severity_text)
                        own = pane.service(service)
                        own.levels[level] += 1
                        own.templates[self.templates.cluster(body)] += 1
                        if level != "INFO":
                            own.log_messages[body] += 1
        return count

    def _new_template(self, start_s: float):  # type: ignore[no-untyped-def]
        return lambda cluster: self.templates.is_new(cluster, start_s, self.config.window_s)

    def ready(self, flush: bool = False) -> list[Window]:
        """Every window whose end the watermark has passed (all open ones with ``flush``)."""
        out: list[Window] = []
        with self.lock:
            for system, windows in self.systems.items():
                due = windows.due(flush)
                for k, panes in enumerate(due):
                    start = windows.start_s(len(due) - k)
                    out.append(close_window(system, start, self.config, panes, self._new_template(start)))
                    for service in out[-1].services.values():
                        for cluster in service.templates:
                            self.templates.first_seen.setdefault(cluster, start)
        return out
