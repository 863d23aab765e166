"""Extraction through the real OpenAI-compatible API of the inference service in replay mode, on the
project's recording (hand-written answers), and concept merging with the sentence encoder."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from deploy.kafka.broker import free_port
from services.common.llm import LLMClient, LLMError
from services.common.settings import GrpcSettings
from services.common.text_encoder import shared_encoder
from services.inference.main import InferenceSettings, build
from services.kg_builder.concepts import ConceptSchema, conceptualise
from services.kg_builder.evaluation import RECORDING, load_documents
from services.kg_builder.extraction import extract_document
from services.kg_builder.service import KnowledgeGraph
from services.kg_builder.store import KgStore


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    port = free_port()
    settings = InferenceSettings(
        replay_path=RECORDING, metrics_port=0, heartbeat_s=0, http_port=port, grpc=GrpcSettings(port=0)
    )
    runtime, _engine = build(settings)
    runtime.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/v1"
    runtime.stop()


DOCS = {doc.id: doc for doc, _ in load_documents()}


def test_three_stages_with_provenance(llm_url: str) -> None:
    llm = LLMClient(llm_url)
    extraction = extract_document(DOCS["pm-01"], llm)
    kinds = {t.kind for t in extraction.triples}
    assert kinds == {"entity", "event-entity", "event"}
    facts = {(t.head, t.relation, t.tail) for t in extraction.triples}
    assert ("redis-cart", "ran out of", "memory") in facts
    assert ("redis-cart ran out of memory", "is participated by", "redis-cart") in facts
    assert ("cartservice could not read carts", "because", "redis-cart ran out of memory") in facts
    assert all(t.provenance.source_id == "pm-01" and t.provenance.chunk == 0 for t in extraction.triples)
    assert llm.usage.calls == 3 and llm.usage.prompt_tokens > 0 and llm.usage.reasked == 0


def test_malformed_answers_are_repaired_or_re_asked(llm_url: str) -> None:
    llm = LLMClient(llm_url)
    fenced = extract_document(DOCS["pm-03"], llm)  # a ```json answer with a trailing comma
    assert llm.usage.repaired == 1 and llm.usage.reasked == 0
    assert ("gke-pool-2", "had", "faulty network interface") in {(t.head, t.relation, t.tail) for t in fenced.triples}
    truncated = extract_document(DOCS["pm-05"], llm)  # a cut-off answer: asked again, with the error shown
    assert llm.usage.reasked == 1 and llm.usage.failed == 0
    assert any(t.kind == "event-entity" and t.tail == "horizontal pod autoscaler" for t in truncated.triples)
    assert truncated.dropped_items == 1  # "led to" is not an allowed event relation


def test_an_unrecorded_request_is_an_error_not_an_answer(llm_url: str) -> None:
    doc = DOCS["pm-01"]
    doc = type(doc)(id="new", text=doc.text + " One more sentence nobody recorded.")
    with pytest.raises(LLMError, match="no recorded completion"):
        extract_document(doc, LLMClient(llm_url, max_retries=0))


def test_near_synonym_concepts_merge_into_one() -> None:
    schema = ConceptSchema(shared_encoder(), threshold=0.85)
    first = schema.resolve(["database", "service", "memory"])
    schema.commit(first)
    second = schema.resolve(["databases", "network fault", "network failure", "microservice"])
    assert second.canonical["databases"] == "database"
    assert second.canonical["network failure"] == second.canonical["network fault"]  # merged within one batch
    assert second.canonical["microservice"] == "microservice"  # related, but not the same concept
    assert [n for n, _ in second.new] == ["network fault", "microservice"]


def test_documents_grow_the_schema_slower_than_the_raw_concepts(llm_url: str) -> None:
    kg = KnowledgeGraph(KgStore(), shared_encoder(), LLMClient(llm_url))
    for name in ("pm-01", "pm-09", "pm-03"):  # redis "database"; postgres "databases"; "network failure"
        update, duplicate, _ = kg.ingest(DOCS[name])
        assert not duplicate and update.edges_added > 0
    counts = kg.store.counts()
    assert counts["concepts"] < counts["aliases"]  # near-synonyms were merged
    concepts = kg.store.item_concepts()
    assert "database" in concepts[("postgres-orders", "entity")]  # "databases" joined "database"
    again, duplicate, _ = kg.ingest(DOCS["pm-01"])
    assert duplicate and (again.nodes_added, again.edges_added) == (0, 0)
    assert conceptualise(kg._extract(DOCS["pm-01"]), kg.llm)  # recorded, so it replays again
