"""Bus throughput: 1 KB protobuf CloudEvents through the local broker, against plain kafka-python.

The baseline produces and consumes the same bytes with bare ``KafkaProducer``/``KafkaConsumer``
(no CloudEvents headers, no decoding, no idempotency check, no commits per batch); the ratio
is what the bus's guarantees cost.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from deploy.kafka.broker import KafkaBroker
from services.common.admin import ensure_topics
from services.common.bus import Delivery, EventConsumer, Publisher, Route
from services.common.cloudevents import CloudEvent
from services.common.pb.faultline.v1 import platform_pb2
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec

COUNT = int(os.environ.get("FAULTLINE_BENCH_BUS_COUNT", "20000"))
REPEATS = int(os.environ.get("FAULTLINE_BENCH_REPEATS", "3"))
COMMAND = "make bench BENCH=bus  (or: faultline bench bus)"


def event_of_1kb() -> platform_pb2.Heartbeat:
    beat = platform_pb2.Heartbeat(service=platform_pb2.ServiceInfo(name="bench", version="1", instance="b-0"))
    beat.attributes["payload"] = "x" * 920
    beat.time.GetCurrentTime()
    return beat


def _topic(settings: KafkaSettings) -> str:
    name = f"bench.bus.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(name, 4, 3_600_000), TopicSpec(name + ".dlq", 1, 3_600_000)])
    return name


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bus_round(settings: KafkaSettings) -> tuple[float, float]:
    topic = _topic(settings)
    message = event_of_1kb()
    publisher = Publisher(settings, source="bench/bus")
    start = time.perf_counter()
    for n in range(COUNT):
        publisher.publish(topic, message, key=str(n % 64))
    publisher.flush()
    produced = _rate(COUNT, time.perf_counter() - start)

    seen = 0

    def handle(_delivery: Delivery) -> None:
        nonlocal seen
        seen += 1

    consumer = EventConsumer(settings, f"bench-{topic}", [Route(topic, platform_pb2.Heartbeat, handle)], publisher)
    stop = threading.Event()
    start = time.perf_counter()
    while seen < COUNT:
        consumer.poll_once(stop)
    consumed = _rate(COUNT, time.perf_counter() - start)
    consumer.close()
    publisher.close()
    return produced, consumed


def raw_round(settings: KafkaSettings) -> tuple[float, float]:
    topic = _topic(settings)
    event = CloudEvent.from_message(event_of_1kb(), "bench/raw")
    producer = KafkaProducer(acks="all", linger_ms=5, batch_size=262_144, **settings.client_config())
    start = time.perf_counter()
    for n in range(COUNT):
        producer.send(topic, value=event.data, key=str(n % 64).encode())
    producer.flush()
    produced = _rate(COUNT, time.perf_counter() - start)

    consumer = KafkaConsumer(
        topic,
        group_id=f"bench-{topic}",
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        **settings.client_config(),
    )
    seen = 0
    start = time.perf_counter()
    while seen < COUNT:
        for records in consumer.poll(timeout_ms=200).values():
            seen += len(records)
    consumed = _rate(COUNT, time.perf_counter() - start)
    consumer.close()
    producer.close()
    return produced, consumed


def run() -> dict:
    size = len(CloudEvent.from_message(event_of_1kb(), "bench/bus").data)
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker.ephemeral(Path(tmp)) as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        rounds: dict[str, list[tuple[float, float]]] = {"bus": [], "raw": []}
        for i in range(REPEATS):  # interleaved so that drift in machine load hits both alike
            for name, fn in (("raw", raw_round), ("bus", bus_round)):
                rounds[name].append(fn(settings))
                p, c = rounds[name][-1]
                print(
                    f"  round {i + 1}/{REPEATS} {name:>3}: produce {p:8.0f} msg/s, consume {c:8.0f} msg/s", flush=True
                )
    med = {name: (statistics.median(p for p, _ in r), statistics.median(c for _, c in r)) for name, r in rounds.items()}
    result = {
        "command": COMMAND,
        "messages_per_round": COUNT,
        "body_bytes": size,
        "rounds": REPEATS,
        "bus_produce_msgs_per_s": med["bus"][0],
        "bus_consume_msgs_per_s": med["bus"][1],
        "raw_produce_msgs_per_s": med["raw"][0],
        "raw_consume_msgs_per_s": med["raw"][1],
        "produce_ratio_bus_vs_raw": med["bus"][0] / med["raw"][0],
        "consume_ratio_bus_vs_raw": med["bus"][1] / med["raw"][1],
    }
    print(f"  body {size} B, {COUNT} messages x {REPEATS} rounds, medians:")
    print(
        f"  produce: bus {med['bus'][0]:.0f} msg/s vs raw kafka-python {med['raw'][0]:.0f} msg/s "
        f"(ratio {result['produce_ratio_bus_vs_raw']:.2f})"
    )
    print(
        f"  consume: bus {med['bus'][1]:.0f} msg/s vs raw kafka-python {med['raw'][1]:.0f} msg/s "
        f"(ratio {result['consume_ratio_bus_vs_raw']:.2f})"
    )
    print(f"  command: {COMMAND}")
    return result
