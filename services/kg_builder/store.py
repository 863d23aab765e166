"""The embedded graph store: one SQLite file with nodes, edges, provenance, concepts and failure records.

Upserts are idempotent: a node is its normalised name, an edge its (head, relation, tail), provenance
its (edge, source id, chunk); a source already ingested with the same content hash is skipped before any
LLM call. Counts of what an ingest *added* come from the inserts that were not ignored.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.kg_builder.concepts import Resolution
from services.kg_builder.extraction import Extraction, FailureRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (id TEXT PRIMARY KEY, kind TEXT NOT NULL, content_hash TEXT NOT NULL,
    seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edges (id INTEGER PRIMARY KEY, head INTEGER NOT NULL, relation TEXT NOT NULL,
    tail INTEGER NOT NULL, kind TEXT NOT NULL, UNIQUE (head, relation, tail));
CREATE INDEX IF NOT EXISTS edges_tail ON edges (tail);
CREATE TABLE IF NOT EXISTS provenance (edge INTEGER NOT NULL, source_id TEXT NOT NULL, chunk INTEGER NOT NULL,
    PRIMARY KEY (edge, source_id, chunk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS concepts (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (raw TEXT PRIMARY KEY, concept TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS item_concepts (item TEXT NOT NULL, item_kind TEXT NOT NULL, concept TEXT NOT NULL,
    PRIMARY KEY (item, item_kind, concept)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (source_id TEXT PRIMARY KEY, node TEXT NOT NULL, system TEXT, incident_id TEXT,
    service TEXT, fault_type TEXT, mitigation TEXT, summary TEXT, text TEXT, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS growth (seq INTEGER PRIMARY KEY, nodes INTEGER, edges INTEGER, concepts INTEGER,
    raw_concepts INTEGER);
"""


@dataclass(frozen=True)
class Added:
    nodes: int
    edges: int
    concepts: int


@dataclass(frozen=True)
class EdgeRow:
    head: str
    relation: str
    tail: str
    kind: str


class KgStore:
    def __init__(self, path: Path | str = ":memory:") -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self.version = 0  # bumped by every ingest that changed something: caches key on it

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: object) -> int:
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    # -- writes ------------------------------------------------------------------------------------

    def is_duplicate(self, source_id: str, content_hash: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT content_hash FROM sources WHERE id = ?", (source_id,)).fetchone()
        return row is not None and row[0] == content_hash

    def ingest(
        self,
        extraction: Extraction,
        content_hash: str,
        links: Iterable[tuple[str, str, str]] = (),
        resolution: Resolution | None = None,
        failure_vector: np.ndarray | None = None,
    ) -> Added:
        """Upsert one source's triples, concept links and failure record in one transaction."""
        resolution = resolution or Resolution({})
        with self._tx() as db:
            nodes_before, edges_before = self._count(db, "nodes"), self._count(db, "edges")
            for t in extraction.triples:
                db.execute("INSERT OR IGNORE INTO nodes (name, type) VALUES (?, ?)", (t.head, t.head_type))
                db.execute("INSERT OR IGNORE INTO nodes (name, type) VALUES (?, ?)", (t.tail, t.tail_type))
                db.execute(
                    "INSERT OR IGNORE INTO edges (head, relation, tail, kind) SELECT h.id, ?, t.id, ? "
                    "FROM nodes h, nodes t WHERE h.name = ? AND t.name = ?",
                    (t.relation, t.kind, t.head, t.tail),
                )
                db.execute(
                    "INSERT OR IGNORE INTO provenance SELECT e.id, ?, ? FROM edges e JOIN nodes h ON h.id = e.head "
                    "JOIN nodes t ON t.id = e.tail WHERE h.name = ? AND e.relation = ? AND t.name = ?",
                    (t.provenance.source_id, t.provenance.chunk, t.head, t.relation, t.tail),
                )
            concepts_before = self._count(db, "concepts")
            db.executemany(
                "INSERT OR IGNORE INTO concepts (name, vector) VALUES (?, ?)",
                [(n, v.astype(np.float32).tobytes()) for n, v in resolution.new],
            )
            db.executemany("INSERT OR IGNORE INTO aliases VALUES (?, ?)", resolution.canonical.items())
            db.executemany(
                "INSERT OR IGNORE INTO item_concepts VALUES (?, ?, ?)",
                [(item, kind, resolution.canonical.get(raw, raw)) for item, kind, raw in links if raw],
            )
            if extraction.failure is not None and failure_vector is not None:
                f = extraction.failure
                db.execute(
                    "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (f.source_id, f.node, f.system, f.incident_id, f.service, f.fault_type, f.mitigation,
                     f.summary, f.text, failure_vector.astype(np.float32).tobytes()),
                )  # fmt: skip
            seq = self._count(db, "sources") + 1
            db.execute(
                "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)",
                (extraction.source_id, extraction.kind, content_hash, seq),
            )
            added = Added(
                self._count(db, "nodes") - nodes_before,
                self._count(db, "edges") - edges_before,
                self._count(db, "concepts") - concepts_before,
            )
            db.execute(
                "INSERT OR REPLACE INTO growth VALUES ((SELECT COUNT(*) FROM sources), ?, ?, ?, ?)",
                (self._count(db, "nodes"), self._count(db, "edges"), self._count(db, "concepts"),
                 self._count(db, "aliases")),
            )  # fmt: skip
            self.version += 1
        return added

    @staticmethod
    def _count(db: sqlite3.Connection, table: str) -> int:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # table names are constants

    # -- reads -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self._count(self._db, t) for t in ("sources", "nodes", "edges", "concepts", "aliases")}

    def concepts(self) -> list[tuple[str, np.ndarray]]:
        with self._lock:
            rows = self._db.execute("SELECT name, vector FROM concepts ORDER BY id").fetchall()
        return [(n, np.frombuffer(v, np.float32)) for n, v in rows]

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT raw, concept FROM aliases").fetchall())

    def concept_members(self, top: int) -> list[tuple[str, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT concept, COUNT(*) c FROM item_concepts GROUP BY concept ORDER BY c DESC, concept LIMIT ?",
                (top,),
            ).fetchall()

    def item_concepts(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        with self._lock:
            for item, kind, concept in self._db.execute("SELECT item, item_kind, concept FROM item_concepts"):
                out.setdefault((item, kind), []).append(concept)
        return out

    def growth(self) -> list[tuple[int, int, int, int, int]]:
        with self._lock:
            return self._db.execute("SELECT * FROM growth ORDER BY seq").fetchall()

    def node_names(self) -> list[tuple[int, str, str]]:
        with self._lock:
            return self._db.execute("SELECT id, name, type FROM nodes ORDER BY id").fetchall()

    def edge_ids(self) -> list[tuple[int, int]]:
        with self._lock:
            return self._db.execute("SELECT head, tail FROM edges").fetchall()

    def edges(self) -> list[tuple[EdgeRow, list[tuple[str, int]]]]:
        """Every edge with its provenance (source id, chunk)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT e.id, h.name, e.relation, t.name, e.kind FROM edges e JOIN nodes h ON h.id = e.head "
                "JOIN nodes t ON t.id = e.tail ORDER BY e.id"
            ).fetchall()
            prov: dict[int, list[tuple[str, int]]] = {}
            for edge, source, chunk in self._db.execute("SELECT edge, source_id, chunk FROM provenance"):
                prov.setdefault(edge, []).append((source, chunk))
        return [(EdgeRow(h, r, t, k), sorted(prov.get(i, []))) for i, h, r, t, k in rows]

    def edges_of(self, name: str, limit: int) -> list[tuple[EdgeRow, list[tuple[str, int]]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT e.id, h.name, e.relation, t.name, e.kind FROM edges e JOIN nodes h ON h.id = e.head "
                "JOIN nodes t ON t.id = e.tail WHERE h.name = ? OR t.name = ? ORDER BY e.id LIMIT ?",
                (name, name, limit),
            ).fetchall()
            out = []
            for i, h, r, t, k in rows:
                prov = self._db.execute("SELECT source_id, chunk FROM provenance WHERE edge = ?", (i,)).fetchall()
                out.append((EdgeRow(h, r, t, k), sorted(prov)))
        return out

    def has_node(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM nodes WHERE name = ?", (name,)).fetchone() is not None

    def failures(self) -> tuple[list[FailureRecord], np.ndarray]:
        with self._lock:
            rows = self._db.execute(
                "SELECT source_id, node, system, incident_id, service, fault_type, mitigation, summary, text, vector "
                "FROM failures ORDER BY rowid"
            ).fetchall()
        records = [FailureRecord(*r[:9]) for r in rows]
        vectors = np.stack([np.frombuffer(r[9], np.float32) for r in rows]) if rows else np.zeros((0, 384), np.float32)
        return records, vectors

    def mitigations_for(self, names: Iterable[str]) -> list[str]:
        """What the graph says mitigates any of these nodes (a runbook's advice for a fault type or service)."""
        names = list(names)
        if not names:
            return []
        marks = ",".join("?" * len(names))
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT t.name FROM edges e JOIN nodes h ON h.id = e.head JOIN nodes t ON t.id = e.tail "
                f"WHERE h.name IN ({marks}) AND e.relation IN ('mitigated by', 'resolved by', 'fixed by') "
                "ORDER BY e.id",
                names,
            ).fetchall()
        return [r[0] for r in rows]

    def source_kinds(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT id, kind FROM sources").fetchall())
