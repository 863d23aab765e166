"""A private, real Kafka broker for the integration tests (free ports, a temporary directory)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from deploy.kafka.broker import KafkaBroker
from services.common.admin import ensure_topics
from services.common.bus import EventConsumer
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    # FAULTLINE_TEST_KAFKA points the suite at an already running broker (make kafka-up).
    external = os.environ.get("FAULTLINE_TEST_KAFKA")
    if external:
        yield KafkaSettings(bootstrap_servers=external, poll_timeout_ms=100, retry_backoff_ms=10)
        return
    with KafkaBroker.ephemeral(tmp_path_factory.mktemp("kafka")) as broker:
        yield KafkaSettings(bootstrap_servers=broker.bootstrap, poll_timeout_ms=100, retry_backoff_ms=10)


@pytest.fixture
def new_topic(kafka: KafkaSettings) -> Callable[..., str]:
    """Creates a uniquely named topic (and its DLQ) for one test."""

    def create(partitions: int = 1) -> str:
        name = f"test.{uuid.uuid4().hex[:10]}"
        ensure_topics(kafka, [TopicSpec(name, partitions, 3_600_000), TopicSpec(name + ".dlq", 1, 3_600_000)])
        return name

    return create


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def running(consumer: EventConsumer) -> Iterator[threading.Event]:
    """Runs ``consumer`` in a thread; leaving the block stops it gracefully and waits."""
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "consumer did not stop"
