"""The kg-builder application: ingest (bus and gRPC), KgUpdate events, and the KnowledgeGraphService API."""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from pathlib import Path

import grpc
import networkx as nx
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter, Histogram

from services.common.bus import Delivery, PermanentError, Publisher, TransientError
from services.common.llm import LLMClient, LLMError
from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, kg_pb2_grpc, rca_pb2
from services.common.text_encoder import SentenceEncoder
from services.kg_builder.concepts import ConceptSchema, conceptualise
from services.kg_builder.export import export_csv, export_graphml
from services.kg_builder.extraction import (
    Extraction,
    extract_alert,
    extract_document,
    extract_failure_case,
    extract_rca_report,
    norm,
)
from services.kg_builder.retrieval import Query, Retriever, alert_query, incident_query, text_query
from services.kg_builder.store import EdgeRow, KgStore

log = logging.getLogger(__name__)

INGESTED = Counter("faultline_kg_ingested_total", "Sources ingested, by kind and outcome", ["kind", "outcome"])
QUERY_SECONDS = Histogram("faultline_kg_query_seconds", "KnowledgeGraphService query time", ["rpc"])


def content_hash(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


class KnowledgeGraph:
    """Extraction → conceptualisation → schema merge → store, one source at a time."""

    def __init__(
        self,
        store: KgStore,
        encoder: SentenceEncoder,
        llm: LLMClient | None = None,
        publisher: Publisher | None = None,
        updates_topic: str = "",
        merge_threshold: float = 0.85,
        chunk_chars: int | None = None,
    ) -> None:
        self.store, self.encoder, self.llm = store, encoder, llm
        self.publisher, self.updates_topic = publisher, updates_topic
        self.schema = ConceptSchema(encoder, merge_threshold)
        self.schema.load(store.concepts(), store.aliases())
        self.retriever = Retriever(store, encoder)
        self.chunk_chars = chunk_chars
        self._lock = threading.Lock()  # one source at a time: the schema merge is sequential
        self._paths_graph: tuple[int, nx.Graph] | None = None

    # -- ingest --------------------------------------------------------------------------------------

    def ingest(self, item: Message) -> tuple[kg_pb2.KgUpdate, bool, Extraction | None]:
        """Ingest one source; (update, duplicate, extraction). ValueError: the source is unusable."""
        kind = _kind(item)
        source_id = item.id  # type: ignore[attr-defined]
        digest = content_hash(item)
        with self._lock:
            if self.store.is_duplicate(source_id, digest):
                INGESTED.labels(kind, "duplicate").inc()
                # Published again under the first one's event id: a crash between storing the source and
                # publishing its update would otherwise leave the update unsent for good.
                update = self._update(source_id, kind, None, [])
                self._publish(update, source_id, digest)
                return update, True, None
            extraction = self._extract(item)
            links = conceptualise(extraction, self.llm)
            resolution = self.schema.resolve(raw for _, _, raw in links)
            failure_vector = None
            if extraction.failure is not None:
                failure_vector = self.encoder.encode([extraction.failure.text])[0]
            added = self.store.ingest(extraction, digest, links, resolution, failure_vector)
            self.schema.commit(resolution)
        INGESTED.labels(kind, "added").inc()
        update = self._update(source_id, kind, added, extraction.triples)
        self._publish(update, source_id, digest)
        return update, False, extraction

    def _publish(self, update: kg_pb2.KgUpdate, source_id: str, digest: str) -> None:
        if self.publisher is not None and self.updates_topic:
            self.publisher.publish(self.updates_topic, update, key=source_id, subject=source_id, event_id=digest[:32])

    def _extract(self, item: Message) -> Extraction:
        if isinstance(item, kg_pb2.Document):
            if self.llm is None:
                raise ValueError("documents need an LLM: set llm_base_url")
            if self.chunk_chars:
                return extract_document(item, self.llm, self.chunk_chars)
            return extract_document(item, self.llm)
        if isinstance(item, rca_pb2.RcaReport):
            return extract_rca_report(item)
        if isinstance(item, detector_pb2.Alert):
            return extract_alert(item)
        if isinstance(item, detector_pb2.FailureCase):
            return extract_failure_case(item)
        raise ValueError(f"cannot ingest a {type(item).__name__}")

    def _update(self, source_id: str, kind: str, added, triples) -> kg_pb2.KgUpdate:  # type: ignore[no-untyped-def]
        counts = self.store.counts()
        update = kg_pb2.KgUpdate(
            source_id=source_id,
            source_kind=kind,
            nodes_added=added.nodes if added else 0,
            edges_added=added.edges if added else 0,
            concepts_added=added.concepts if added else 0,
            schema_size=counts["concepts"],
            total_nodes=counts["nodes"],
            total_edges=counts["edges"],
            services=sorted({t.tail for t in triples if t.tail_type == "service"}),
        )
        update.created_at.GetCurrentTime()
        return update

    # -- bus handlers ----------------------------------------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        try:
            self.ingest(delivery.message)
        except ValueError as error:
            raise PermanentError(str(error)) from error
        except LLMError as error:
            # an unreachable LLM may come back; an answer invalid twice will not
            if "invalid answer" in str(error):
                raise PermanentError(str(error)) from error
            raise TransientError(str(error)) from error

    # -- queries ---------------------------------------------------------------------------------------

    def similar(self, query: Query, k: int, method: str) -> list[kg_pb2.SimilarFailure]:
        out = []
        for failure, score in self.retriever.search(query, k, method):
            mitigation = failure.mitigation
            if not mitigation:
                advice = self.store.mitigations_for([failure.node, failure.fault_type, failure.service])
                mitigation = advice[0] if advice else ""
            out.append(
                kg_pb2.SimilarFailure(
                    source_id=failure.source_id,
                    score=score,
                    root_cause_service=failure.service,
                    fault_type=failure.fault_type,
                    mitigation=mitigation,
                    summary=failure.summary,
                    incident_id=failure.incident_id,
                    system=failure.system,
                )
            )
        return out

    def paths(self, source: str, target: str, max_hops: int, limit: int) -> list[list[tuple[EdgeRow, list]]]:
        """Shortest simple paths first, at most ``max_hops`` edges, over the graph taken as undirected."""
        with self._lock:
            if self._paths_graph is None or self._paths_graph[0] != self.store.version:
                graph = nx.Graph()
                for edge, prov in self.store.edges():
                    graph.add_edge(edge.head, edge.tail, row=edge, prov=prov)  # one edge per pair is enough
                self._paths_graph = (self.store.version, graph)
            graph = self._paths_graph[1]
        if source not in graph or target not in graph:
            return []
        out: list[list[tuple[EdgeRow, list]]] = []
        for nodes in nx.shortest_simple_paths(graph, source, target):
            if len(nodes) - 1 > max_hops or len(out) >= limit:
                break
            out.append([(graph.edges[a, b]["row"], graph.edges[a, b]["prov"]) for a, b in itertools.pairwise(nodes)])
        return out


def _kind(item: Message) -> str:
    return {
        kg_pb2.Document: "document",
        rca_pb2.RcaReport: "rca-report",
        detector_pb2.Alert: "alert",
        detector_pb2.FailureCase: "failure-case",
    }.get(type(item), "unknown")


def _edge(row: EdgeRow, prov: list[tuple[str, int]]) -> kg_pb2.Edge:
    return kg_pb2.Edge(
        head=row.head,
        relation=row.relation,
        tail=row.tail,
        kind=row.kind,
        provenance=[kg_pb2.Provenance(source_id=s, chunk=c) for s, c in prov],
    )


class KnowledgeGraphServicer(kg_pb2_grpc.KnowledgeGraphServiceServicer):
    def __init__(self, kg: KnowledgeGraph, export_root: Path | None = None) -> None:
        self.kg = kg
        self.export_root = export_root  # exports may only be written below this directory

    @staticmethod
    def _invalid(context: grpc.ServicerContext, reason: str):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)

    def Ingest(self, request, context):  # type: ignore[no-untyped-def]
        which = request.WhichOneof("item")
        if which is None:
            self._invalid(context, "IngestRequest needs one of document, rca_report, alert, failure_case")
        item: Message = getattr(request, which)
        if which == "rca_report":
            try:
                item = rca_pb2.RcaReport.FromString(request.rca_report)
            except DecodeError as error:
                self._invalid(context, f"rca_report is not a serialised RcaReport: {error}")
        try:
            update, duplicate, extraction = self.kg.ingest(item)
        except ValueError as error:
            self._invalid(context, str(error))
        except LLMError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return kg_pb2.IngestResponse(
            update=update, duplicate=duplicate, triples=extraction.triples if extraction else []
        )

    def Neighbours(self, request, context):  # type: ignore[no-untyped-def]
        name = norm(request.entity)
        if not name:
            self._invalid(context, "entity is empty")
        if request.limit < 0:
            self._invalid(context, "limit must not be negative")
        if not self.kg.store.has_node(name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no node {name!r}")
        with QUERY_SECONDS.labels("Neighbours").time():
            edges = self.kg.store.edges_of(name, request.limit or 50)
        return kg_pb2.NeighboursResponse(entity=name, edges=[_edge(e, p) for e, p in edges])

    def Paths(self, request, context):  # type: ignore[no-untyped-def]
        source, target = norm(request.source), norm(request.target)
        if not source or not target:
            self._invalid(context, "source and target are required")
        if not 0 <= request.max_hops <= 6:
            self._invalid(context, "max_hops must be within 0..6 (0: 3)")
        if request.limit < 0:
            self._invalid(context, "limit must not be negative")
        with QUERY_SECONDS.labels("Paths").time():
            found = self.kg.paths(source, target, request.max_hops or 3, request.limit or 10)
        paths = []
        for hops in found:
            nodes = [source]
            for row, _ in hops:
                nodes.append(row.tail if row.head == nodes[-1] else row.head)
            paths.append(kg_pb2.GraphPath(nodes=nodes, edges=[_edge(r, p) for r, p in hops]))
        return kg_pb2.PathsResponse(paths=paths)

    def ServiceFacts(self, request, context):  # type: ignore[no-untyped-def]
        name = norm(request.service)
        if not name:
            self._invalid(context, "service is empty")
        with QUERY_SECONDS.labels("ServiceFacts").time():
            edges = self.kg.store.edges_of(name, request.limit or 100)
            failures = self.kg.similar(Query(name, [(name, 1.0)], []), 10, "graph")
        return kg_pb2.ServiceFactsResponse(
            service=name,
            facts=[_edge(e, p) for e, p in edges],
            failures=[f for f in failures if f.root_cause_service == name],
        )

    def SimilarFailures(self, request, context):  # type: ignore[no-untyped-def]
        which = request.WhichOneof("query")
        if which is None:
            self._invalid(context, "SimilarFailuresRequest needs one of incident, alert, text")
        if request.k < 0 or request.k > 100:
            self._invalid(context, "k must be within 0..100 (0: 5)")
        method = request.method or "graph"
        if method not in ("graph", "embedding"):
            self._invalid(context, f"unknown method {method!r}: graph or embedding")
        if which == "incident":
            if not (request.incident.summary or request.incident.suspected_services or request.incident.evidence):
                self._invalid(context, "the incident has no summary, suspected services or evidence to match")
            query = incident_query(request.incident)
        elif which == "alert":
            if not request.alert.failure_type:
                self._invalid(context, "the alert has no failure_type")
            query = alert_query(request.alert)
        else:
            if not request.text.strip():
                self._invalid(context, "text is empty")
            query = text_query(request.text)
        with QUERY_SECONDS.labels("SimilarFailures").time():
            failures = self.kg.similar(query, request.k or 5, method)
        return kg_pb2.SimilarFailuresResponse(failures=failures, method=method)

    def Schema(self, request, context):  # type: ignore[no-untyped-def]
        if request.top < 0:
            self._invalid(context, "top must not be negative")
        counts = self.kg.store.counts()
        return kg_pb2.SchemaResponse(
            concepts=counts["concepts"],
            raw_concepts=counts["aliases"],
            top=[
                kg_pb2.ConceptCount(concept=c, members=m) for c, m in self.kg.store.concept_members(request.top or 20)
            ],
            growth=[
                kg_pb2.SchemaGrowthPoint(sources=s, nodes=n, edges=e, concepts=c, raw_concepts=r)
                for s, n, e, c, r in self.kg.store.growth()
            ],
            nodes=counts["nodes"],
            edges=counts["edges"],
        )

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        if not request.directory:
            self._invalid(context, "directory is required")
        directory = Path(request.directory)
        if self.export_root is not None:
            directory = (self.export_root / directory).resolve()
            if not directory.is_relative_to(self.export_root.resolve()):
                self._invalid(context, f"directory must be inside the export root {self.export_root}")
        files = export_csv(self.kg.store, directory)
        if request.graphml:
            files.append(export_graphml(self.kg.store, directory / "graph.graphml"))
        return kg_pb2.ExportResponse(files=[str(f) for f in files])
