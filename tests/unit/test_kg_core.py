"""kg-builder without models: chunking, JSON repair, answer validation, the structured path, idempotent
upserts, the Neo4j CSV round trip and GraphML."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import networkx as nx
import pytest

from services.common.llm import SchemaError, parse_json
from services.common.pb.faultline.v1 import detector_pb2, rca_pb2
from services.kg_builder.chunking import CHUNK_CHARS, chunk_text
from services.kg_builder.concepts import Resolution, conceptualise
from services.kg_builder.export import export_csv, export_graphml, import_csv
from services.kg_builder.extraction import (
    _event_triple,
    _items,
    _relation_triple,
    extract_failure_case,
    extract_rca_report,
)
from services.kg_builder.store import KgStore


def _report(report_id: str = "r1", service: str = "cartservice", fault: str = "memory") -> rca_pb2.RcaReport:
    report = rca_pb2.RcaReport(id=report_id, incident_id="inc-1", system="online-boutique", summary="cart OOM")
    report.candidates.add(service="frontend", fault_type="delay", rank=2)
    report.candidates.add(service=service, pod=f"{service}-0", fault_type=fault, rank=1, reason="memory grows")
    report.evidence.nodes.add(service=service, is_abnormal=True, symptoms=["oom-killed", "gc pauses"])
    report.evidence.nodes.add(service="checkoutservice", is_abnormal=True, symptoms=["latency up"])
    report.evidence.nodes.add(service="adservice", is_abnormal=False, symptoms=["ignored"])
    return report


def test_chunks_respect_the_budget_and_end_at_sentences() -> None:
    assert CHUNK_CHARS == 2884  # the paper's (1024 - 200) * 3.5
    text = " ".join(f"Sentence number {i} says   something about cartservice." for i in range(40))
    chunks = chunk_text(text, 200)
    assert all(len(c) <= 200 for c in chunks) and len(chunks) > 5
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == " ".join(text.split())  # nothing lost, whitespace collapsed
    assert chunk_text("word" * 100, 50)[0] == ("word" * 100)[:50]  # no boundary: a hard cut
    with pytest.raises(ValueError):
        chunk_text("x", 3)


def test_json_repair_strips_fences_prose_and_trailing_commas() -> None:
    assert parse_json('```json\n[{"Head": "a", "Relation": "r", "Tail": "b"},]\n```') == [
        {"Head": "a", "Relation": "r", "Tail": "b"}
    ]
    assert parse_json('Here you go: {"x": [1, 2,],} Hope it helps.') == {"x": [1, 2]}
    with pytest.raises(json.JSONDecodeError):
        parse_json('[{"Head": "a", "Relation": ')


def test_answers_are_validated_item_by_item() -> None:
    triples, dropped = _items(
        [
            {"Head": " Redis ", "Relation": "Ran out of", "Tail": "memory."},
            {"Head": "", "Relation": "x", "Tail": "y"},
            7,
        ],
        _relation_triple,
    )
    assert triples == [("redis", "ran out of", "memory")] and dropped == 2
    events, dropped = _items([{"Head": "a", "Relation": "led to", "Tail": "b"}], _event_triple)
    assert events == [] and dropped == 1  # not one of before/after/at the same time/because/as a result
    assert _items({"Head": "a", "Relation": "r", "Tail": "b"}, _relation_triple)[0] == [("a", "r", "b")]
    with pytest.raises(SchemaError):
        _items("no", _relation_triple)


def test_rca_reports_become_triples_without_an_llm() -> None:
    extraction = extract_rca_report(_report())
    facts = {(t.head, t.relation, t.tail) for t in extraction.triples}
    assert ("failure r1", "has root cause", "cartservice") in facts  # the rank-1 candidate, not the first listed
    assert ("failure r1", "has fault type", "memory") in facts
    assert ("failure r1", "also suspected", "frontend") in facts
    assert ("failure r1", "affected", "checkoutservice") in facts
    assert not any("ignored" in t.tail for t in extraction.triples)  # a normal span's symptoms are not facts
    assert all(t.provenance.source_id == "r1" for t in extraction.triples)
    assert extraction.failure is not None and extraction.failure.service == "cartservice"
    assert {c for _, _, c in conceptualise(extraction, None)} >= {"failure", "service", "fault type", "symptom"}
    with pytest.raises(ValueError, match="no root-cause candidates"):
        extract_rca_report(rca_pb2.RcaReport(id="empty"))


def test_the_same_report_twice_adds_nothing(tmp_path: Path) -> None:
    store = KgStore(tmp_path / "kg.sqlite")
    report = _report()
    extraction = extract_rca_report(report)
    first = store.ingest(extraction, "h1", conceptualise(extraction, None))
    assert first.nodes > 0 and first.edges == len(extraction.triples)
    before = store.counts()
    again = store.ingest(extract_rca_report(report), "h1", conceptualise(extraction, None))
    assert (again.nodes, again.edges) == (0, 0)
    assert store.counts() == before
    assert store.is_duplicate("r1", "h1") and not store.is_duplicate("r1", "changed")
    # a second report on the same service shares its nodes: only the new failure's own edges are added
    second = store.ingest(extract_rca_report(_report("r2")), "h2")
    assert second.nodes < first.nodes and second.edges > 0
    reopened = KgStore(tmp_path / "kg.sqlite")
    assert reopened.counts() == store.counts()


def _graph(store: KgStore) -> tuple[set, set, dict]:
    nodes = {(n, t) for _, n, t in store.node_names()}
    edges = {(e.head, e.relation, e.tail, e.kind, tuple(p)) for e, p in store.edges()}
    return nodes, edges, {k: sorted(v) for k, v in store.item_concepts().items()}


def test_exported_csv_loads_back_into_an_equal_graph(tmp_path: Path) -> None:
    store = KgStore()
    for report in (_report("r1"), _report("r2", "paymentservice", "cpu")):
        extraction = extract_rca_report(report)
        links = conceptualise(extraction, None)
        store.ingest(extraction, report.id, links, Resolution({raw: raw for _, _, raw in links}))
    case = detector_pb2.FailureCase(id="fc1", system="code", agent="coder", failure_type="loop", mitigation="reset")
    store.ingest(extract_failure_case(case), "fc1")
    files = export_csv(store, tmp_path / "csv")
    with files[0].open() as f:
        assert next(csv.reader(f)) == ["name:ID", "type", "concepts", ":LABEL"]
    with files[1].open() as f:
        header = next(csv.reader(f))
    assert header == [":START_ID", ":END_ID", "relation", "kind", "concepts", "provenance", ":TYPE"]
    loaded = import_csv(tmp_path / "csv", KgStore())
    assert _graph(loaded) == _graph(store)
    assert _graph(loaded)[1]  # not two empty graphs


def test_graphml_export_has_every_node_and_edge(tmp_path: Path) -> None:
    store = KgStore()
    store.ingest(extract_rca_report(_report()), "h")
    graph = nx.read_graphml(export_graphml(store, tmp_path / "g.graphml"))
    assert graph.number_of_nodes() == store.counts()["nodes"]
    assert graph.number_of_edges() == store.counts()["edges"]
    relations = {d["relation"] for _, _, d in graph.edges(data=True)}
    assert "has root cause" in relations
