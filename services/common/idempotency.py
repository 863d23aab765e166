"""Which events a consumer group has already applied, so that at-least-once delivery has an effect once.

The key is recorded after the handler succeeds and before the offset is committed: a crash
between the two redelivers the message, and the store makes the second delivery a no-op.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol


class IdempotencyStore(Protocol):
    def seen(self, key: str) -> bool: ...
    def remember(self, key: str) -> None: ...


class MemoryIdempotencyStore:
    """Bounded LRU of recent keys: dedupes redeliveries within one process's lifetime."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return True
            return False

    def remember(self, key: str) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._max:
                self._keys.popitem(last=False)


class SqliteIdempotencyStore:
    """Keys persisted in one SQLite file: survives a crash or restart of the consumer."""

    def __init__(self, path: Path | str, max_entries: int = 1_000_000) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY, at REAL NOT NULL)")
        self._conn.execute("CREATE INDEX IF NOT EXISTS applied_at ON applied (at)")
        self._max = max_entries
        self._lock = threading.Lock()
        self._writes = 0

    def seen(self, key: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM applied WHERE key = ?", (key,)).fetchone()
        return row is not None

    def remember(self, key: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO applied VALUES (?, ?)", (key, time.time()))
            self._writes += 1
            if self._writes % 10_000 == 0:  # trim the oldest keys now and then, not per write
                self._conn.execute(
                    "DELETE FROM applied WHERE key IN (SELECT key FROM applied ORDER BY at DESC LIMIT -1 OFFSET ?)",
                    (self._max,),
                )

    def close(self) -> None:
        self._conn.close()
