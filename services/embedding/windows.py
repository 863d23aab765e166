"""Slicing: the telemetry stream cut into windows per system, with a watermark for late data.

Time is split into panes of one stride; a window is ``window_s / stride_s`` consecutive panes,
so overlapping windows share their aggregates instead of re-reading data. The watermark is
the newest event time seen for the system in the slowest modality (metrics, spans and logs
arrive in separate records, in no fixed order) minus ``lateness_s``; a window is closed (emitted)
once the watermark passes its end. A record for a pane that no open window needs any more is
late: it is dropped and counted, never silently merged into a window already published.

Within a modality the newest event time is taken per source (a Kafka partition), and the modality's
time is the oldest of them: a consumer catching up on a backlog reads one partition far ahead of the
others (a whole fetch of it at once), and taking the newest over all partitions then closed windows
that the other partitions still had data for, which was dropped as late. Sources the consumer holds
but has not heard from yet wait like a modality not seen yet; a silent one stops counting after idle_s.

Inside a pane everything is kept per service, so the views can break a window down by service
and the root-cause head can score each service: span durations and errors, the gap between a
caller's start and its callee's (where network faults show), metric points, log levels and
log templates (mined by Drain3, see :mod:`services.embedding.views`).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

COUNTER_METRICS = frozenset({"k8s.container.restarts"})  # cumulative: the window's increase is what matters


@dataclass(frozen=True)
class WindowConfig:
    window_s: float = 30.0
    stride_s: float = 15.0
    lateness_s: float = 15.0  # at least the span of one producer batch (the Collector's, the simulator's chunk)
    # A modality that has sent nothing for this long (wall-clock) stops holding the watermark back: a
    # system without logs still gets windows, yet a backlog replayed fast never outruns a modality
    # whose partitions the consumer simply has not fetched yet.
    idle_s: float = 120.0
    modalities: tuple[str, ...] = ("spans", "metrics", "logs")  # what a window waits for
    origin_s: float = 0.0  # panes are aligned to origin + k * stride (an ad-hoc window sets its own start)

    def __post_init__(self) -> None:
        panes = self.window_s / self.stride_s
        if self.stride_s <= 0 or panes < 1 or abs(panes - round(panes)) > 1e-9:
            raise ValueError(f"window_s ({self.window_s}) must be a positive multiple of stride_s ({self.stride_s})")

    @property
    def panes(self) -> int:
        return round(self.window_s / self.stride_s)


@dataclass
class ServicePane:
    """One service's telemetry in one pane."""

    durations: list[float] = field(default_factory=list)  # own span durations (s)
    errors: int = 0
    error_messages: Counter[str] = field(default_factory=Counter)  # span status messages of failed spans
    metrics: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counters: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (pod, name) -> [first, last]
    levels: Counter[str] = field(default_factory=Counter)
    templates: Counter[int] = field(default_factory=Counter)  # Drain3 cluster id -> records
    log_messages: Counter[str] = field(default_factory=Counter)  # ERROR/WARN bodies, for mentions of services


@dataclass
class Pane:
    services: dict[str, ServicePane] = field(default_factory=dict)
    span_start: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # span id -> (service, start ns)
    children: list[tuple[bytes, str, int]] = field(default_factory=list)  # (parent id, service, start ns)
    spans: int = 0
    metric_points: int = 0
    log_records: int = 0

    def service(self, name: str) -> ServicePane:
        pane = self.services.get(name)
        if pane is None:
            pane = self.services[name] = ServicePane()
        return pane


@dataclass
class ServiceWindow:
    """A service's breakdown of one window: numeric features plus what the log view needs."""

    features: dict[str, float]
    templates: Counter[int]
    error_messages: Counter[str]


@dataclass
class Window:
    system: str
    start_s: float
    end_s: float
    services: dict[str, ServiceWindow]
    spans: int
    metric_points: int
    log_records: int
    edges: Counter[tuple[str, str]]  # (caller, callee) -> calls

    @property
    def key(self) -> str:
        return f"{self.system}@{self.start_s:.0f}"


# Metric name (OTLP, as the OpenTelemetry Collector and the simulator name them) -> feature.
METRIC_FEATURES = {
    "container.cpu.utilization": "cpu",
    "container.memory.usage": "memory",
    "container.disk.io": "disk_io",
    "container.network.io.receive": "net_rx",
    "container.network.io.transmit": "net_tx",
    "container.sockets": "sockets",
    "k8s.container.restarts": "restarts",
    "rpc.server.request.rate": "request_rate",
    "rpc.server.error.rate": "error_rate",
    "rpc.server.duration.p50": "latency_p50",
    "rpc.server.duration.p90": "latency_p90",
    "rpc.server.duration.p99": "latency_p99",
}
SPAN_FEATURES = ("spans", "span_errors", "span_p50", "span_p99", "call_gap_p90", "blamed_by_callers")
LOG_FEATURES = ("log_errors", "log_warnings", "log_lines", "new_templates", "blamed_in_logs")
FEATURES: tuple[str, ...] = (*dict.fromkeys(METRIC_FEATURES.values()), *SPAN_FEATURES, *LOG_FEATURES)


class SystemWindows:
    """The open panes of one system and its watermark."""

    def __init__(self, system: str, config: WindowConfig, expected: dict[str, set[str]] | None = None) -> None:
        self.system = system
        self.config = config
        self.panes: dict[int, Pane] = {}
        # modality -> source -> (newest event time in ns, wall-clock of its latest record)
        self.sources: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
        self.expected = expected if expected is not None else {}  # modality -> sources the consumer holds
        self.opened = time.monotonic()
        self.next_window = -1  # index of the first pane of the next window to close; -1 before any data
        self.late = 0

    def pane_for(self, time_ns: int, modality: str, source: str = "") -> Pane | None:
        index = math.floor((time_ns / 1e9 - self.config.origin_s) / self.config.stride_s)
        if self.next_window < 0:
            # The first data opens the window that ends at its pane, so no earlier window is half empty.
            self.next_window = index
        if index < self.next_window:
            self.late += 1
            return None
        heard = self.sources[modality]
        newest, _ = heard.get(source, (0, 0.0))
        heard[source] = (max(newest, time_ns), time.monotonic())
        pane = self.panes.get(index)
        if pane is None:
            pane = self.panes[index] = Pane()
        return pane

    def due(self, flush: bool = False) -> list[list[Pane | None]]:
        """Panes of every window the watermark has passed, oldest first; forgets panes no longer needed."""
        if self.next_window < 0:
            return []
        stride, n = self.config.stride_s, self.config.panes
        now, idle = time.monotonic(), self.config.idle_s
        # Every expected modality holds the watermark until it has been silent for idle_s, including one
        # not seen yet (counted from the system's first record): its data may simply not be fetched yet.
        young = now - self.opened < idle
        waiting = [m for m in self.config.modalities if m not in self.sources and young]
        waiting += [m for m, heard in self.sources.items() if young and self.expected.get(m, set()) - heard.keys()]
        live = []
        for heard in self.sources.values():  # a modality is as far as its slowest live source
            times = [t for t, arrived in heard.values() if now - arrived < idle]
            if times:
                live.append(min(times))
        newest = max((t for heard in self.sources.values() for t, _ in heard.values()), default=0)
        watermark_s = -math.inf if waiting else min(live, default=newest) / 1e9 - self.config.lateness_s
        out: list[list[Pane | None]] = []
        last = max(self.panes, default=self.next_window)
        while self.config.origin_s + (self.next_window + n) * stride <= watermark_s or (
            flush and self.next_window <= last
        ):
            out.append([self.panes.get(i) for i in range(self.next_window, self.next_window + n)])
            self.panes.pop(self.next_window, None)
            self.next_window += 1
        return out

    def start_s(self, panes_back: int) -> float:
        return self.config.origin_s + (self.next_window - panes_back) * self.config.stride_s


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else 0.0


def close_window(
    system: str, start_s: float, config: WindowConfig, panes: list[Pane | None], new_template: Callable[[int], bool]
) -> Window:
    """Aggregates a window's panes into per-service features."""
    present = [p for p in panes if p is not None]
    names = sorted({s for p in present for s in p.services})
    span_start: dict[bytes, tuple[str, int]] = {}
    for p in present:
        span_start.update(p.span_start)
    gaps: dict[str, list[float]] = defaultdict(list)
    edges: Counter[tuple[str, str]] = Counter()
    for p in present:
        for parent, service, start in p.children:
            caller = span_start.get(parent)
            if caller is not None and caller[0] != service:
                gaps[service].append((start - caller[1]) / 1e9)
                edges[(caller[0], service)] += 1
    services: dict[str, ServiceWindow] = {}
    blamed_spans: Counter[str] = Counter()
    blamed_logs: Counter[str] = Counter()
    merged = {name: [p.services[name] for p in present if name in p.services] for name in names}
    for name, parts in merged.items():
        for part in parts:
            for message, count in part.error_messages.items():
                for other in names:
                    if other != name and f"{other}/" in message:
                        blamed_spans[other] += count
            for message, count in part.log_messages.items():
                for other in names:
                    if other != name and f"{other}/" in message:
                        blamed_logs[other] += count
    for name, parts in merged.items():
        durations = [d for part in parts for d in part.durations]
        templates: Counter[int] = Counter()
        levels: Counter[str] = Counter()
        error_messages: Counter[str] = Counter()
        metric_values: dict[str, list[float]] = defaultdict(list)
        counters: dict[tuple[str, str], list[float]] = {}
        for part in parts:
            templates.update(part.templates)
            levels.update(part.levels)
            error_messages.update(part.error_messages)
            for metric, values in part.metrics.items():
                metric_values[metric].extend(values)
            for key, (first, last) in part.counters.items():
                counters[key] = [counters[key][0], last] if key in counters else [first, last]
        features = dict.fromkeys(FEATURES, 0.0)
        for metric, values in metric_values.items():
            features[metric] = float(np.mean(values))
        for (_pod, metric), (first, last) in counters.items():
            features[metric] += max(0.0, last - first)
        features["spans"] = float(len(durations))
        features["span_errors"] = float(sum(part.errors for part in parts))
        features["span_p50"] = _quantile(durations, 0.5)
        features["span_p99"] = _quantile(durations, 0.99)
        features["call_gap_p90"] = _quantile(gaps.get(name, []), 0.9)
        features["blamed_by_callers"] = float(blamed_spans[name])
        features["log_errors"] = float(levels["ERROR"])
        features["log_warnings"] = float(levels["WARN"])
        features["log_lines"] = float(sum(levels.values()))
        features["new_templates"] = float(sum(c for t, c in templates.items() if new_template(t)))
        features["blamed_in_logs"] = float(blamed_logs[name])
        services[name] = ServiceWindow(features, templates, error_messages)
    return Window(
        system=system,
        start_s=start_s,
        end_s=start_s + config.window_s,
        services=services,
        spans=sum(p.spans for p in present),
        metric_points=sum(p.metric_points for p in present),
        log_records=sum(p.log_records for p in present),
        edges=edges,
    )
