"""kg-builder against the real broker: an RCA report in → KgUpdate out → SimilarFailures finds it for a new
incident on the same service; a malformed record is dead-lettered and the service keeps going; the
exported CSVs load back into an equal graph."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kafka import KafkaConsumer

from services.common.bus import Publisher
from services.common.cloudevents import CloudEvent
from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, kg_pb2_grpc, rca_pb2
from services.common.settings import GrpcSettings, KafkaSettings
from services.kg_builder.export import import_csv
from services.kg_builder.main import KgBuilderSettings, build
from services.kg_builder.service import KnowledgeGraph
from services.kg_builder.store import KgStore
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KnowledgeGraph, dict, int]]:
    from services.common.admin import ensure_topics
    from services.common.topics import TopicSpec

    names = {k: f"test.kg.{k}" for k in ("rca", "documents", "updates")}
    ensure_topics(
        kafka, [s for n in names.values() for s in (TopicSpec(n, 1, 3_600_000), TopicSpec(n + ".dlq", 1, 3_600_000))]
    )
    root = Path(tmp_path_factory.mktemp("kg"))
    settings = KgBuilderSettings(
        kafka=kafka,
        grpc=GrpcSettings(port=0),
        metrics_port=0,
        heartbeat_s=0,
        store_path=root / "kg.sqlite",
        export_root=root / "exports",
        rca_reports_topic=names["rca"],
        documents_topic=names["documents"],
        updates_topic=names["updates"],
    )
    runtime, kg = build(settings)
    port = runtime.start()
    yield kg, names, port
    runtime.stop_event.set()
    runtime.stop()


def test_rca_report_in_similar_failure_out(service, kafka: KafkaSettings) -> None:  # type: ignore[no-untyped-def]
    kg, names, port = service
    report = rca_pb2.RcaReport(id="rca-it-1", incident_id="inc-it-1", system="online-boutique",
                               summary="cartservice: memory working set keeps growing until OOM kill")  # fmt: skip
    report.candidates.add(service="cartservice", fault_type="memory", rank=1, reason="pod oom-killed and restarted")
    report.evidence.nodes.add(service="cartservice", is_abnormal=True, symptoms=["garbage collection pauses"])
    other = rca_pb2.RcaReport(id="rca-it-2", incident_id="inc-it-2", system="online-boutique",
                              summary="paymentservice: exception thrown in Charge")  # fmt: skip
    other.candidates.add(service="paymentservice", fault_type="code", rank=1, reason="http 500 responses")
    publisher = Publisher(kafka, source="test/kg")
    publisher.publish(names["rca"], rca_pb2.RcaReport(id="bad-no-candidates"), wait=True)  # dead-lettered
    publisher.publish(names["rca"], report, wait=True)
    publisher.publish(names["rca"], other, wait=True)
    publisher.publish(names["rca"], report, event_id="a-redelivery", wait=True)  # same content: adds nothing
    # The redelivery adds nothing to the graph, and its update goes out again under the first one's event id (a
    # crash between storing a report and publishing its update must not lose the update): by event id, one each.
    records = _until(lambda: _consume_raw(kafka, names["updates"]), 3, "KgUpdates for both reports, and the repeat")
    by_id: dict[str, kg_pb2.KgUpdate] = {}
    for record in records:
        event = CloudEvent.from_record(record.headers, record.value)
        by_id.setdefault(event.id, event.parse(kg_pb2.KgUpdate))
    updates = list(by_id.values())
    assert len(records) == 3 and sorted(u.source_id for u in updates) == ["rca-it-1", "rca-it-2"]
    first = next(u for u in updates if u.source_id == "rca-it-1")
    assert first.edges_added > 0 and "cartservice" in first.services and first.schema_size > 0
    dead = _until(lambda: _consume_raw(kafka, names["rca"] + ".dlq"), 1, "the DLQ record")
    assert len(dead) == 1 and b"bad-no-candidates" in dead[0].value
    assert kg.store.counts()["sources"] == 2  # the redelivery with a new event id changed nothing

    incident = detector_pb2.Incident(id="inc-new", system="online-boutique", failure_type="memory",
                                     summary="heap climbs until the limit at cartservice")  # fmt: skip
    incident.suspected_services.add(service="frontend")
    incident.suspected_services.add(service="cartservice")
    incident.suspected_scores.extend([0.7, 0.6])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = kg_pb2_grpc.KnowledgeGraphServiceStub(channel)
        found = stub.SimilarFailures(kg_pb2.SimilarFailuresRequest(incident=incident, k=1)).failures
        assert [f.source_id for f in found] == ["rca-it-1"]
        assert (found[0].root_cause_service, found[0].fault_type, found[0].incident_id) == (
            "cartservice", "memory", "inc-it-1"
        )  # fmt: skip
        facts = stub.ServiceFacts(kg_pb2.ServiceFactsRequest(service="cartservice"))
        assert any(e.relation == "has root cause" for e in facts.facts)
        exported = stub.Export(kg_pb2.ExportRequest(directory="snapshot", graphml=True)).files
        assert any(f.endswith("graph.graphml") for f in exported)
    loaded = import_csv(Path(exported[0]).parent, KgStore())
    assert {(e.head, e.relation, e.tail, tuple(p)) for e, p in loaded.edges()} == {
        (e.head, e.relation, e.tail, tuple(p)) for e, p in kg.store.edges()
    }


def _until(read, count: int, what: str) -> list:  # type: ignore[no-untyped-def]
    seen: list = []

    def ready() -> bool:
        seen[:] = read()
        return len(seen) >= count

    wait_until(ready, what=what)
    return seen


def _consume_raw(kafka: KafkaSettings, topic: str) -> list:
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=300, **kafka.client_config())
    out = list(consumer)
    consumer.close()
    return out
