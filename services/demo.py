"""``faultline demo`` (what ``make run`` ends with): the platform brought up and shown working.

It grows with the platform: today it checks the broker and the topic catalogue, starts every
service that exists, waits for each to report SERVING, and sends an event through the bus.
"""

from __future__ import annotations

import threading
import time

from kafka.admin import KafkaAdminClient

from services.common.bus import Delivery, EventConsumer, Publisher, Route
from services.common.pb.faultline.v1 import platform_pb2
from services.common.settings import ServiceSettings, load_settings
from services.common.topics import HEARTBEATS, with_dead_letters


def _step(text: str) -> None:
    print(f"\n▶ {text}", flush=True)


def check_topics(settings: ServiceSettings) -> None:
    _step(f"Kafka at {settings.kafka.bootstrap_servers}: topic catalogue")
    admin = KafkaAdminClient(**settings.kafka.client_config())
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
    finally:
        admin.close()
    for spec in with_dead_letters():
        state = f"{described[spec.name]} partition(s)" if spec.name in described else "MISSING"
        print(f"  {spec.name:<34} {state}")
    missing = [s.name for s in with_dead_letters() if s.name not in described]
    if missing:
        raise SystemExit(f"missing topics: {missing} (run: faultline topics)")


def check_bus(settings: ServiceSettings) -> None:
    _step("bus round trip: a Heartbeat CloudEvent out and back")
    publisher = Publisher(settings.kafka, source="faultline/demo")
    received: list[Delivery] = []
    consumer = EventConsumer(
        settings.kafka.model_copy(update={"auto_offset_reset": "latest"}),
        f"demo-{time.time_ns()}",
        [Route(HEARTBEATS, platform_pb2.Heartbeat, received.append)],
        publisher,
    )
    stop = threading.Event()
    deadline = time.monotonic() + 30
    while not consumer._consumer.assignment() and time.monotonic() < deadline:
        consumer.poll_once(stop)
    beat = platform_pb2.Heartbeat(service=platform_pb2.ServiceInfo(name="demo"))
    beat.time.GetCurrentTime()
    sent_at = time.perf_counter()
    event = publisher.publish(HEARTBEATS, beat, key="demo", wait=True)
    while not any(d.event and d.event.id == event.id for d in received) and time.monotonic() < deadline:
        consumer.poll_once(stop)
    elapsed = (time.perf_counter() - sent_at) * 1000
    consumer.close()
    publisher.close()
    if not any(d.event and d.event.id == event.id for d in received):
        raise SystemExit("the event did not come back within 30 s")
    print(f"  event {event.id} ({event.type}) came back in {elapsed:.0f} ms")


def main() -> int:
    settings = load_settings(ServiceSettings)
    started = time.monotonic()
    check_topics(settings)
    check_bus(settings)
    _step(f"summary: Kafka and the bus are healthy ({time.monotonic() - started:.1f} s)")
    print("  services: none deployed yet; each service's issue adds itself to this demo")
    return 0
