"""SimilarFailures: personalised PageRank over the graph vs plain embedding search; the gRPC API's checks."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, kg_pb2_grpc, rca_pb2
from services.common.text_encoder import shared_encoder
from services.kg_builder.retrieval import Retriever, incident_query
from services.kg_builder.service import KnowledgeGraph, KnowledgeGraphServicer
from services.kg_builder.store import KgStore


def _report(rid: str, service: str, fault: str, summary: str, symptoms: list[str]) -> rca_pb2.RcaReport:
    report = rca_pb2.RcaReport(id=rid, incident_id=f"inc-{rid}", system="online-boutique", summary=summary)
    report.candidates.add(service=service, fault_type=fault, rank=1)
    report.evidence.nodes.add(service=service, is_abnormal=True, symptoms=symptoms)
    return report


@pytest.fixture(scope="module")
def kg() -> KnowledgeGraph:
    graph = KnowledgeGraph(KgStore(), shared_encoder())
    for report in (
        _report("f1", "cartservice", "memory", "cart pods restarted", ["oom-killed"]),
        _report("f2", "paymentservice", "memory", "heap grows until the limit and the pod dies", ["oom-killed"]),
        _report("f3", "cartservice", "code", "exception in GetCart", ["error originates here"]),
        _report("f4", "adservice", "cpu", "cpu saturated", ["self time 9x normal"]),
    ):
        graph.ingest(report)
    return graph


def test_pagerank_brings_the_same_service_and_symptom_above_a_wording_match(kg: KnowledgeGraph) -> None:
    incident = detector_pb2.Incident(id="n1", failure_type="memory", summary="heap grows until the limit")
    incident.suspected_services.add(service="cartservice")
    incident.suspected_scores.append(0.9)
    query = incident_query(incident)
    by_text = [f.source_id for f, _ in kg.retriever.search(query, 4, "embedding")]
    by_graph = [f.source_id for f, _ in kg.retriever.search(query, 4, "graph")]
    assert by_text[0] == "f2"  # the wording matches a different service's failure best
    assert by_graph[:2] == ["f2", "f1"]  # the default mixes text seeds back in at full weight
    assert by_graph.index("f4") == 3  # shares nothing with the query: last
    nodes_only = Retriever(kg.store, kg.encoder, text_weight=0.0)
    assert [f.source_id for f, _ in nodes_only.search(query, 2, "graph")] == ["f1", "f2"]
    with pytest.raises(ValueError, match="unknown method"):
        kg.retriever.search(query, 3, "bm25")


@pytest.fixture(scope="module")
def stub(kg: KnowledgeGraph) -> Iterator[kg_pb2_grpc.KnowledgeGraphServiceStub]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    kg_pb2_grpc.add_KnowledgeGraphServiceServicer_to_server(KnowledgeGraphServicer(kg), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield kg_pb2_grpc.KnowledgeGraphServiceStub(channel)
    server.stop(0)


@pytest.mark.parametrize(
    ("call", "request_", "reason"),
    [
        ("SimilarFailures", kg_pb2.SimilarFailuresRequest(), "needs one of incident, alert, text"),
        ("SimilarFailures", kg_pb2.SimilarFailuresRequest(text="oom", k=-1), "k must be within"),
        ("SimilarFailures", kg_pb2.SimilarFailuresRequest(text="oom", method="bm25"), "unknown method"),
        ("SimilarFailures", kg_pb2.SimilarFailuresRequest(text="  "), "text is empty"),
        ("Ingest", kg_pb2.IngestRequest(), "needs one of"),
        ("Ingest", kg_pb2.IngestRequest(rca_report=b"\xff\xff"), "not a serialised RcaReport"),
        ("Ingest", kg_pb2.IngestRequest(rca_report=rca_pb2.RcaReport(id="x").SerializeToString()), "no root-cause"),
        ("Ingest", kg_pb2.IngestRequest(document=kg_pb2.Document(id="d", text="t")), "documents need an LLM"),
        ("Neighbours", kg_pb2.NeighboursRequest(), "entity is empty"),
        ("Paths", kg_pb2.PathsRequest(source="a", target="b", max_hops=9), "max_hops"),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_reason(stub, call: str, request_, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, call)(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.value.details()


def test_queries_over_grpc(stub) -> None:  # type: ignore[no-untyped-def]
    neighbours = stub.Neighbours(kg_pb2.NeighboursRequest(entity="CartService"))
    assert {e.head for e in neighbours.edges} >= {"failure f1", "failure f3"}
    assert all(e.provenance for e in neighbours.edges)
    paths = stub.Paths(kg_pb2.PathsRequest(source="failure f1", target="failure f3")).paths
    assert paths[0].nodes == ["failure f1", "cartservice", "failure f3"]
    facts = stub.ServiceFacts(kg_pb2.ServiceFactsRequest(service="cartservice"))
    assert {f.source_id for f in facts.failures} == {"f1", "f3"}
    alert = detector_pb2.Alert(id="a", failure_type="memory", agent="cartservice")
    assert stub.SimilarFailures(kg_pb2.SimilarFailuresRequest(alert=alert, k=2)).failures
    schema = stub.Schema(kg_pb2.SchemaRequest(top=3))
    assert schema.concepts > 0 and len(schema.growth) == 4 and len(schema.top) == 3
    with pytest.raises(grpc.RpcError) as error:
        stub.Neighbours(kg_pb2.NeighboursRequest(entity="no such thing"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


class _Published:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []  # (source id, event id)

    def publish(self, topic: str, message, *, key=None, subject=None, event_id=None, wait=False):  # type: ignore[no-untyped-def]
        self.events.append((message.source_id, event_id))


def test_a_report_taken_again_after_a_crash_publishes_its_update_again_under_the_same_event_id() -> None:
    # Killed after storing the report but before its KgUpdate went out, the service takes the report again:
    # the store says duplicate, and the update must still go out (under the first one's id, so a consumer
    # that did get the first drops this one).
    published = _Published()
    graph = KnowledgeGraph(KgStore(), shared_encoder(), publisher=published, updates_topic="updates")  # type: ignore[arg-type]
    report = _report("c1", "cartservice", "delay", "cart slow", ["latency 5x"])
    _, duplicate, _ = graph.ingest(report)
    again, duplicate_again, _ = graph.ingest(report)
    assert not duplicate and duplicate_again and again.nodes_added == 0
    assert published.events[0] == published.events[1] and published.events[0][0] == "c1"
