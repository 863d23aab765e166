"""Exports in atlas-rag's layout: Neo4j ``neo4j-admin database import`` CSVs, and GraphML; CSV import back.

Files (headers as neo4j-admin reads them):
- ``triple_nodes.csv``   ``name:ID,type,concepts,:LABEL``                       (label ``Node``)
- ``triple_edges.csv``   ``:START_ID,:END_ID,relation,kind,concepts,provenance,:TYPE``  (type ``Relation``)
- ``text_nodes.csv``     ``text_id:ID,kind,:LABEL``                             (label ``Text``: the sources)
- ``text_edges.csv``     ``:START_ID,:END_ID,:TYPE``                            (node → source, type ``Source``)
- ``concept_nodes.csv``  ``concept_id:ID,name,:LABEL``                          (label ``Concept``)
- ``concept_edges.csv``  ``:START_ID,:END_ID,relation,:TYPE``                   (node → concept, ``Concept``)
Lists inside a cell are ``|``-separated; provenance is ``source#chunk``.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from services.common.pb.faultline.v1 import kg_pb2
from services.kg_builder.extraction import Extraction
from services.kg_builder.store import KgStore

FILES = ("triple_nodes.csv", "triple_edges.csv", "text_nodes.csv", "text_edges.csv", "concept_nodes.csv",
         "concept_edges.csv")  # fmt: skip


def concept_id(name: str) -> str:
    return hashlib.sha256((name + "_concept").encode()).hexdigest()  # atlas-rag's concept id


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def export_csv(store: KgStore, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    concepts = store.item_concepts()
    edges = store.edges()
    sources = {s for _, prov in edges for s, _ in prov}
    mentions = sorted({(name, s) for e, prov in edges for s, _ in prov for name in (e.head, e.tail)})
    kinds = store.source_kinds()
    node_concepts = sorted({(n, c) for (n, kind), cs in concepts.items() if kind != "relation" for c in cs})
    return [
        _write(
            directory / FILES[0],
            ["name:ID", "type", "concepts", ":LABEL"],
            [[n, t, "|".join(sorted(concepts.get((n, _kind(t)), []))), "Node"] for _, n, t in store.node_names()],
        ),
        _write(
            directory / FILES[1],
            [":START_ID", ":END_ID", "relation", "kind", "concepts", "provenance", ":TYPE"],
            [
                [
                    e.head,
                    e.tail,
                    e.relation,
                    e.kind,
                    "|".join(sorted(concepts.get((e.relation, "relation"), []))),
                    "|".join(f"{s}#{c}" for s, c in prov),
                    "Relation",
                ]
                for e, prov in edges
            ],
        ),
        _write(
            directory / FILES[2],
            ["text_id:ID", "kind", ":LABEL"],
            [[s, kinds.get(s, ""), "Text"] for s in sorted(sources)],
        ),
        _write(directory / FILES[3], [":START_ID", ":END_ID", ":TYPE"], [[n, s, "Source"] for n, s in mentions]),
        _write(
            directory / FILES[4],
            ["concept_id:ID", "name", ":LABEL"],
            [[concept_id(c), c, "Concept"] for c in sorted({c for cs in concepts.values() for c in cs})],
        ),
        _write(
            directory / FILES[5],
            [":START_ID", ":END_ID", "relation", ":TYPE"],
            [[n, concept_id(c), "has_concept", "Concept"] for n, c in node_concepts],
        ),
    ]


def _kind(node_type: str) -> str:
    return "event" if node_type == "event" else "entity"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def import_csv(directory: Path, store: KgStore) -> KgStore:
    """Load an export into ``store``: the same nodes, edges, provenance and concept links."""
    types = {r["name:ID"]: r["type"] for r in _rows(directory / FILES[0])}
    kinds = {r["text_id:ID"]: r["kind"] for r in _rows(directory / FILES[2])}
    by_source: dict[str, Extraction] = {}
    for r in _rows(directory / FILES[1]):
        for ref in r["provenance"].split("|"):
            source, _, chunk = ref.rpartition("#")
            extraction = by_source.setdefault(source, Extraction(source, kinds.get(source, "")))
            extraction.triples.append(
                kg_pb2.Triple(
                    head=r[":START_ID"], relation=r["relation"], tail=r[":END_ID"], head_type=types[r[":START_ID"]],
                    tail_type=types[r[":END_ID"]], kind=r["kind"],
                    provenance=kg_pb2.Provenance(source_id=source, chunk=int(chunk)),
                )
            )  # fmt: skip
    links = [
        (r["name:ID"], _kind(r["type"]), c) for r in _rows(directory / FILES[0]) for c in r["concepts"].split("|") if c
    ]
    links += [
        (r["relation"], "relation", c) for r in _rows(directory / FILES[1]) for c in r["concepts"].split("|") if c
    ]
    for number, extraction in enumerate(sorted(by_source.values(), key=lambda e: e.source_id)):
        # concept links ride with the first source: they belong to the graph, not to one source
        store.ingest(extraction, content_hash="imported", links=links if number == 0 else ())
    return store


def export_graphml(store: KgStore, path: Path) -> Path:
    import networkx as nx

    concepts = store.item_concepts()
    graph = nx.MultiDiGraph()
    for _, name, node_type in store.node_names():
        graph.add_node(name, type=node_type, concepts="|".join(sorted(concepts.get((name, _kind(node_type)), []))))
    for e, prov in store.edges():
        graph.add_edge(
            e.head, e.tail, relation=e.relation, kind=e.kind, provenance="|".join(f"{s}#{c}" for s, c in prov)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    nx.write_graphml(graph, path)
    return path
