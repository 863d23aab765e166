"""The failure knowledge base: labelled failures at two granularities, with their embeddings, in SQLite.

- ``step`` cases (fine-grained): one agent's erroneous step; ``trace`` cases (coarse): a whole run.
- Normal references (``failure_type == ""``): steps and traces known to be fine — the training runs'
  correct steps and the steps of alerts an expert rejected. Detection compares a step with both sides.
- Every change bumps the version; each case records the version that added it. Embeddings belong to
  one encoder version (kept in ``meta``); a knowledge base built with another encoder is refused,
  because its vectors would live in a different space.
- Search is exact cosine kNN over an in-memory matrix per (level, system), rebuilt when the version moves.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.pb.faultline.v1 import detector_pb2

STEP, TRACE = detector_pb2.CASE_LEVEL_STEP, detector_pb2.CASE_LEVEL_TRACE
NORMAL = ""

MITIGATIONS = {
    # model-centric reflection for one agent's mistake, orchestration-centric for coordination failures
    "decomposition_error": "re-plan: re-run the planner with the task's full requirement list as a hint",
    "incorrect_code": "re-run the coder with the failing behaviour as a hint; require a test for it",
    "ignored_feedback": "roll back to the reviewer's request and re-run the coder, quoting the request",
    "premature_termination": "roll back and require a test run before the reviewer may approve",
    "round_limit": "re-plan: stop the loop and conclude from the evidence already gathered",
    "critical_trace_miss": "re-run the trace agent with the incident window and the failing operation",
    "metric_query_error": "re-run the metrics agent, checking the query's service and labels against the suspect",
    "information_withholding": "re-run the agent and require its summary to quote the tool output's finding",
    "localisation_error": "re-run the reporter with the consolidated evidence as a hint",
}


@dataclass(frozen=True)
class Case:
    id: str
    level: int
    system: str
    failure_type: str
    agent: str = ""
    step_index: int = -1
    run_id: str = ""
    mitigation: str = ""
    source: str = "seed"
    description: str = ""
    version: int = 0
    created_at: float = 0.0

    @property
    def normal(self) -> bool:
        return self.failure_type == NORMAL

    def to_proto(self) -> detector_pb2.FailureCase:
        message = detector_pb2.FailureCase(
            id=self.id,
            level=self.level,  # type: ignore[arg-type]
            system=self.system,
            failure_type=self.failure_type,
            agent=self.agent,
            step_index=self.step_index,
            run_id=self.run_id,
            mitigation=self.mitigation,
            source=self.source,
            description=self.description,
            version=self.version,
        )
        message.created_at.FromNanoseconds(int(self.created_at * 1e9))
        return message


@dataclass(frozen=True)
class Match:
    case: Case
    similarity: float


class _Index:
    def __init__(self, cases: list[Case], vectors: np.ndarray) -> None:
        self.cases = cases
        self.vectors = vectors
        self.agents = np.array([c.agent for c in cases], dtype=object)
        self.normal = np.array([c.normal for c in cases], dtype=bool)
        self.runs = np.array([c.run_id for c in cases], dtype=object)


class EncoderMismatch(RuntimeError):
    def __init__(self, message: str, stored: str) -> None:
        super().__init__(message)
        self.stored = stored  # the encoder version the knowledge base's vectors belong to


class KnowledgeBase:
    def __init__(self, path: Path | str = ":memory:", encoder_version: str = "") -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.RLock()
        self._indexes: dict[tuple[int, str], _Index] = {}
        self._indexed_version = -1
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS cases (id TEXT PRIMARY KEY, level INTEGER, system TEXT, failure_type TEXT,"
                " agent TEXT, step_index INTEGER, run_id TEXT, mitigation TEXT, source TEXT, description TEXT,"
                " version INTEGER, created_at REAL, deleted INTEGER DEFAULT 0, embedding BLOB)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS cases_by_system ON cases (level, system, deleted)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
            if encoder_version:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('encoder_version', ?)", (encoder_version,))
        stored = self._meta("encoder_version")
        if encoder_version and stored != encoder_version:
            self._db.close()
            raise EncoderMismatch(
                f"knowledge base at {path} holds embeddings of encoder {stored}, not {encoder_version}", stored
            )
        self.encoder_version = stored or encoder_version

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else ""

    @property
    def version(self) -> int:
        with self._lock:
            return int(self._meta("version"))

    def add(self, cases: Iterable[Case], vectors: np.ndarray) -> list[Case]:
        """Store cases with their embeddings (one row each) under one new version."""
        with self._lock, self._db:
            version = self.version + 1
            now = time.time()
            stored = []
            for case, vector in zip(cases, vectors, strict=True):
                case = Case(
                    **{**case.__dict__, "id": case.id or uuid.uuid4().hex, "version": version, "created_at": now}
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO cases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,?)",
                    (
                        case.id,
                        case.level,
                        case.system,
                        case.failure_type,
                        case.agent,
                        case.step_index,
                        case.run_id,
                        case.mitigation,
                        case.source,
                        case.description,
                        version,
                        now,
                        np.asarray(vector, np.float16).tobytes(),
                    ),
                )
                stored.append(case)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
            return stored

    def delete(self, case_id: str) -> bool:
        with self._lock, self._db:
            if not self._db.execute("UPDATE cases SET deleted = 1 WHERE id = ? AND deleted = 0", (case_id,)).rowcount:
                return False
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(self.version + 1),))
            return True

    def list(
        self, system: str = "", level: int = 0, failure_type: str = "", include_normal: bool = False, limit: int = 0
    ) -> list[Case]:
        query = "SELECT * FROM cases WHERE deleted = 0"
        args: list[object] = []
        for column, value in (("system", system), ("level", level), ("failure_type", failure_type)):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        if not include_normal and not failure_type:
            query += " AND failure_type != ''"
        query += " ORDER BY version DESC, id" + (f" LIMIT {int(limit)}" if limit > 0 else "")
        with self._lock:
            return [self._case(row) for row in self._db.execute(query, args)]

    @staticmethod
    def _case(row: tuple) -> Case:
        return Case(*row[:12])

    def _index(self, level: int, system: str) -> _Index | None:
        with self._lock:
            version = self.version
            if version != self._indexed_version:
                self._indexes.clear()
                self._indexed_version = version
            key = (level, system)
            if key not in self._indexes:
                rows = self._db.execute(
                    "SELECT * FROM cases WHERE deleted = 0 AND level = ? AND system = ?", (level, system)
                ).fetchall()
                if not rows:
                    return None
                vectors = np.stack([np.frombuffer(r[13], np.float16).astype(np.float32) for r in rows])
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
                self._indexes[key] = _Index([self._case(r) for r in rows], vectors)
            return self._indexes[key]

    def search(
        self,
        level: int,
        system: str,
        vector: np.ndarray,
        k: int = 5,
        *,
        normal: bool = False,
        agent: str | None = None,
        exclude_run: str | None = None,
    ) -> list[Match]:
        """The k most similar failure cases (or normal references) of ``system``, best first."""
        index = self._index(level, system)
        if index is None:
            return []
        keep = index.normal == normal
        if agent is not None:
            keep &= index.agents == agent
        if exclude_run is not None:
            keep &= index.runs != exclude_run  # leave-one-run-out when calibrating on the seed runs
        candidates = np.flatnonzero(keep)
        if len(candidates) == 0:
            return []
        sims = index.vectors[candidates] @ (vector / max(float(np.linalg.norm(vector)), 1e-9))
        top = np.argsort(-sims)[:k] if len(sims) <= k else np.argpartition(-sims, k)[:k]
        top = top[np.argsort(-sims[top])]
        return [Match(index.cases[candidates[i]], float(sims[i])) for i in top]
