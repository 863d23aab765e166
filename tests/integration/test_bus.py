"""The Kafka bus against a real broker: CloudEvents, dead letters, at-least-once, groups, shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from kafka import KafkaConsumer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.common.bus import Delivery, EventConsumer, PermanentError, Publisher, Route, TransientError
from services.common.cloudevents import CloudEvent
from services.common.pb.faultline.v1 import common_pb2, platform_pb2
from services.common.settings import KafkaSettings
from tests.integration.conftest import running, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _beat(n: int) -> platform_pb2.Heartbeat:
    beat = platform_pb2.Heartbeat(service=platform_pb2.ServiceInfo(name=f"svc-{n}", instance=str(n)))
    beat.attributes["n"] = str(n)
    return beat


def _read_all(kafka: KafkaSettings, topic: str, count: int) -> list:
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=15_000, **kafka.client_config())
    records = []
    for record in consumer:
        records.append(record)
        if len(records) == count:
            break
    consumer.close()
    return records


def test_cloudevent_round_trip_with_protobuf_body(kafka: KafkaSettings, new_topic) -> None:
    topic = new_topic()
    publisher = Publisher(kafka, source="test/round-trip")
    sent = publisher.publish(topic, _beat(1), key="svc-1", subject="svc-1", wait=True)
    received: list[Delivery] = []
    consumer = EventConsumer(kafka, "g-round-trip", [Route(topic, platform_pb2.Heartbeat, received.append)], publisher)
    with running(consumer):
        wait_until(lambda: len(received) == 1, what="the event")
    (delivery,) = received
    assert delivery.message == _beat(1)
    assert delivery.key == b"svc-1"
    assert delivery.event is not None
    assert (delivery.event.id, delivery.event.type, delivery.event.source, delivery.event.subject) == (
        sent.id,
        "faultline.v1.Heartbeat",
        "test/round-trip",
        "svc-1",
    )
    (raw,) = _read_all(kafka, topic, 1)
    assert dict(raw.headers)["content-type"] == b"application/protobuf"
    publisher.close()


def test_malformed_records_go_to_the_dlq_and_the_partition_moves_on(kafka: KafkaSettings, new_topic) -> None:
    topic = new_topic()
    publisher = Publisher(kafka, source="test/dlq")
    good = CloudEvent.from_message(_beat(1), "test/dlq")
    wrong_type = CloudEvent.from_message(common_pb2.TimeWindow(), "test/dlq")
    publisher.send(topic, good.data[:-2], good.headers())  # truncated protobuf
    publisher.send(topic, b"\x08\x01", [("content-type", b"application/protobuf")])  # no CloudEvents headers
    publisher.send(topic, wrong_type.data, wrong_type.headers())  # a TimeWindow where Heartbeats belong
    publisher.publish(topic, _beat(2), subject="rejected")  # handler says: never
    publisher.publish(topic, _beat(3), subject="good", wait=True)

    handled: list[str] = []

    def handle(delivery: Delivery) -> None:
        assert delivery.event is not None
        if delivery.event.subject == "rejected":
            raise PermanentError("svc-2 is not allowed here")
        handled.append(delivery.message.service.name)

    consumer = EventConsumer(kafka, "g-dlq", [Route(topic, platform_pb2.Heartbeat, handle)], publisher)
    with running(consumer):
        wait_until(lambda: handled == ["svc-3"], what="the good event after the bad ones")
    assert consumer.stats.dead_lettered == 4

    dead = _read_all(kafka, topic + ".dlq", 4)
    errors = [dict(r.headers)["faultline_dlq_error"].decode() for r in dead]
    assert "not a valid faultline.v1.Heartbeat" in errors[0]
    assert "missing CloudEvents header(s): ce_specversion, ce_id, ce_type, ce_source" in errors[1]
    assert "ce_type 'faultline.v1.TimeWindow'" in errors[2]
    assert errors[3] == "PermanentError: svc-2 is not allowed here"
    first = dict(dead[0].headers)
    assert first["faultline_dlq_topic"].decode() == topic
    assert first["faultline_dlq_offset"] == b"0"
    assert first["faultline_dlq_group"] == b"g-dlq"
    assert dead[0].value == good.data[:-2]  # the original bytes, untouched, for replay
    publisher.close()


def test_poison_campaign_every_kind_lands_in_the_dlq_and_the_consumer_stays_healthy(
    kafka: KafkaSettings, new_topic
) -> None:  # type: ignore[no-untyped-def]
    """The kinds of poison every Faultline consumer meets, on a CloudEvents topic and on a raw OTLP one
    (all services consume through this bus): each is dead-lettered with its reason, the good record after
    them is handled, and the DLQ keeps the original bytes."""
    events, raw = new_topic(), new_topic()
    publisher = Publisher(kafka, source="test/poison")
    good = CloudEvent.from_message(_beat(1), "test/poison")
    headers = dict(good.headers())

    def with_header(name: str, value: bytes) -> list[tuple[str, bytes]]:
        return list({**headers, name: value}.items())

    poisons = {
        "not a valid faultline.v1.Heartbeat": (good.data[: len(good.data) // 2], good.headers()),  # truncated
        "ce_type 'faultline.v1.TimeWindow'": (
            CloudEvent.from_message(common_pb2.TimeWindow(), "x").data,
            with_header("ce_type", b"faultline.v1.TimeWindow"),
        ),
        "header ce_id is not UTF-8": (good.data, with_header("ce_id", b"\xff\xfe\xfd")),
        "unsupported ce_specversion": (good.data, with_header("ce_specversion", b"0.3")),
        "ce_time is not RFC 3339": (good.data, with_header("ce_time", b"yesterday at noon")),
        "missing CloudEvents header(s)": (good.data, [("content-type", b"application/protobuf")]),
        "is not application/protobuf": (good.data, with_header("content-type", b"application/json")),
    }
    for value, record_headers in poisons.values():
        publisher.send(events, value, record_headers)
    publisher.send(events, b"\xff" * 900_000, good.headers())  # huge, and not protobuf
    publisher.publish(events, _beat(2), wait=True)
    for value in (b"\x0a\xff\xff not otlp", b"\xff" * 900_000, b"\x0a"):  # garbage, huge, truncated OTLP
        publisher.send(raw, value)
    publisher.send(raw, ExportTraceServiceRequest().SerializeToString(), wait=True)

    handled: list[str] = []
    routes = [
        Route(events, platform_pb2.Heartbeat, lambda d: handled.append(d.message.service.name)),
        Route(raw, ExportTraceServiceRequest, lambda d: handled.append("otlp"), cloudevents=False),
    ]
    consumer = EventConsumer(kafka, "g-poison", routes, publisher)
    with running(consumer):
        wait_until(lambda: sorted(handled) == ["otlp", "svc-2"], what="the good records after the poison")
    assert consumer.stats.dead_lettered == len(poisons) + 1 + 3
    errors = [dict(r.headers)["faultline_dlq_error"].decode() for r in _read_all(kafka, events + ".dlq", 8)]
    for reason in poisons:
        assert any(reason in e for e in errors), (reason, errors)
    raw_dead = _read_all(kafka, raw + ".dlq", 3)
    assert len(raw_dead) == 3, consumer.stats.errors
    assert {len(r.value) for r in raw_dead} >= {900_000}  # the original bytes, huge ones included
    publisher.close()


def test_transient_errors_are_retried_then_dead_lettered(kafka: KafkaSettings, new_topic) -> None:
    topic = new_topic()
    publisher = Publisher(kafka, source="test/retry")
    publisher.publish(topic, _beat(1), subject="flaky")
    publisher.publish(topic, _beat(2), subject="down", wait=True)
    attempts: Counter[str] = Counter()
    handled: list[str] = []

    def handle(delivery: Delivery) -> None:
        subject = delivery.event.subject if delivery.event else ""
        attempts[subject] += 1
        if subject == "down" or attempts[subject] < 3:
            raise TransientError(f"{subject}: dependency unavailable")
        handled.append(subject)

    settings = kafka.model_copy(update={"max_retries": 3})
    consumer = EventConsumer(settings, "g-retry", [Route(topic, platform_pb2.Heartbeat, handle)], publisher)
    with running(consumer):
        wait_until(lambda: consumer.stats.dead_lettered == 1, what="the dead letter")
    assert handled == ["flaky"]
    assert attempts == {"flaky": 3, "down": 4}  # 1 try + 3 retries, then the DLQ
    (dead,) = _read_all(kafka, topic + ".dlq", 1)
    assert dict(dead.headers)["faultline_dlq_attempts"] == b"4"
    publisher.close()


def test_crash_after_handling_before_commit_applies_the_effect_once(
    kafka: KafkaSettings, new_topic, tmp_path: Path
) -> None:
    topic = new_topic()
    publisher = Publisher(kafka, source="test/crash")
    ids = [publisher.publish(topic, _beat(n)).id for n in range(5)]
    publisher.flush()
    publisher.close()
    command = [
        sys.executable,
        "-m",
        "tests.integration.crash_consumer",
        f"--bootstrap={kafka.bootstrap_servers}",
        f"--topic={topic}",
        "--group=g-crash",
        f"--store={tmp_path / 'applied.db'}",
        f"--effects={tmp_path / 'effects.txt'}",
        "--expect=5",
    ]
    crashed = subprocess.run([*command, "--crash-before-commit"], cwd=ROOT, capture_output=True, timeout=120)
    assert crashed.returncode == 17, crashed.stderr.decode()[-2000:]
    assert sorted((tmp_path / "effects.txt").read_text().split()) == sorted(ids)  # applied, not committed

    restarted = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120, check=True)
    stats = json.loads(restarted.stdout.decode().strip().splitlines()[-1])
    assert stats == {"handled": 0, "duplicates": 5}  # Kafka redelivered all five ...
    assert Counter((tmp_path / "effects.txt").read_text().split()) == dict.fromkeys(ids, 1)  # ... effect once


def test_two_consumers_in_a_group_split_four_partitions(kafka: KafkaSettings, new_topic) -> None:
    topic = new_topic(partitions=4)
    publisher = Publisher(kafka, source="test/group")
    seen: Counter[str] = Counter()
    by_consumer: dict[str, set[int]] = {"a": set(), "b": set()}
    lock = threading.Lock()

    def handler(name: str):
        def handle(delivery: Delivery) -> None:
            with lock:
                seen[delivery.message.attributes["n"]] += 1
                by_consumer[name].add(delivery.partition)

        return handle

    consumers = {
        name: EventConsumer(kafka, "g-split", [Route(topic, platform_pb2.Heartbeat, handler(name))], publisher)
        for name in ("a", "b")
    }
    with running(consumers["a"]), running(consumers["b"]):
        wait_until(
            lambda: all(len(c._consumer.assignment()) == 2 for c in consumers.values()),
            what="both consumers to own two partitions",
        )
        for n in range(400):
            publisher.publish(topic, _beat(n), key=f"k{n}")
        publisher.flush()
        wait_until(lambda: len(seen) == 400, what="all 400 events")
    assert set(seen.values()) == {1}  # nothing handled twice
    assert by_consumer["a"] and by_consumer["b"]
    assert not by_consumer["a"] & by_consumer["b"]  # each partition had one owner
    assert by_consumer["a"] | by_consumer["b"] == {0, 1, 2, 3}
    publisher.close()


def test_graceful_shutdown_hands_over_without_loss_or_repeat(kafka: KafkaSettings, new_topic) -> None:
    topic = new_topic(partitions=2)
    publisher = Publisher(kafka, source="test/shutdown")
    for n in range(300):
        publisher.publish(topic, _beat(n), key=f"k{n}")
    publisher.flush()
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def handle(delivery: Delivery) -> None:
        with lock:
            seen[delivery.message.attributes["n"]] += 1

    # Small batches so that the stop lands in the middle of the stream.
    first = EventConsumer(
        kafka, "g-shutdown", [Route(topic, platform_pb2.Heartbeat, handle)], publisher, max_poll_records=10
    )
    with running(first):
        wait_until(lambda: len(seen) >= 50, what="the first consumer to make progress")
    handled_before = len(seen)
    assert handled_before < 300, "stopped too late to test the hand-over"

    second = EventConsumer(kafka, "g-shutdown", [Route(topic, platform_pb2.Heartbeat, handle)], publisher)
    with running(second):
        wait_until(lambda: len(seen) == 300, what="the second consumer to finish")
    assert set(seen.values()) == {1}  # everything handled exactly once across the hand-over
    assert second.stats.handled == 300 - handled_before
    publisher.close()


class _Saved:
    """A Checkpoint kept in memory: what a stateful consumer saves with its offsets."""

    def __init__(self, offsets: dict[tuple[str, int], int]) -> None:
        self.saved, self.saves = dict(offsets), 0

    def offsets(self) -> dict[tuple[str, int], int]:
        return dict(self.saved)

    def save(self, offsets: dict[tuple[str, int], int]) -> None:
        self.saved, self.saves = dict(offsets), self.saves + 1


def test_a_checkpoint_is_saved_at_every_commit_and_a_restart_resumes_where_it_ends(kafka: KafkaSettings, new_topic):  # type: ignore[no-untyped-def]
    topic = new_topic(2)
    publisher = Publisher(kafka, source="test/checkpoint")
    for n in range(10):
        publisher.publish(topic, _beat(n), key=f"k{n}", event_id=f"e{n}", wait=True)
    first: list[Delivery] = []
    saved = _Saved({})
    consumer = EventConsumer(kafka, "g-checkpoint", [Route(topic, platform_pb2.Heartbeat, first.append)], publisher,
                             checkpoint=saved)  # fmt: skip
    with running(consumer):
        wait_until(lambda: len(first) == 10 and sum(saved.saved.values()) == 10, what="all handled and saved")
    assert saved.saves >= 1
    # A new group (it would read everything) whose saved state covers partition 0 and half of partition 1.
    ones = sorted(d.offset for d in first if d.partition == 1)
    resume = {(topic, 0): 1 + max(d.offset for d in first if d.partition == 0), (topic, 1): ones[len(ones) // 2]}
    second: list[Delivery] = []
    consumer = EventConsumer(kafka, "g-checkpoint-2", [Route(topic, platform_pb2.Heartbeat, second.append)],
                             publisher, checkpoint=_Saved(resume))  # fmt: skip
    with running(consumer):
        wait_until(lambda: len(second) >= len(ones) - len(ones) // 2, what="the rest of partition 1")
        threading.Event().wait(1.0)  # room for a record it should not have read
    assert sorted((d.partition, d.offset) for d in second) == [(1, o) for o in ones[len(ones) // 2 :]]
