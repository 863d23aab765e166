"""Telemetry pipeline under stepped load: simulator OTLP into Kafka at rising span rates, the embedding
service (RuntimeSlicer, in this process) consuming it; per step the rate offered, the rate consumed, the
consumer lag left at the step's end and the windows embedded. The knee is the last rate kept up with.

Event time runs at wall-clock speed, as in production: a higher rate is a busier system (the simulator's
``rate_scale``), not the same system replayed faster. Replaying faster would close windows faster too,
and then the figure measures window embedding (MiniLM, ~1 s a window), not span ingest — which is what
the first version of this test did (its knee of ~8,000 spans/s was 20x real time on a 400 spans/s system).

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
from loadtests.simulator.scenario import DEFAULT_EPOCH_S, Scenario, ScenarioSpec
from services.common import otlp, topics
from services.common.admin import ensure_topics
from services.common.bus import EventConsumer, Publisher
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec
from services.embedding.checkpoint import RuntimeSlicerModel
from services.embedding.service import EMBED_SECONDS, EmbeddingEngine

RATES = [int(x) for x in os.environ.get("FAULTLINE_LOAD_SPAN_RATES", "10000,25000,50000,100000").split(",")]
STEP_S = int(os.environ.get("FAULTLINE_LOAD_STEP_S", "15"))
COMMAND = "make loadtest LOAD=pipeline  (or: faultline loadtest pipeline)"
Record = tuple[str, bytes, int, int]  # topic, value, event time ms, spans


def _spans(topic: str, value: bytes) -> int:
    return len(list(otlp.iter_spans(otlp.decode_spans(value)))) if topic == topics.OTLP_SPANS else 0


def _step_records(rate: int, epoch_s: int, base_rate: float) -> list[Record]:
    """STEP_S seconds of a system busy enough to emit ``rate`` spans/s, its clock starting at ``epoch_s``."""
    scenario = Scenario(ScenarioSpec(duration_s=STEP_S, seed=3, epoch_s=epoch_s, rate_scale=rate / base_rate))
    return [
        (topic, value, epoch_s * 1000 + int(chunk.t0 * 1000), _spans(topic, value))
        for chunk in scenario.chunks(1.0)
        for topic, value, _ in otlp_records(scenario, chunk)
    ]


def _base_rate() -> float:
    """Spans per second of the simulated system at rate_scale 1."""
    scenario = Scenario(ScenarioSpec(duration_s=30, seed=3))
    return sum(_spans(t, v) for chunk in scenario.chunks(5.0) for t, v, _ in otlp_records(scenario, chunk)) / 30


def run() -> dict:
    base_rate = _base_rate()
    steps, epoch = [], DEFAULT_EPOCH_S
    began = time.monotonic()
    for rate in RATES:
        steps.append(_step_records(rate, epoch, base_rate))
        epoch += STEP_S
    print(
        f"  generated {sum(len(s) for s in steps)} OTLP records ({sum(r[3] for s in steps for r in s)} spans) "
        f"in {time.monotonic() - began:.0f} s; base system {base_rate:.0f} spans/s, steps of {STEP_S} s",
        flush=True,
    )
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
        rows, produced = [], 0
        try:
            for rate, records in zip(RATES, steps, strict=True):
                spans_before, handled_before = engine.slicer.spans, consumer.stats.handled
                embed_before, windows_before = EMBED_SECONDS._sum.get(), engine.published
                start, first_ms = time.monotonic(), records[0][2]
                sent_spans = 0
                for topic, value, event_ms, spans in records:
                    ahead = (event_ms - first_ms) / 1000 - (time.monotonic() - start)  # the event clock at 1x
                    if ahead > 0:
                        time.sleep(ahead)
                    publisher.send(names[topic], value, timestamp_ms=event_ms)
                    produced += 1
                    sent_spans += spans
                publisher.flush()
                time.sleep(max(0.0, STEP_S - (time.monotonic() - start)))
                elapsed = time.monotonic() - start
                row = {
                    "target_spans_per_s": rate,
                    "offered_spans_per_s": sent_spans / elapsed,
                    "consumed_spans_per_s": (engine.slicer.spans - spans_before) / elapsed,
                    "consumed_records_per_s": (consumer.stats.handled - handled_before) / elapsed,
                    "lag_records": produced - consumer.stats.handled,
                    "windows_embedded": engine.published - windows_before,
                    "embedding_busy_share": (EMBED_SECONDS._sum.get() - embed_before) / elapsed,
                }
                rows.append(row)
                print(
                    f"  offered {row['offered_spans_per_s']:8.0f} spans/s | consumed {row['consumed_spans_per_s']:8.0f}"
                    f" spans/s | lag {row['lag_records']:5d} records | {row['windows_embedded']} windows embedded"
                    f" ({row['embedding_busy_share']:.0%} of the step)",
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
    return {
        "command": COMMAND,
        "steps": rows,
        "knee_spans_per_s": level_knee,
        "highest_rate_kept_up_spans_per_s": max(kept_up, default=0),
        "step_s": STEP_S,
        "event_clock": "1x wall clock; rate by the simulator's rate_scale",
    }
