"""Incidents from system states: hysteresis over the embedding service's per-window anomaly scores.

Per system: an incident opens after ``open_after`` consecutive anomalous windows (score ≥ ``threshold``),
stays one incident while anomalous windows keep coming (deduplicated: at most one open per system),
and resolves after ``resolve_after`` consecutive normal windows. Time is event time (the windows'),
so replays and late data give the same incidents. Windows are handled in arrival order; a window that
ends before the last one seen of its system is ignored (duplicate or out of order).

With a ``path`` the tracker's state survives a crash: :meth:`IncidentTracker.save` writes what changed
(each system's hysteresis and its incidents) to SQLite, and a new tracker on the same file goes on
where the old one stopped, so a restart in the middle of a fault neither opens a second incident for
it nor forgets the open one. The caller saves after publishing what :meth:`~IncidentTracker.observe`
returned: a crash between the two replays the window, and since an incident's id is derived from its
system and first window, the replay re-publishes the same incident, not a new one.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from services.common.pb.faultline.v1 import common_pb2, detector_pb2, embedding_pb2

OPEN, RESOLVED = detector_pb2.INCIDENT_STATUS_OPEN, detector_pb2.INCIDENT_STATUS_RESOLVED


@dataclass(frozen=True)
class IncidentPolicy:
    """When windows make an incident. A window is anomalous when the embedding service flagged it (its
    anomaly head's calibrated threshold, ``StateEmbedding.anomalous``) or its score reaches ``threshold``:
    the flag decides for states from a calibrated head, the threshold for states without one."""

    threshold: float = 0.5
    open_after: int = 2
    resolve_after: int = 3
    max_kept: int = 1000  # resolved incidents kept for ListIncidents


@dataclass
class _SystemState:
    anomalous_run: list[embedding_pb2.StateEmbedding] = field(default_factory=list)
    normal_run: int = 0
    last_end_ns: int = -1
    open: detector_pb2.Incident | None = None
    services: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)


def _severity(peak: float) -> int:
    if peak >= 0.9:
        return common_pb2.SEVERITY_CRITICAL
    if peak >= 0.7:
        return common_pb2.SEVERITY_ERROR
    return common_pb2.SEVERITY_WARNING


def incident_id(system: str, first_window: embedding_pb2.StateEmbedding) -> str:
    """The same for the same system and first anomalous window: a replayed window re-opens the same incident."""
    start = first_window.window.start.ToNanoseconds()
    return uuid.uuid5(uuid.NAMESPACE_URL, f"faultline:incident/{system}/{start}").hex


class IncidentTracker:
    def __init__(self, policy: IncidentPolicy | None = None, path: Path | None = None) -> None:
        self.policy = policy or IncidentPolicy()
        self._systems: dict[str, _SystemState] = defaultdict(_SystemState)
        self._incidents: dict[str, detector_pb2.Incident] = {}
        self._lock = threading.Lock()
        self._changed: set[str] = set()  # systems whose state changed since the last save
        self._touched: set[str] = set()  # incidents opened, extended or resolved since then
        self._evicted: set[str] = set()  # and those no longer kept
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.executescript(_SCHEMA)
            self._load()

    def observe(self, state: embedding_pb2.StateEmbedding) -> detector_pb2.Incident | None:
        """Feed one window; returns the incident when it opens, changes status, or None."""
        with self._lock:
            s = self._systems[state.system]
            end_ns = state.window.end.ToNanoseconds()
            if end_ns <= s.last_end_ns:
                return None
            self._changed.add(state.system)
            s.last_end_ns = end_ns
            anomalous = state.anomalous or state.anomaly_score >= self.policy.threshold
            if anomalous:
                s.normal_run = 0
                if s.open is None:
                    s.anomalous_run.append(state)
                    if len(s.anomalous_run) >= self.policy.open_after:
                        return self._open(state.system, s)
                    return None
                self._extend(s, state)
                return None
            s.anomalous_run.clear()
            if s.open is None:
                return None
            s.normal_run += 1
            if s.normal_run >= self.policy.resolve_after:
                return self._resolve(s, state)
            return None

    def _open(self, system: str, s: _SystemState) -> detector_pb2.Incident:
        first = s.anomalous_run[0]
        incident = detector_pb2.Incident(id=incident_id(system, first), system=system, status=OPEN)
        incident.opened_at.CopyFrom(first.window.start)
        incident.window.start.CopyFrom(first.window.start)
        s.open, s.services, s.types = incident, Counter(), Counter()
        for state in s.anomalous_run:
            self._extend(s, state)
        s.anomalous_run = []
        self._remember(incident)
        self._touched.add(incident.id)
        return self._copy(incident)

    def _extend(self, s: _SystemState, state: embedding_pb2.StateEmbedding) -> None:
        incident = s.open
        assert incident is not None
        self._touched.add(incident.id)
        incident.window.end.CopyFrom(state.window.end)
        incident.anomalous_windows += 1
        for ranked in state.root_cause_services:
            s.services[ranked.service] += ranked.score
        if state.failure_type:
            s.types[state.failure_type] += 1
        if state.anomaly_score >= incident.peak_anomaly_score:
            incident.peak_anomaly_score = state.anomaly_score
            del incident.evidence[:]
            incident.evidence.extend(state.evidence)
        del incident.suspected_services[:]
        del incident.suspected_scores[:]
        total = sum(s.services.values()) or 1.0
        for service, score in s.services.most_common(5):
            incident.suspected_services.add(system=incident.system, service=service)
            incident.suspected_scores.append(score / total)
        incident.failure_type = s.types.most_common(1)[0][0] if s.types else ""
        incident.severity = _severity(incident.peak_anomaly_score)  # type: ignore[assignment]
        suspects = ", ".join(r.service for r in incident.suspected_services[:3]) or "unknown"
        incident.summary = (
            f"{incident.system}: anomalous for {incident.anomalous_windows} window(s), peak score "
            f"{incident.peak_anomaly_score:.2f}; suspected {suspects}"
        )

    def _resolve(self, s: _SystemState, state: embedding_pb2.StateEmbedding) -> detector_pb2.Incident:
        incident = s.open
        assert incident is not None
        incident.status = RESOLVED
        self._touched.add(incident.id)
        incident.resolved_at.CopyFrom(state.window.start)
        s.open, s.normal_run = None, 0
        return self._copy(incident)

    def _remember(self, incident: detector_pb2.Incident) -> None:
        self._incidents[incident.id] = incident
        while len(self._incidents) > self.policy.max_kept:
            oldest = next(iter(self._incidents))
            if self._incidents[oldest].status == OPEN:
                break
            del self._incidents[oldest]
            self._evicted.add(oldest)

    # -- persistence ---------------------------------------------------------------------------------

    def save(self) -> None:
        """Writes the systems changed since the last save, and their incidents, in one transaction."""
        if self._db is None:
            return
        with self._lock, self._db:
            for system in self._changed:
                s = self._systems[system]
                row = {
                    "anomalous_run": [base64.b64encode(w.SerializeToString()).decode() for w in s.anomalous_run],
                    "normal_run": s.normal_run,
                    "last_end_ns": s.last_end_ns,
                    "open": s.open.id if s.open is not None else None,
                    "services": dict(s.services),
                    "types": dict(s.types),
                }
                self._db.execute("INSERT OR REPLACE INTO systems VALUES (?, ?)", (system, json.dumps(row)))
            for key in self._touched - self._evicted:
                self._db.execute(
                    "INSERT INTO incidents (id, body) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    (key, self._incidents[key].SerializeToString()),
                )
            self._db.executemany("DELETE FROM incidents WHERE id = ?", [(key,) for key in self._evicted])
            self._changed.clear()
            self._touched.clear()
            self._evicted.clear()

    def _load(self) -> None:
        assert self._db is not None
        for key, body in self._db.execute("SELECT id, body FROM incidents ORDER BY seq"):
            self._incidents[key] = detector_pb2.Incident.FromString(body)
        for system, text in self._db.execute("SELECT system, state FROM systems"):
            row = json.loads(text)
            self._systems[system] = _SystemState(
                anomalous_run=[
                    embedding_pb2.StateEmbedding.FromString(base64.b64decode(w)) for w in row["anomalous_run"]
                ],
                normal_run=row["normal_run"],
                last_end_ns=row["last_end_ns"],
                open=self._incidents.get(row["open"]) if row["open"] else None,
                services=Counter(row["services"]),
                types=Counter(row["types"]),
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @staticmethod
    def _copy(incident: detector_pb2.Incident) -> detector_pb2.Incident:
        out = detector_pb2.Incident()
        out.CopyFrom(incident)
        return out

    def get(self, incident_id: str) -> detector_pb2.Incident | None:
        with self._lock:
            found = self._incidents.get(incident_id)
            return self._copy(found) if found else None

    def list(self, system: str = "", status: int = 0, limit: int = 0) -> list[detector_pb2.Incident]:
        with self._lock:
            chosen = [
                self._copy(i)
                for i in reversed(self._incidents.values())
                if (not system or i.system == system) and (not status or i.status == status)
            ]
        return chosen[:limit] if limit > 0 else chosen


_SCHEMA = """
CREATE TABLE IF NOT EXISTS systems (system TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL);
"""
