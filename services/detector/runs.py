"""The open agent runs' steps in SQLite, so that a restarted detector goes on with a run where it stopped.

Scoring a step needs the run's earlier steps (the prefix embedding, the agent's earlier output for the
grounding checks) and whether the run has alerted already (one step alert per run). Held in memory
only, a restart in the middle of a run scored its next steps without that context and could alert on
the run a second time, and a step redelivered after the restart (its offset not yet committed) counted
twice. Each observed step is written here before its verdict is returned; a run's steps go when it ends,
and the run is remembered as ended, so that a step arriving after the end (from another partition, when
the producer did not keep a trace in one) does not start the run over.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from services.common.pb.faultline.v1 import detector_pb2
from services.detector.steps import Step, from_proto, to_proto

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, alerted_at INTEGER NOT NULL DEFAULT -1, ended INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (run_id, idx)
);
"""


class RunStore:
    def __init__(self, path: Path, keep: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)
            # runs that never end (their root span lost) and ended ones would pile up: keep the newest ``keep``
            self._db.execute(
                "DELETE FROM runs WHERE rowid NOT IN (SELECT rowid FROM runs ORDER BY rowid DESC LIMIT ?)", (keep,)
            )
            self._db.execute("DELETE FROM steps WHERE run_id NOT IN (SELECT run_id FROM runs)")

    def add(self, step: Step) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO runs (run_id) VALUES (?)", (step.run_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO steps VALUES (?, ?, ?)",
                (step.run_id, step.index, to_proto(step).SerializeToString()),
            )

    def mark_alerted(self, run_id: str, step_index: int) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE runs SET alerted_at = ? WHERE run_id = ?", (step_index, run_id))

    def load(self, run_id: str) -> tuple[list[Step], int, bool] | None:
        """The run's steps in order, the index of the step it alerted on (-1: none) and whether it ended; None
        if unknown."""
        with self._lock:
            row = self._db.execute("SELECT alerted_at, ended FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            bodies = self._db.execute("SELECT body FROM steps WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
        return [from_proto(detector_pb2.AgentStep.FromString(body)) for (body,) in bodies], row[0], bool(row[1])

    def end(self, run_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
            self._db.execute(
                "INSERT INTO runs (run_id, ended) VALUES (?, 1) ON CONFLICT (run_id) DO UPDATE SET ended = 1", (run_id,)
            )

    def close(self) -> None:
        self._db.close()
