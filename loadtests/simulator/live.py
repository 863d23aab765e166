"""A scenario played into Kafka as the OpenTelemetry Collector would write it, at a chosen pace.

Each chunk of scenario time is sent once that much time has passed on the wall clock (times
``speed``), with each Kafka record's timestamp set to the time of the telemetry it holds, so
that a consumer's offsets-for-times seek finds a window by when it happened.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtests.simulator.agents import AgentRun, run_to_otlp_steps
from loadtests.simulator.dataset import otlp_records
from loadtests.simulator.scenario import Scenario
from services.common import topics
from services.common.bus import Publisher
from services.common.settings import KafkaSettings


@dataclass
class PublishReport:
    records: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    spans: int = 0
    scenario_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.elapsed_s if self.elapsed_s else 0.0


def publish_agent_runs(runs: list[AgentRun], settings: KafkaSettings, speed: float = 1.0) -> PublishReport:
    """Each step's span arrives when the step ends (scaled by ``speed``), as a live agent framework's would."""
    steps = sorted(
        (
            (step.start_ns + step.duration_ns, run.trace_id, request)
            for run in runs
            for step, request in zip(run.steps, run_to_otlp_steps(run), strict=True)
        ),
        key=lambda item: item[0],
    )
    publisher = Publisher(settings, source="faultline/simulator")
    report = PublishReport()
    began = time.monotonic()
    first_ns = steps[0][0] if steps else 0
    try:
        for end_ns, trace_id, request in steps:
            if speed > 0:
                delay = began + (end_ns - first_ns) / 1e9 / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            value = request.SerializeToString()
            # keyed by trace, as the Collector's Kafka exporter with partition_traces_by_id: a run's steps stay in
            # one partition, in order
            publisher.send(topics.OTLP_SPANS, value, key=trace_id, timestamp_ms=end_ns // 1_000_000)
            report.records[topics.OTLP_SPANS] += 1
            report.bytes += len(value)
            report.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        publisher.flush()
        report.elapsed_s = time.monotonic() - began
    finally:
        publisher.close()
    return report


def publish(
    scenario: Scenario,
    settings: KafkaSettings,
    speed: float = 1.0,
    chunk_s: float = 5.0,
    progress: Callable[[PublishReport], None] | None = None,
) -> PublishReport:
    """Plays the whole scenario; ``speed`` 0 sends as fast as it can be generated."""
    publisher = Publisher(settings, source="faultline/simulator", linger_ms=20)
    report = PublishReport()
    began = time.monotonic()
    try:
        for chunk in scenario.chunks(chunk_s):
            if speed > 0:
                # Telemetry for [t0, t1) exists once t1 has passed, as a collector flushes it.
                delay = began + chunk.t1 / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            for topic, value, time_ms in otlp_records(scenario, chunk):
                publisher.send(topic, value, timestamp_ms=time_ms)
                report.records[topic] += 1
                report.bytes += len(value)
            report.spans += len(chunk.spans)
            report.scenario_s = chunk.t1
            report.elapsed_s = time.monotonic() - began
            if progress is not None:
                progress(report)
        publisher.flush()
        report.elapsed_s = time.monotonic() - began
    finally:
        publisher.close()
    return report
