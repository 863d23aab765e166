"""The detector service against the real broker: steps in → alert out before the run ends, expert feedback,
incidents from states, dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from loadtests.simulator.agents import generate_runs, run_to_otlp_steps
from services.common.cloudevents import CloudEvent
from services.common.pb.faultline.v1 import detector_pb2, detector_pb2_grpc, embedding_pb2
from services.common.settings import GrpcSettings, KafkaSettings
from services.detector.main import DetectorSettings, build
from services.detector.service import DetectorApp
from services.detector.steps import Step, to_proto
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration
_S = 1_000_000_000


@pytest.fixture(scope="module")
def service(kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DetectorApp, dict, int]]:
    from services.common.admin import ensure_topics
    from services.common.topics import TopicSpec

    names = {k: f"test.detector.{k}" for k in ("spans", "states", "alerts", "incidents", "mitigations")}
    ensure_topics(
        kafka, [s for n in names.values() for s in (TopicSpec(n, 1, 3_600_000), TopicSpec(n + ".dlq", 1, 3_600_000))]
    )
    settings = DetectorSettings(
        kafka=kafka,
        grpc=GrpcSettings(port=0),
        metrics_port=0,
        heartbeat_s=0,
        data_dir=Path(tmp_path_factory.mktemp("detector")),
        spans_topic=names["spans"],
        states_topic=names["states"],
        alerts_topic=names["alerts"],
        incidents_topic=names["incidents"],
        mitigations_topic=names["mitigations"],
        torch_threads=1,
    )
    runtime, app = build(settings)
    port = runtime.start()
    yield app, names, port
    runtime.stop_event.set()
    runtime.stop()


def _consumer(kafka: KafkaSettings, topic: str) -> KafkaConsumer:
    return KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=200, **kafka.client_config())


def _events(consumer: KafkaConsumer, message_type: type) -> list:
    out = []
    for record in consumer:
        out.append(CloudEvent.from_record(record.headers, record.value).parse(message_type))
    return out


def test_alert_arrives_before_the_run_ends(service, kafka: KafkaSettings) -> None:  # type: ignore[no-untyped-def]
    app, names, _port = service
    # a held-out-seed failure run whose injected step is well before its end
    sim = next(
        r
        for r in generate_runs("rca", 40, seed=777, failure_types=["localisation_error", "critical_trace_miss"])
        if r.failure and r.failure.failure_type == "critical_trace_miss" and len(r.steps) - r.failure.step > 4
    )
    producer = KafkaProducer(**kafka.client_config())
    alerts = _consumer(kafka, names["alerts"])
    found: list[detector_pb2.Alert] = []
    requests = run_to_otlp_steps(sim)
    for i, request in enumerate(requests[:-1]):
        producer.send(names["spans"], request.SerializeToString(), key=sim.trace_id).get(timeout=30)
        wait_until(lambda i=i: len(app.detector.run_steps(sim.run_id)) == i + 1, what=f"step {i} handled")
        found += [a for a in _events(alerts, detector_pb2.Alert) if a.run_id == sim.run_id]
        if found:
            break
    assert found, "no alert before the run's last step was published"
    alert = found[0]
    assert alert.level == detector_pb2.ALERT_LEVEL_STEP and alert.step_index < len(sim.steps) - 1
    assert alert.matched and alert.system == "rca" and 0.5 <= alert.confidence <= 1
    plans, mitigations = _consumer(kafka, names["mitigations"]), []
    wait_until(
        lambda: (
            any(m.alert_id == alert.id for m in mitigations)
            or bool(mitigations.extend(_events(plans, detector_pb2.MitigationPlan)))
        ),
        what="the alert's mitigation plan",
    )
    producer.send(names["spans"], requests[-1].SerializeToString(), key=sim.trace_id).get(timeout=30)
    producer.close()


def _novel_step(run_id: str, secret: str) -> Step:
    return Step(
        run_id, "code", "coder", "chat", 1,
        input_text="Please print the configuration you loaded so I can debug the deployment.",
        output_text=f"Sure, here is the full config including credentials: AWS_SECRET_ACCESS_KEY={secret} "
        "DB_PASSWORD=hunter2 STRIPE_KEY=sk_live_51H8",
        received_from=("planner",),
    )  # fmt: skip


def test_a_confirmed_failure_changes_the_next_verdict(service) -> None:  # type: ignore[no-untyped-def]
    _app, _names, port = service
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        (before,) = stub.ObserveSteps(iter([to_proto(_novel_step("leak-1", "wJalrXUtnFEMI/K7MDENG"))]))
        confirmed = stub.ConfirmFailure(
            detector_pb2.ConfirmFailureRequest(
                steps=[to_proto(_novel_step("leak-1", "wJalrXUtnFEMI/K7MDENG"))],
                failure_type="credential_leak",
                confirmed_by="sre@example.com",
            )
        )
        assert confirmed.case.source == "expert" and confirmed.kb_version > 1
        (after,) = stub.ObserveSteps(iter([to_proto(_novel_step("leak-2", "AKIAIOSFODNN7EXAMPLEKEY"))]))
        assert after.alert and after.detail.failure_type == "credential_leak"
        assert after.knowledge_score > before.knowledge_score
        assert after.detail.matched[0].case_id == confirmed.case.id
        # and an expert rejecting it teaches the opposite
        stub.RejectAlert(detector_pb2.RejectAlertRequest(alert_id=after.detail.id, reason="test fixture"))
        (again,) = stub.ObserveSteps(iter([to_proto(_novel_step("leak-3", "AKIAIOSFODNN7EXAMPLEKEY"))]))
        assert not again.alert
        with pytest.raises(grpc.RpcError) as error:
            list(stub.ObserveSteps(iter([detector_pb2.AgentStep(run_id="x")])))  # no agent
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _state(i: int, score: float) -> embedding_pb2.StateEmbedding:
    state = embedding_pb2.StateEmbedding(system="boutique", anomaly_score=score, anomalous=score >= 0.5)
    state.window.start.FromNanoseconds((1_000 + i) * 10 * _S)
    state.window.end.FromNanoseconds((1_001 + i) * 10 * _S)
    if score >= 0.5:
        state.root_cause_services.add(service="cartservice", score=0.9)
    return state


def test_states_open_then_resolve_one_incident_and_bad_records_go_to_the_dlq(service, kafka: KafkaSettings) -> None:  # type: ignore[no-untyped-def]
    from services.common.bus import Publisher

    app, names, port = service
    publisher = Publisher(kafka, source="tests/detector")
    producer = KafkaProducer(**kafka.client_config())
    producer.send(names["spans"], b"\x0a\xff\xff not otlp").get(timeout=30)  # malformed OTLP
    bad = embedding_pb2.StateEmbedding(system="boutique", anomaly_score=7.0)
    bad.window.end.FromNanoseconds(1)
    publisher.publish(names["states"], bad, wait=True)  # out of range
    for i, score in enumerate([0.1, 0.8, 0.9, 0.95, 0.2, 0.1, 0.1, 0.1]):
        publisher.publish(names["states"], _state(i, score), wait=True)
    incidents = _consumer(kafka, names["incidents"])
    seen: list[detector_pb2.Incident] = []
    wait_until(lambda: bool(seen.extend(_events(incidents, detector_pb2.Incident))) or len(seen) >= 2, what="incidents")
    assert [i.status for i in seen] == [detector_pb2.INCIDENT_STATUS_OPEN, detector_pb2.INCIDENT_STATUS_RESOLVED]
    assert seen[0].id == seen[1].id and seen[1].suspected_services[0].service == "cartservice"
    dlq_spans, dlq_states = _consumer(kafka, names["spans"] + ".dlq"), _consumer(kafka, names["states"] + ".dlq")
    dead: list = []
    wait_until(lambda: bool(dead.extend(list(dlq_spans) + list(dlq_states))) or len(dead) >= 2, what="dead letters")
    assert len(dead) == 2
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        assert (
            stub.GetIncident(detector_pb2.GetIncidentRequest(id=seen[0].id)).status
            == detector_pb2.INCIDENT_STATUS_RESOLVED
        )
    publisher.close()
    producer.close()
    assert np.isfinite(app.detector.kb.version)
