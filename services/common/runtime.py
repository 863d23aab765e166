"""One process = one service: settings, logs, metrics, the gRPC server, Kafka consumers, heartbeats, signals.

A service builds a :class:`ServiceRuntime`, adds its gRPC services and consumer routes, and
calls :meth:`ServiceRuntime.run`. Shutdown (SIGTERM/SIGINT) reports NOT_SERVING, stops taking
records, commits what was handled, and lets in-flight RPCs finish.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import start_http_server

from services.common.bus import Checkpoint, EventConsumer, Publisher, Route
from services.common.grpc_server import GrpcServer, GrpcService
from services.common.idempotency import IdempotencyStore, MemoryIdempotencyStore, SqliteIdempotencyStore
from services.common.logging import configure_logging
from services.common.pb.faultline.v1 import platform_pb2, platform_pb2_grpc
from services.common.settings import ServiceSettings
from services.common.topics import HEARTBEATS

log = logging.getLogger(__name__)
VERSION = "0.1.0"
PLATFORM_SERVICE = platform_pb2.DESCRIPTOR.services_by_name["PlatformService"].full_name


class _PlatformServicer(platform_pb2_grpc.PlatformServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    def GetServiceInfo(self, request, context):  # type: ignore[no-untyped-def]
        return self._runtime.info()


class ServiceRuntime:
    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.settings = settings
        self.stop_event = threading.Event()
        self._grpc_services: list[GrpcService] = [
            GrpcService(
                PLATFORM_SERVICE,
                lambda server: platform_pb2_grpc.add_PlatformServiceServicer_to_server(_PlatformServicer(self), server),
            )
        ]
        self._consumers: list[tuple[str, list[Route], IdempotencyStore, Checkpoint | None]] = []
        self._threads: list[threading.Thread] = []
        self._heartbeat_s = settings.heartbeat_s
        self._lifecycle: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self._started_at = Timestamp()
        self._publisher: Publisher | None = None
        self.grpc: GrpcServer | None = None

    # -- assembly ----------------------------------------------------------------------------

    def add_grpc_service(self, service: GrpcService) -> None:
        self._grpc_services.append(service)

    def add_consumer(
        self,
        group_id: str,
        routes: Sequence[Route],
        idempotency_path: Path | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        store: IdempotencyStore = (
            SqliteIdempotencyStore(idempotency_path) if idempotency_path else MemoryIdempotencyStore()
        )
        self._consumers.append((group_id, list(routes), store, checkpoint))

    def add_lifecycle(self, start: Callable[[], None], stop: Callable[[], None]) -> None:
        """Something of the service's own (an engine, an HTTP server): started after gRPC, stopped before it."""
        self._lifecycle.append((start, stop))

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.settings.kafka, source=f"faultline/{self.name}/{self.settings.instance}")
        return self._publisher

    def info(self) -> platform_pb2.ServiceInfo:
        consumes = sorted({r.topic for _, routes, _, _ in self._consumers for r in routes})
        return platform_pb2.ServiceInfo(
            name=self.name,
            version=VERSION,
            instance=self.settings.instance,
            consumes=consumes,
            produces=[HEARTBEATS],
            grpc_services=[s.name for s in self._grpc_services],
            started_at=self._started_at,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Start everything in background threads; returns the bound gRPC port."""
        self._started_at.GetCurrentTime()
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.grpc.host)
        self.grpc = GrpcServer(self.settings.grpc, self._grpc_services)
        port = self.grpc.start()
        for start, _stop in self._lifecycle:
            start()
        for group_id, routes, store, checkpoint in self._consumers:
            consumer = EventConsumer(self.settings.kafka, group_id, routes, self.publisher, store, checkpoint)
            self._spawn(f"consumer-{group_id}", self._consume, consumer)
        if self._heartbeat_s > 0:
            self._spawn("heartbeat", self._heartbeat)
        log.info("service started", extra={"grpc_port": port, "consumers": len(self._consumers)})
        return port

    def stop(self) -> None:
        self.stop_event.set()
        if self.grpc is not None:
            self.grpc.set_serving(False)
        for thread in self._threads:
            thread.join(timeout=self.settings.grpc.shutdown_grace_s + 30)
        for _start, stop in reversed(self._lifecycle):
            stop()
        if self.grpc is not None:
            self.grpc.stop()
        if self._publisher is not None:
            self._publisher.flush()
            self._publisher.close()
        log.info("service stopped")

    def run(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT."""
        configure_logging(self.name, self.settings.log_level)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.start()
        self.stop_event.wait()
        self.stop()

    def _spawn(self, name: str, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _consume(self, consumer: EventConsumer) -> None:
        try:
            consumer.run(self.stop_event)
        except Exception:
            # A consumer that cannot go on makes the whole replica unhealthy so that the
            # orchestrator restarts it, rather than serving with a silent gap.
            log.exception("consumer failed; shutting the service down")
            self.stop_event.set()

    def _heartbeat(self) -> None:
        while not self.stop_event.is_set():
            beat = platform_pb2.Heartbeat(service=self.info())
            beat.time.GetCurrentTime()
            try:
                self.publisher.publish(HEARTBEATS, beat, key=self.name)
            except Exception:
                log.warning("heartbeat not published", exc_info=True)
            self.stop_event.wait(self._heartbeat_s)
