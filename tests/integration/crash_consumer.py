"""A consumer process for the crash test: applies each event's effect (a line in a file).

With ``--crash-before-commit`` it dies (os._exit, no cleanup) at the first offset commit,
that is after handling and recording the batch but before Kafka learns of it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

from services.common.bus import Delivery, EventConsumer, Publisher, Route
from services.common.idempotency import SqliteIdempotencyStore
from services.common.pb.faultline.v1 import platform_pb2
from services.common.settings import KafkaSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--effects", type=Path, required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--crash-before-commit", action="store_true")
    args = parser.parse_args()

    settings = KafkaSettings(bootstrap_servers=args.bootstrap, poll_timeout_ms=100)

    def apply(delivery: Delivery) -> None:
        assert delivery.event is not None
        with args.effects.open("a") as out:
            out.write(delivery.event.id + "\n")

    publisher = Publisher(settings, source="test/crash")
    consumer = EventConsumer(
        settings,
        args.group,
        [Route(args.topic, platform_pb2.Heartbeat, apply)],
        publisher,
        SqliteIdempotencyStore(args.store),
    )
    if args.crash_before_commit:
        commit = consumer._commit

        def crash_if_pending() -> None:
            if consumer._pending:
                os._exit(17)
            commit()

        consumer._commit = crash_if_pending  # type: ignore[method-assign]

    stop = threading.Event()
    while consumer.stats.handled + consumer.stats.duplicates < args.expect:
        consumer.poll_once(stop)
    consumer.close()
    publisher.close()
    print(json.dumps({"handled": consumer.stats.handled, "duplicates": consumer.stats.duplicates}))


if __name__ == "__main__":
    main()
