"""Telemetry pipeline under stepped load: simulator OTLP into Kafka at rising span rates, the embedding
service (RuntimeSlicer, in this process) consuming it; per step the rate offered, the rate consumed and the
consumer lag left at the step's end. The knee is the last rate the pipeline kept up with.

Loopback only: a private broker in a temporary directory, topics of its own.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from deploy.kafka.broker import KafkaBroker
from loadtests.load import knee
from loadtests.simulator.dataset import otlp_records
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common import otlp, topics
from services.common.admin import ensure_topics
from services.common.bus import EventConsumer, Publisher
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec
from services.embedding.checkpoint import RuntimeSlicerModel
from services.embedding.service import EmbeddingEngine

RATES = [int(x) for x in os.environ.get("FAULTLINE_LOAD_SPAN_RATES", "2000,5000,10000,20000,40000").split(",")]
STEP_S = float(os.environ.get("FAULTLINE_LOAD_STEP_S", "10"))
COMMAND = "make loadtest LOAD=pipeline  (or: faultline loadtest pipeline)"


def _records(seconds: float) -> list[tuple[str, bytes, int, int]]:
    """(topic, value, timestamp ms, spans) of a healthy Online Boutique stretch, generated once and replayed."""
    scenario = Scenario(ScenarioSpec(duration_s=seconds, seed=3))
    out = []
    for chunk in scenario.chunks(5.0):
        for topic, value, time_ms in otlp_records(scenario, chunk):
            spans = len(list(otlp.iter_spans(otlp.decode_spans(value)))) if topic == topics.OTLP_SPANS else 0
            out.append((topic, value, time_ms, spans))
    return out


def run() -> dict:
    records = _records(600.0)
    total_spans = sum(r[3] for r in records)
    print(f"  replaying {len(records)} OTLP records ({total_spans} spans) at stepped span rates", flush=True)
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker.ephemeral(Path(tmp)) as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, poll_timeout_ms=100)
        names = {t: f"load.{t}" for t in (topics.OTLP_SPANS, topics.OTLP_METRICS, topics.OTLP_LOGS)}
        ensure_topics(kafka, [TopicSpec(n, 4, 3_600_000) for n in names.values()])
        engine = EmbeddingEngine(RuntimeSlicerModel.load())
        publisher = Publisher(kafka, source="faultline/loadtest", linger_ms=20)
        consumer = EventConsumer(kafka, "load-embedding", engine.routes(names), publisher)
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
        thread.start()
        rows, cursor, produced = [], 0, 0
        try:
            for rate in RATES:
                began, sent_spans, handled_before = time.monotonic(), 0, consumer.stats.handled
                while time.monotonic() - began < STEP_S:
                    topic, value, time_ms, spans = records[cursor % len(records)]
                    cursor += 1
                    # Event time keeps moving forward on every lap, so windows keep closing.
                    lap_ms = (cursor // len(records)) * 600_000
                    publisher.send(names[topic], value, timestamp_ms=time_ms + lap_ms)
                    produced += 1
                    sent_spans += spans
                    ahead = sent_spans / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
                publisher.flush()
                elapsed = time.monotonic() - began
                handled = consumer.stats.handled - handled_before
                lag = produced - consumer.stats.handled
                spans_per_record = total_spans / len(records)
                row = {
                    "offered_spans_per_s": sent_spans / elapsed,
                    "consumed_spans_per_s": handled * spans_per_record / elapsed,
                    "lag_records": lag,
                    "windows_published": engine.published,
                }
                rows.append(row)
                print(
                    f"  offered {row['offered_spans_per_s']:8.0f} spans/s | consumed {row['consumed_spans_per_s']:8.0f}"
                    f" spans/s | lag {lag:5d} records | {engine.published} windows so far",
                    flush=True,
                )
        finally:
            stop.set()
            thread.join(timeout=30)
            publisher.close()
    kept_up = [r["offered_spans_per_s"] for r in rows if r["consumed_spans_per_s"] >= 0.9 * r["offered_spans_per_s"]]
    level_knee = knee([r["offered_spans_per_s"] for r in rows], [r["consumed_spans_per_s"] for r in rows])
    print(f"  knee: {level_knee:.0f} spans/s offered (highest rate kept up with: {max(kept_up, default=0):.0f})")
    print(f"  command: {COMMAND}")
    return {"command": COMMAND, "steps": rows, "knee_spans_per_s": level_knee, "step_s": STEP_S}
