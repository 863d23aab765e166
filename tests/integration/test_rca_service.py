"""The rca service on the real broker: telemetry and an incident in, an RcaReport naming the injected service out."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer

from loadtests.simulator.live import publish
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common import topics
from services.common.admin import ensure_topics
from services.common.bus import Publisher
from services.common.pb.faultline.v1 import detector_pb2, rca_pb2
from services.common.settings import GrpcSettings, KafkaSettings
from services.common.topics import CATALOGUE
from services.rca.main import RcaSettings, build


@pytest.fixture(scope="module")
def service(kafka: KafkaSettings):  # type: ignore[no-untyped-def]
    ensure_topics(kafka, CATALOGUE)
    settings = RcaSettings(
        kafka=kafka,
        grpc=GrpcSettings(port=0),
        metrics_port=0,
        heartbeat_s=0,
        group_id=f"rca-{uuid.uuid4().hex[:6]}",
        baseline_s=150,
        max_traces=10,
    )
    runtime, app = build(settings)
    runtime.start()
    yield app
    runtime.stop()


def _report_for(kafka: KafkaSettings, incident_id: str, timeout_s: float = 90) -> rca_pb2.RcaReport:
    consumer = KafkaConsumer(topics.RCA_REPORTS, auto_offset_reset="earliest", **kafka.client_config())
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    report = rca_pb2.RcaReport.FromString(record.value)
                    if report.incident_id == incident_id:
                        return report
    finally:
        consumer.close()
    raise AssertionError(f"no report for incident {incident_id} within {timeout_s}s")


@pytest.mark.parametrize(
    ("stretch", "fault", "service_name"),
    [(0, "cpu:productcatalogservice", "productcatalogservice"), (1, "delay:cartservice", "cartservice")],
)
def test_incident_in_report_out_names_the_injected_service(
    service, kafka: KafkaSettings, stretch: int, fault: str, service_name: str
) -> None:  # type: ignore[no-untyped-def]
    # Its own stretch of past time, so that other tests' telemetry in the shared topics is not in the window;
    # a later case gets a later stretch, so each partition's timestamps only grow, as real telemetry's do
    # (the window is read back with an offsets-for-times seek that relies on it).
    epoch = int(time.time()) - 4 * 3600 + 1800 * stretch  # disjoint: random offsets could overlap
    spec = ScenarioSpec(faults=(f"{fault}@150s+90s",), duration_s=240, seed=7, epoch_s=epoch, rate_scale=0.3)
    publish(Scenario(spec), kafka, speed=0, chunk_s=30)

    incident = detector_pb2.Incident(
        id=str(uuid.uuid4()), system="online-boutique", status=detector_pb2.INCIDENT_STATUS_OPEN
    )
    incident.window.start.FromSeconds(epoch + 150)
    incident.window.end.FromSeconds(epoch + 240)
    publisher = Publisher(kafka, source="faultline/test")
    publisher.publish(topics.INCIDENTS, incident, key=incident.system, wait=True)
    publisher.close()

    report = _report_for(kafka, incident.id)
    assert report.candidates[0].service == service_name, [c.service for c in report.candidates[:3]]
    assert report.trace_ids and report.evidence.nodes and report.mode == "evidence"
    assert service.report(incident.id).id == report.id  # GetReport finds it by incident id
