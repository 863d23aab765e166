"""The simulator writes OTLP into the real broker as the OpenTelemetry Collector's kafka exporter does."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from loadtests.simulator.live import publish
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common import otlp, topics
from services.common.admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.topics import CATALOGUE


def _drain(kafka: KafkaSettings, topic: str, since_s: int | None = None, until_s: int | None = None) -> list:
    """The topic's records, those with a record time in [since_s, until_s) when given: the telemetry topics
    are shared by every test of the session, and each test's data lives in its own stretch of time."""
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=5_000, **kafka.client_config())
    records = list(consumer)
    consumer.close()
    if since_s is None or until_s is None:
        return records
    return [r for r in records if since_s * 1000 <= r.timestamp < until_s * 1000]


def test_scenario_into_kafka_decodes_and_is_findable_by_time(kafka: KafkaSettings) -> None:
    ensure_topics(kafka, CATALOGUE)
    epoch = int(time.time()) - 60
    spec = ScenarioSpec(faults=("cpu:cartservice@30s",), duration_s=60, seed=9, epoch_s=epoch)
    report = publish(Scenario(spec), kafka, speed=0, chunk_s=10)
    expected = len(Scenario(spec).run(chunk_s=10).spans)
    assert report.spans == expected

    # A record's time is its newest data point: spans that start before the end finish a little after it.
    ours = (epoch, epoch + 60)
    span_records = _drain(kafka, topics.OTLP_SPANS, epoch, epoch + 120)
    assert all(r.key is None and not r.headers for r in span_records)  # plain otlp_proto, like the collector
    starts = [s.item.start_time_unix_nano for r in span_records for s in otlp.iter_spans(otlp.decode_spans(r.value))]
    # Ours: the spans of this stretch of time (calls fanned out at its very end start just after it).
    assert sum((epoch - 10) * 10**9 <= t < (epoch + 70) * 10**9 for t in starts) == expected
    metric_records = _drain(kafka, topics.OTLP_METRICS, *ours)
    assert len(metric_records) == 60  # one request per 1 s step
    assert report.records[topics.OTLP_LOGS] == len(_drain(kafka, topics.OTLP_LOGS, *ours)) > 0

    # Record time is telemetry time: seeking to the fault's start skips the healthy half.
    consumer = KafkaConsumer(**kafka.client_config())
    partitions = [TopicPartition(topics.OTLP_METRICS, p) for p in consumer.partitions_for_topic(topics.OTLP_METRICS)]
    found = consumer.offsets_for_times({tp: (epoch + 30) * 1000 for tp in partitions})
    consumer.close()
    after = sum(
        sum(1 for r in metric_records if r.partition == tp.partition and r.offset >= found[tp].offset)
        for tp in partitions
        if found[tp] is not None
    )
    assert after == 30  # steps 30..59


def test_agent_steps_arrive_one_record_per_step(kafka: KafkaSettings) -> None:
    from loadtests.simulator.agents import generate_runs
    from loadtests.simulator.live import publish_agent_runs

    ensure_topics(kafka, CATALOGUE)
    start = time.time_ns() - 3_600 * 1_000_000_000
    runs = generate_runs("code", 3, seed=11, start_ns=start)
    report = publish_agent_runs(runs, kafka, speed=0)
    assert report.records[topics.OTLP_SPANS] == sum(len(r.steps) for r in runs)
    trace_ids = {r.trace_id for r in runs}
    records = _drain(kafka, topics.OTLP_SPANS)
    spans = [s for r in records for s in otlp.iter_spans(otlp.decode_spans(r.value)) if s.item.trace_id in trace_ids]
    assert len(spans) == sum(len(r.steps) + 1 for r in runs)  # every step, plus each run's root span
    assert {otlp.attributes(s.item.attributes).get("gen_ai.operation.name") for s in spans} >= {
        "invoke_agent",
        "execute_tool",
    }
