"""The five services as local processes for ``faultline demo``: start together, wait until healthy, stop cleanly.

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
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
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


def platform(run_id: str, run_dir: Path, inference_args: tuple[str, ...]) -> list[ServiceProcess]:
    """The five services on their default gRPC ports, with this run's consumer groups and state files."""
    group = f"demo-{run_id}"
    return [
        ServiceProcess("inference", 8001, inference_args, {"FAULTLINE_METRICS_PORT": "9471"}),
        ServiceProcess(
            "embedding",
            50053,
            env={"FAULTLINE_METRICS_PORT": "9473", "FAULTLINE_CONSUMER_GROUP": f"{group}-embedding"},
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
            admin.alter_group_offsets(group, offsets)
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


@contextmanager
def running(services: list[ServiceProcess], kafka: KafkaSettings, logs: Path, timeout_s: float = 240) -> Iterator[None]:
    """All ``services`` started at once (their model loading overlaps), healthy for the length of the block."""
    logs.mkdir(parents=True, exist_ok=True)
    start_groups_at_end(kafka, {g: ts for s in services for g, ts in s.groups.items()})
    env = {**os.environ, "FAULTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "FAULTLINE_HEARTBEAT_S": "5"}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    began = time.monotonic()
    try:
        for service in services:
            with (logs / f"{service.name}.log").open("w") as out:
                processes[service.name] = subprocess.Popen(
                    [sys.executable, "-m", "services.cli", "serve", service.name, *service.args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**env, **service.env},
                )

        def wait(service: ServiceProcess) -> float:
            while not healthy(service.grpc_port):
                if processes[service.name].poll() is not None:
                    raise SystemExit(f"{service.name} exited while starting; see {logs / service.name}.log")
                if time.monotonic() - began > timeout_s:
                    raise SystemExit(
                        f"{service.name} not healthy after {timeout_s:.0f} s; see {logs / service.name}.log"
                    )
                time.sleep(0.5)
            return time.monotonic() - began

        with ThreadPoolExecutor(len(services)) as pool:
            for service, ready_s in zip(services, pool.map(wait, services), strict=True):
                print(f"  ✔ {service.name:<11} healthy on :{service.grpc_port} after {ready_s:4.1f} s", flush=True)
        yield
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop within 60 s; killing it", flush=True)
                process.kill()
                process.wait()
