"""The Kafka bus every service uses: CloudEvents with protobuf bodies, at-least-once, dead letters.

Consumption rules (ARCHITECTURE.md):
- the offset is committed only after the handler succeeded (or the record was dead-lettered) and what
  it published was acknowledged by the broker (the publisher is flushed first);
- handling is idempotent by event id (see :mod:`services.common.idempotency`);
- a record that cannot be decoded, or whose handler fails permanently, goes to
  ``<topic>.dlq`` with the error and its origin in headers, and the partition moves on;
- :class:`TransientError` is retried with exponential backoff before it is dead-lettered;
- on shutdown the record in hand is finished, what was handled is committed, and the rest of
  the fetched batch is left uncommitted for whichever replica gets the partition next;
- a consumer whose handlers keep state across records (windows being built) gives a
  :class:`Checkpoint`: the state is saved with the offsets it covers before every commit, and a
  restarted consumer passes over the records the saved state already holds, so a crash loses
  none of it and counts nothing twice.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from google.protobuf.message import Message
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, IllegalGenerationError, RebalanceInProgressError, UnknownMemberIdError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Histogram

from services.common.cloudevents import CloudEvent, EventDecodeError, parse_protobuf
from services.common.idempotency import IdempotencyStore, MemoryIdempotencyStore
from services.common.settings import KafkaSettings
from services.common.topics import dlq

log = logging.getLogger(__name__)

MESSAGES = Counter("faultline_bus_messages_total", "Records consumed, by outcome", ["topic", "outcome"])
HANDLE_SECONDS = Histogram("faultline_bus_handle_seconds", "Handler time per record", ["topic"])
PUBLISHED = Counter("faultline_bus_published_total", "Records published", ["topic"])


class TransientError(Exception):
    """The handler may succeed later (a dependency is down): retry with backoff."""


class PermanentError(Exception):
    """The handler can never succeed for this record: dead-letter it and move on."""


@dataclass(frozen=True)
class Delivery:
    """One consumed record, decoded: what a handler receives."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    message: Message
    event: CloudEvent | None  # None on topics that carry bare protobuf (OTLP)

    @property
    def dedupe_key(self) -> str:
        if self.event is not None:
            return f"{self.topic}|{self.event.source}|{self.event.id}"
        return f"{self.topic}|{self.partition}|{self.offset}"


Handler = Callable[[Delivery], None]


class Checkpoint(Protocol):
    """State built from the records before some offsets, saved and found again with those offsets."""

    def offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the next offset to read: where the saved state ends (empty: nothing saved)."""
        ...

    def save(self, offsets: dict[tuple[str, int], int]) -> None:
        """Saves the state of everything handled so far, which ends at ``offsets`` (atomically)."""
        ...


@dataclass(frozen=True)
class Route:
    topic: str
    message_type: type[Message]
    handler: Handler
    cloudevents: bool = True  # False for telemetry written by the OpenTelemetry Collector
    # Told the topic's partitions this consumer holds whenever they change (before their records are handled).
    on_assign: Callable[[list[int]], None] | None = None


class Publisher:
    """Produces CloudEvents (and raw records) with acks=all and an idempotent producer."""

    def __init__(self, settings: KafkaSettings, source: str, **producer_config: object) -> None:
        self.source = source
        config: dict[str, object] = {"acks": "all", "linger_ms": 5, "batch_size": 262_144, **settings.client_config()}
        config.update(producer_config)
        self._producer = KafkaProducer(**config)

    def publish(
        self,
        topic: str,
        message: Message,
        *,
        key: bytes | str | None = None,
        subject: str | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> CloudEvent:
        attributes: dict[str, object] = {"subject": subject}
        if event_id is not None:
            attributes["id"] = event_id
        event = CloudEvent.from_message(message, self.source, **attributes)
        self.send(topic, event.data, event.headers(), key=key, wait=wait)
        return event

    def send(
        self,
        topic: str,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
        *,
        key: bytes | str | None = None,
        timestamp_ms: int | None = None,
        wait: bool = False,
    ) -> None:
        """A raw record (telemetry, dead letters); ``timestamp_ms`` defaults to now."""
        if isinstance(key, str):
            key = key.encode()
        future = self._producer.send(topic, value=value, key=key, headers=list(headers), timestamp_ms=timestamp_ms)
        PUBLISHED.labels(topic).inc()
        if wait:
            future.get(timeout=30)

    def flush(self, timeout: float | None = 30) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close()


@dataclass
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)


class EventConsumer:
    """At-least-once consumer of one group over a set of routes (one route per topic)."""

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        routes: Sequence[Route],
        publisher: Publisher,
        idempotency: IdempotencyStore | None = None,
        checkpoint: Checkpoint | None = None,
        **consumer_config: object,
    ) -> None:
        self._settings = settings
        self._group_id = group_id
        self._routes = {r.topic: r for r in routes}
        self._publisher = publisher
        self._idempotency = idempotency if idempotency is not None else MemoryIdempotencyStore()
        self._pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self._checkpoint = checkpoint
        # Where the saved state ends: records before it are in the state already. (No seek on assignment: a
        # rebalance listener runs inside kafka-python's event loop, and 3.0's has left partitions stuck.)
        self._saved: dict[tuple[str, int], int] = dict(checkpoint.offsets()) if checkpoint else {}
        self._positions: dict[tuple[str, int], int] = dict(self._saved)
        self._assigned: set[TopicPartition] = set()
        self.stats = ConsumerStats()
        config: dict[str, object] = {
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": settings.auto_offset_reset,
            "max_poll_records": settings.max_poll_records,
            **settings.client_config(),
        }
        config.update(consumer_config)
        self._consumer = KafkaConsumer(**config)
        # Fetch each topic's metadata before joining: a group leader that joins without it
        # assigns no partitions for that topic until its next metadata refresh (minutes).
        for topic in self._routes:
            self._consumer.partitions_for_topic(topic)
        self._consumer.subscribe(list(self._routes))

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then commit what was handled and leave the group."""
        try:
            while not stop.is_set():
                self.poll_once(stop)
        finally:
            self.close()

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Handle one fetched batch and commit it; returns the number of records taken care of."""
        batch = self._consumer.poll(timeout_ms=self._settings.poll_timeout_ms)
        self._announce_assignment()
        done = 0
        for records in batch.values():
            for record in records:
                if stop is not None and stop.is_set():
                    self._commit()  # hand the rest of the batch back uncommitted
                    return done
                if not self._process(record, stop):
                    self._commit()
                    return done
                done += 1
        self._commit()
        return done

    def close(self) -> None:
        try:
            self._commit()
        finally:
            self._consumer.close(autocommit=False)

    # -- internals -------------------------------------------------------------------------

    def _process(self, record: ConsumerRecord, stop: threading.Event | None) -> bool:
        """Handle or dead-letter one record; False when interrupted by shutdown mid-retry."""
        route = self._routes[record.topic]
        if record.offset < self._saved.get((record.topic, record.partition), -1):
            self._mark(record)  # the checkpoint's state holds it already
            return True
        try:
            delivery = self._decode(route, record)
        except EventDecodeError as error:
            self._dead_letter(record, error)
            return True
        if self._idempotency.seen(delivery.dedupe_key):
            self.stats.duplicates += 1
            MESSAGES.labels(record.topic, "duplicate").inc()
            self._mark(record)
            return True
        attempt = 0
        while True:
            try:
                with HANDLE_SECONDS.labels(record.topic).time():
                    route.handler(delivery)
            except TransientError as error:
                if attempt >= self._settings.max_retries:
                    self._dead_letter(record, error, attempts=attempt + 1)
                    return True
                attempt += 1
                self.stats.retries += 1
                MESSAGES.labels(record.topic, "retried").inc()
                if not self._sleep(self._backoff(attempt), stop):
                    return False
                continue
            except Exception as error:  # a bug or bad data: never block the partition on it
                self._dead_letter(record, error, attempts=attempt + 1)
                return True
            break
        self._idempotency.remember(delivery.dedupe_key)
        self.stats.handled += 1
        MESSAGES.labels(record.topic, "handled").inc()
        self._mark(record)
        return True

    @staticmethod
    def _decode(route: Route, record: ConsumerRecord) -> Delivery:
        if route.cloudevents:
            event: CloudEvent | None = CloudEvent.from_record(record.headers, record.value)
            message = event.parse(route.message_type)
        else:
            if record.value is None:
                raise EventDecodeError("record has no value")
            event = None
            message = parse_protobuf(route.message_type, record.value)
        return Delivery(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            timestamp_ms=record.timestamp,
            message=message,
            event=event,
        )

    def _backoff(self, attempt: int) -> float:
        base = self._settings.retry_backoff_ms * 2 ** (attempt - 1)
        capped = min(base, self._settings.retry_backoff_max_ms)
        return capped * random.uniform(0.5, 1.0) / 1000  # jitter spreads retries of many replicas

    @staticmethod
    def _sleep(seconds: float, stop: threading.Event | None) -> bool:
        if stop is None:
            time.sleep(seconds)
            return True
        return not stop.wait(seconds)

    def _dead_letter(self, record: ConsumerRecord, error: BaseException, attempts: int = 0) -> None:
        reason = f"{type(error).__name__}: {error}"
        headers = [(k, v) for k, v in (record.headers or []) if not k.startswith("faultline_dlq_")]
        headers += [
            ("faultline_dlq_error", reason.encode("utf-8", "replace")),
            ("faultline_dlq_topic", record.topic.encode()),
            ("faultline_dlq_partition", str(record.partition).encode()),
            ("faultline_dlq_offset", str(record.offset).encode()),
            ("faultline_dlq_group", self._group_id.encode()),
            ("faultline_dlq_attempts", str(attempts).encode()),
            ("faultline_dlq_time", datetime.now(UTC).isoformat().encode()),
        ]
        # Written synchronously: the offset below may only move once the record is safe.
        self._publisher.send(dlq(record.topic), record.value or b"", headers, key=record.key, wait=True)
        self.stats.dead_lettered += 1
        self.stats.errors.append(reason)
        MESSAGES.labels(record.topic, "dead_lettered").inc()
        log.warning(
            "dead-lettered record",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset, "error": reason},
        )
        self._mark(record)

    def _mark(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._pending[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        key = (record.topic, record.partition)
        self._positions[key] = max(self._positions.get(key, 0), record.offset + 1)

    def _announce_assignment(self) -> None:
        """Routes that asked hear of the partitions held whenever they change, before their records."""
        if not any(r.on_assign for r in self._routes.values()):
            return
        assigned = set(self._consumer.assignment())
        if assigned == self._assigned:
            return
        self._assigned = assigned
        for route in self._routes.values():
            if route.on_assign is not None:
                route.on_assign(sorted(tp.partition for tp in assigned if tp.topic == route.topic))

    def _commit(self) -> None:
        if not self._pending:
            return
        # What the handlers published must be on the broker before the offsets move past the records that
        # caused it: a crash after the commit but before the producer's batch went out would lose the
        # effect for good (the records are never redelivered). Like the commit, it waits out a broker outage.
        self._publisher.flush(timeout=None)
        if self._checkpoint is not None:  # the state first: a crash before the commit then replays nothing
            self._checkpoint.save(dict(self._positions))
        offsets, self._pending = self._pending, {}
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError):
            # The group is rebalancing (a replica joined or left) or already did: the partition's owner
            # after it redelivers from the last commit, and the idempotency store turns the repeat into a
            # no-op. Not a reason to stop the service (kafka-python 3 raises these, not CommitFailedError).
            log.warning("offset commit failed after a rebalance", extra={"offsets": str(offsets)})
