"""The five services as local processes for ``faultline demo``: start together, wait until healthy, stop cleanly
(and, for ``make chaos``, SIGKILL one and start it again with the same settings and state).

Each service is ``faultline serve <name>`` in its own process, configured only through its
``FAULTLINE_*`` environment, logging to ``<run dir>/<name>.log``. Consumer groups are named per
run and their offsets committed at the topics' current end before the services start, so a
service reads exactly this run's records: nothing left over from earlier runs, nothing missed
while it was still loading its model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from services.common import topics
from services.common.settings import KafkaSettings


@dataclass(frozen=True)
class ServiceProcess:
    name: str  # as in ``faultline serve <name>``
    grpc_port: int
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # consumer group -> its topics


def platform(run_id: str, run_dir: Path, inference_args: tuple[str, ...], port_offset: int = 0) -> list[ServiceProcess]:
    """The five services with this run's consumer groups and state files, on their default ports (gRPC,
    metrics, the inference HTTP API) or, with ``port_offset``, that far above them (beside a running demo)."""
    group = f"demo-{run_id}"
    services = [
        ServiceProcess("inference", 8001, inference_args, {"FAULTLINE_METRICS_PORT": "9471"}),
        ServiceProcess(
            "embedding",
            50053,
            env={
                "FAULTLINE_METRICS_PORT": "9473",
                "FAULTLINE_CONSUMER_GROUP": f"{group}-embedding",
                "FAULTLINE_STATE_PATH": str(run_dir / "embedding" / "state.pickle"),
            },
            groups={f"{group}-embedding": (topics.OTLP_SPANS, topics.OTLP_METRICS, topics.OTLP_LOGS)},
        ),
        ServiceProcess(
            "detector",
            50054,
            env={
                "FAULTLINE_METRICS_PORT": "9474",
                "FAULTLINE_GROUP_ID": f"{group}-detector",
                "FAULTLINE_DATA_DIR": str(run_dir / "detector"),
            },
            groups={f"{group}-detector-spans": (topics.OTLP_SPANS,), f"{group}-detector-states": (topics.STATES,)},
        ),
        ServiceProcess(
            "rca",
            50055,
            # The incident's baseline is read back from before it; 4 minutes keep an earlier fault out of it.
            env={"FAULTLINE_METRICS_PORT": "9475", "FAULTLINE_GROUP_ID": f"{group}-rca", "FAULTLINE_BASELINE_S": "240"},
            groups={f"{group}-rca": (topics.INCIDENTS,)},
        ),
        ServiceProcess(
            "kg-builder",
            50056,
            env={
                "FAULTLINE_METRICS_PORT": "9476",
                "FAULTLINE_GROUP_ID": f"{group}-kg-builder",
                "FAULTLINE_STORE_PATH": str(run_dir / "kg-builder" / "kg.sqlite"),
                "FAULTLINE_EXPORT_ROOT": str(run_dir / "kg-builder" / "exports"),
            },
            groups={f"{group}-kg-builder-records": (topics.RCA_REPORTS,)},
        ),
    ]
    return [_moved(s, port_offset) for s in services] if port_offset else services


def _moved(service: ServiceProcess, offset: int) -> ServiceProcess:
    args = (*service.args, "--grpc-port", str(service.grpc_port + offset))
    if service.name == "inference":
        args += ("--http-port", str(8000 + offset))
    metrics = int(service.env["FAULTLINE_METRICS_PORT"]) + offset
    return replace(
        service,
        grpc_port=service.grpc_port + offset,
        args=args,
        env={**service.env, "FAULTLINE_METRICS_PORT": str(metrics)},
    )


def start_groups_at_end(kafka: KafkaSettings, groups: dict[str, tuple[str, ...]]) -> None:
    """Commit each group's offsets at its topics' current end (the groups are new: nothing to rebalance)."""
    consumer = KafkaConsumer(enable_auto_commit=False, **kafka.client_config())
    try:
        partitions = {
            t: [TopicPartition(t, p) for p in consumer.partitions_for_topic(t) or ()]
            for t in {t for ts in groups.values() for t in ts}
        }
        ends = consumer.end_offsets([tp for tps in partitions.values() for tp in tps])
    finally:
        consumer.close()
    admin = KafkaAdminClient(**kafka.client_config())
    try:
        for group, group_topics in groups.items():
            offsets = {tp: OffsetAndMetadata(ends[tp], "", -1) for t in group_topics for tp in partitions[t]}
            deadline = time.monotonic() + 60
            while True:
                try:
                    admin.alter_group_offsets(group, offsets)
                    break
                except KafkaError as error:  # a fresh broker creates __consumer_offsets at the first group
                    if not error.retriable or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
    finally:
        admin.close()


def group_lag(kafka: KafkaSettings, group: str) -> int:
    """Records of the group's topics not yet committed (handled) by it."""
    admin = KafkaAdminClient(**kafka.client_config())
    consumer = KafkaConsumer(**kafka.client_config())
    try:
        committed = admin.list_group_offsets({group: None})[group]
        ends = consumer.end_offsets(list(committed))
    finally:
        admin.close()
        consumer.close()
    return sum(ends[tp] - meta.offset for tp, meta in committed.items())


def healthy(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


class Processes:
    """The services' processes: started, waited for, killed and started again (same settings, same state)."""

    def __init__(self, services: list[ServiceProcess], kafka: KafkaSettings, logs: Path) -> None:
        self.services = {s.name: s for s in services}
        self.logs = logs
        self.env = {
            **os.environ,
            "FAULTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "FAULTLINE_HEARTBEAT_S": "5",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        """``faultline serve <name>``; a restart appends to the same log."""
        service = self.services[name]
        with (self.logs / f"{name}.log").open("a" if name in self.processes else "w") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", name, *service.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **service.env},
            )

    def wait_healthy(self, name: str, timeout_s: float, since: float | None = None) -> float:
        """Seconds from ``since`` (default: now) until the service answers SERVING; SystemExit if it exits
        or is not serving ``timeout_s`` after ``since``."""
        service, began = self.services[name], time.monotonic() if since is None else since
        while not healthy(service.grpc_port):
            if self.processes[name].poll() is not None:
                raise SystemExit(f"{name} exited while starting; see {self.logs / name}.log")
            if time.monotonic() - began > timeout_s:
                raise SystemExit(f"{name} not healthy after {timeout_s:.0f} s; see {self.logs / name}.log")
            time.sleep(0.5)
        return time.monotonic() - began

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown hook runs, nothing is committed or flushed."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, name: str, timeout_s: float = 240) -> float:
        """Started again and healthy; returns the seconds that took."""
        began = time.monotonic()
        self.start(name)
        return self.wait_healthy(name, timeout_s, began)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop within 60 s; killing it", flush=True)
                process.kill()
                process.wait()


@contextmanager
def running(
    services: list[ServiceProcess], kafka: KafkaSettings, logs: Path, timeout_s: float = 240
) -> Iterator[Processes]:
    """All ``services`` started at once (their model loading overlaps), healthy for the length of the block."""
    logs.mkdir(parents=True, exist_ok=True)
    start_groups_at_end(kafka, {g: ts for s in services for g, ts in s.groups.items()})
    processes = Processes(services, kafka, logs)
    began = time.monotonic()
    try:
        for service in services:
            processes.start(service.name)

        def wait(service: ServiceProcess) -> float:
            return processes.wait_healthy(service.name, timeout_s, began)

        with ThreadPoolExecutor(len(services)) as pool:
            for service, ready_s in zip(services, pool.map(wait, services), strict=True):
                print(f"  ✔ {service.name:<11} healthy on :{service.grpc_port} after {ready_s:4.1f} s", flush=True)
        yield processes
    finally:
        processes.stop()
