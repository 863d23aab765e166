"""Reliability: the Kafka broker restarts in the middle of a stream. Counting events in and effects out:
nothing is lost and nothing takes effect twice (redeliveries meet the idempotency store)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from deploy.kafka.broker import KafkaBroker
from services.common.admin import ensure_topics
from services.common.bus import Delivery, EventConsumer, Publisher, Route
from services.common.idempotency import SqliteIdempotencyStore
from services.common.pb.faultline.v1 import platform_pb2
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec
from tests.integration.conftest import wait_until

EVENTS = 300


def test_a_broker_restart_mid_stream_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    broker = KafkaBroker.ephemeral(tmp_path / "kafka")
    broker.start()
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, poll_timeout_ms=100)
        ensure_topics(kafka, [TopicSpec("restart", 2, 3_600_000), TopicSpec("restart.dlq", 1, 3_600_000)])
        effects: list[str] = []
        lock = threading.Lock()

        def handle(delivery: Delivery) -> None:
            with lock:
                effects.append(delivery.message.service.instance)

        publisher = Publisher(kafka, source="test/restart")
        store = SqliteIdempotencyStore(tmp_path / "seen.sqlite")
        consumer = EventConsumer(kafka, "restart", [Route("restart", platform_pb2.Heartbeat, handle)], publisher, store)
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
        thread.start()

        def send(i: int) -> None:
            beat = platform_pb2.Heartbeat(service=platform_pb2.ServiceInfo(name="svc", instance=f"e{i}"))
            for _attempt in range(60):  # the broker may be down: a producer keeps the event and tries again
                try:
                    publisher.publish("restart", beat, key=f"k{i % 7}", event_id=f"e{i}", wait=True)
                    return
                except Exception:  # any send failure while the broker is away
                    time.sleep(0.5)
            raise AssertionError(f"event e{i} could not be sent within 30 s")

        for i in range(EVENTS // 2):
            send(i)
        wait_until(lambda: len(effects) >= EVENTS // 4, 60, "some events handled before the restart")
        broker.stop()  # mid-stream: part of the first half is still unhandled or uncommitted
        broker.start()
        for i in range(EVENTS // 2, EVENTS):
            send(i)
        wait_until(lambda: len(set(effects)) == EVENTS, 120, "every event handled after the restart")
        time.sleep(2)  # room for a late duplicate to show up
        stop.set()
        thread.join(timeout=30)
        publisher.close()
        assert sorted(effects, key=lambda e: int(e[1:])) == [f"e{i}" for i in range(EVENTS)]  # once each
        assert consumer.stats.dead_lettered == 0
    finally:
        broker.stop()
