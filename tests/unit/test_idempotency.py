from services.common.idempotency import MemoryIdempotencyStore, SqliteIdempotencyStore


def test_memory_store_forgets_the_oldest_beyond_its_bound() -> None:
    store = MemoryIdempotencyStore(max_entries=2)
    for key in ("a", "b", "c"):
        store.remember(key)
    assert not store.seen("a")
    assert store.seen("b") and store.seen("c")


def test_sqlite_store_survives_reopening(tmp_path) -> None:
    path = tmp_path / "applied.db"
    store = SqliteIdempotencyStore(path)
    store.remember("topic|src|1")
    store.close()
    reopened = SqliteIdempotencyStore(path)
    assert reopened.seen("topic|src|1")
    assert not reopened.seen("topic|src|2")
