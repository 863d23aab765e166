"""The embedding service on the real broker: simulator OTLP in, StateEmbedding events out, bad records to the DLQ."""

from __future__ import annotations

import threading

from kafka import KafkaConsumer

from loadtests.simulator.dataset import otlp_records
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common import topics
from services.common.bus import EventConsumer, Publisher
from services.common.cloudevents import CloudEvent
from services.common.pb.faultline.v1 import embedding_pb2
from services.common.settings import KafkaSettings
from services.embedding.checkpoint import RuntimeSlicerModel
from services.embedding.service import EmbeddingEngine
from tests.integration.conftest import wait_until

FAULT_AT_S = 180


def _read(kafka: KafkaSettings, topic: str, count: int) -> list:
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=5_000, **kafka.client_config())
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= count:
            break
    consumer.close()
    return records


def test_states_flow_from_otlp_topics_and_the_anomaly_score_rises_after_the_fault(kafka, new_topic) -> None:  # type: ignore[no-untyped-def]
    names = {t: new_topic(partitions=1) for t in (topics.OTLP_SPANS, topics.OTLP_METRICS, topics.OTLP_LOGS)}
    states_topic = new_topic()
    scenario = Scenario(ScenarioSpec(faults=(f"delay:cartservice@{FAULT_AT_S}s+120s",), duration_s=330, seed=41))
    producer = Publisher(kafka, source="test/embedding")
    producer.send(names[topics.OTLP_SPANS], b"\x0a\xff\xff not otlp", wait=True)  # malformed: must go to the DLQ
    for chunk in scenario.chunks(10.0):
        for topic, value, time_ms in otlp_records(scenario, chunk):
            producer.send(names[topic], value, timestamp_ms=time_ms)
    producer.flush()

    model = RuntimeSlicerModel.load()
    engine = EmbeddingEngine(model)
    engine.publisher, engine.states_topic = producer, states_topic
    consumer = EventConsumer(kafka, "test-embedding", engine.routes(names), producer)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # 330 s of telemetry in 15 s strides: windows up to the watermark (the last ~30 s stay open).
        wait_until(lambda: engine.published >= 18, timeout=240, what="state embeddings")
    finally:
        stop.set()
        thread.join(timeout=60)
    producer.flush()

    assert consumer.stats.dead_lettered == 1 and "not a valid" in consumer.stats.errors[0]
    [dead] = _read(kafka, names[topics.OTLP_SPANS] + ".dlq", 1)
    assert dict(dead.headers)["faultline_dlq_topic"].decode() == names[topics.OTLP_SPANS]

    records = _read(kafka, states_topic, engine.published)
    states = [CloudEvent.from_record(r.headers, r.value).parse(embedding_pb2.StateEmbedding) for r in records]
    assert len(states) == engine.published
    epoch = scenario.spec.epoch_s
    warm = [s for s in states if s.spans]
    before = [
        s.anomaly_score
        for s in warm
        if s.window.end.seconds - epoch <= FAULT_AT_S and s.window.start.seconds - epoch >= 60
    ]
    during = [
        s
        for s in warm
        if s.window.start.seconds - epoch >= FAULT_AT_S and s.window.end.seconds - epoch <= FAULT_AT_S + 120
    ]
    assert before and during
    threshold = model.heads.threshold
    assert max(before) < threshold, before
    assert min(s.anomaly_score for s in during) > threshold, [s.anomaly_score for s in during]
    assert all(s.anomalous and s.evidence for s in during)
    assert any(s.root_cause_services and s.root_cause_services[0].service == "cartservice" for s in during)
    assert all(len(s.vector) == model.model.dim for s in states)
