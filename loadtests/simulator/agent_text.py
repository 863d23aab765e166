"""What the simulated agents talk about and how they phrase it.

No LLM is available, so every message is a phrasing drawn at random from a bank below with its
slots filled from the domain vocabulary: coding tasks with their requirements, code and tests for
the coding system; Online Boutique services, fault kinds, metrics and log lines for the RCA system.
The banks are wide on purpose: a detector should not be able to key on one phrasing.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass


def say(rng: random.Random, bank: Sequence[str], **slots: object) -> str:
    """One phrasing from ``bank`` with its slots filled."""
    return rng.choice(bank).format(**slots)


def _code(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# --- the coding system (planner / coder / tester / reviewer) -------------------------------------


@dataclass(frozen=True)
class CodeTask:
    """A coding ticket: what the user asks for and what a correct solution looks like."""

    title: str  # imperative, lower-case: "implement a token-bucket rate limiter"
    module: str  # file the coder writes
    symbol: str  # the public name the tests import
    requirements: tuple[str, ...]  # acceptance criteria as the user states them
    distortion: tuple[int, str]  # a plausible misreading of one requirement: (index, text)
    tests: tuple[str, ...]  # one acceptance test per requirement
    code: str  # a correct implementation
    bug: tuple[str, str]  # (fragment of ``code``, the subtly wrong fragment that replaces it)
    bug_test: int  # index of the test that exercises the bug
    bug_error: str  # what that test reports when the bug is present

    @property
    def test_file(self) -> str:
        return f"tests/test_{self.module.rsplit('/', 1)[-1]}"

    @property
    def import_path(self) -> str:
        return self.module.removesuffix(".py").replace("/", ".")


CODE_TASKS: tuple[CodeTask, ...] = (
    CodeTask(
        title="implement a token-bucket rate limiter",
        module="ratelimit/bucket.py",
        symbol="TokenBucket",
        requirements=(
            "allow bursts of up to `capacity` requests",
            "refill at `rate` tokens per second based on monotonic time",
            "reject a request when less than one token is left",
            "expose the seconds until the next token as `retry_after()`",
        ),
        distortion=(1, "refill at `rate` tokens per minute based on wall-clock time"),
        tests=("test_burst_up_to_capacity", "test_refill_rate", "test_rejects_when_empty", "test_retry_after"),
        code=_code("""
            import time

            class TokenBucket:
                def __init__(self, capacity: int, rate: float) -> None:
                    self.capacity, self.rate = capacity, rate
                    self.tokens, self.stamp = float(capacity), time.monotonic()

                def allow(self) -> bool:
                    now = time.monotonic()
                    self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                    self.stamp = now
                    if self.tokens >= 1:
                        self.tokens -= 1
                        return True
                    return False

                def retry_after(self) -> float:
                    return max(0.0, (1 - self.tokens) / self.rate)
            """),
        bug=("if self.tokens >= 1:", "if self.tokens >= 0:"),
        bug_test=2,
        bug_error="AssertionError: assert True is False",
    ),
    CodeTask(
        title="fix the failing ISO-8601 date parser",
        module="dates/iso.py",
        symbol="parse_timestamp",
        requirements=(
            "accept a trailing `Z` as UTC",
            "accept explicit offsets such as `+05:30`",
            "return timezone-aware `datetime` objects",
            "raise `ValueError` on empty strings",
        ),
        distortion=(2, "return naive `datetime` objects in local time"),
        tests=("test_z_suffix_is_utc", "test_explicit_offset", "test_result_is_aware", "test_empty_string_rejected"),
        code=_code("""
            from datetime import datetime, timezone

            def parse_timestamp(text: str) -> datetime:
                if not text:
                    raise ValueError("empty timestamp")
                if text.endswith("Z"):
                    text = text[:-1] + "+00:00"
                parsed = datetime.fromisoformat(text)
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=timezone.utc)
                return parsed
            """),
        bug=('text = text[:-1] + "+00:00"', 'text = text[:-2] + "+00:00"'),
        bug_test=0,
        bug_error="ValueError: Invalid isoformat string: '2024-03-01T12:00:0+00:00'",
    ),
    CodeTask(
        title="add retry with exponential backoff to the HTTP client",
        module="http/retry.py",
        symbol="retry_call",
        requirements=(
            "retry at most `attempts` times",
            "double the delay after each failure, starting from `base_delay`",
            "retry only on `ConnectionError` and `TimeoutError`",
            "re-raise the last error when the attempts run out",
        ),
        distortion=(1, "keep the delay fixed at `base_delay` between attempts"),
        tests=("test_gives_up_after_attempts", "test_delay_doubles", "test_only_transient_errors", "test_reraises"),
        code=_code("""
            import time

            TRANSIENT = (ConnectionError, TimeoutError)

            def retry_call(fn, attempts: int = 3, base_delay: float = 0.1):
                for attempt in range(attempts):
                    try:
                        return fn()
                    except TRANSIENT:
                        if attempt == attempts - 1:
                            raise
                        time.sleep(base_delay * 2**attempt)
            """),
        bug=("if attempt == attempts - 1:", "if attempt == attempts:"),
        bug_test=3,
        bug_error="Failed: DID NOT RAISE <class 'ConnectionError'>",
    ),
    CodeTask(
        title="implement an LRU cache with per-entry TTL",
        module="cache/lru.py",
        symbol="TTLCache",
        requirements=(
            "evict the least recently used entry when `maxsize` is exceeded",
            "expire entries older than `ttl` seconds",
            "refresh an entry's recency on `get`",
            "return `None` for missing or expired keys",
        ),
        distortion=(2, "refresh an entry's recency only on `set`"),
        tests=("test_evicts_lru", "test_expires_after_ttl", "test_get_refreshes_recency", "test_missing_is_none"),
        code=_code("""
            import time
            from collections import OrderedDict

            class TTLCache:
                def __init__(self, maxsize: int, ttl: float) -> None:
                    self.maxsize, self.ttl, self.data = maxsize, ttl, OrderedDict()

                def get(self, key):
                    item = self.data.get(key)
                    if item is None or time.monotonic() - item[1] > self.ttl:
                        return None
                    self.data.move_to_end(key)
                    return item[0]

                def set(self, key, value) -> None:
                    self.data[key] = (value, time.monotonic())
                    self.data.move_to_end(key)
                    if len(self.data) > self.maxsize:
                        self.data.popitem(last=False)
            """),
        bug=("self.data.popitem(last=False)", "self.data.popitem(last=True)"),
        bug_test=0,
        bug_error="AssertionError: assert cache.get('d') == 4",
    ),
    CodeTask(
        title="write a CSV-to-JSON converter for the export job",
        module="convert/csv_json.py",
        symbol="csv_to_records",
        requirements=(
            "use the header row as field names",
            "skip blank lines",
            "convert numeric columns to numbers",
            "keep the input row order",
        ),
        distortion=(0, "use fixed field names `col0` .. `colN`"),
        tests=("test_header_names_fields", "test_blank_lines_skipped", "test_numbers_converted", "test_row_order"),
        code=_code("""
            import csv
            import io

            def _number(value: str):
                try:
                    return int(value)
                except ValueError:
                    try:
                        return float(value)
                    except ValueError:
                        return value

            def csv_to_records(text: str) -> list[dict]:
                rows = csv.DictReader(io.StringIO(text))
                return [{k: _number(v) for k, v in row.items()} for row in rows if any(row.values())]
            """),
        bug=("return int(value)", "return int(float(value))"),
        bug_test=2,
        bug_error="AssertionError: assert 2 == 2.5",
    ),
    CodeTask(
        title="add pagination to the orders endpoint",
        module="api/pagination.py",
        symbol="paginate",
        requirements=(
            "return at most `page_size` items per page",
            "number pages from 1",
            "include `next_page` only when more items exist",
            "reject a `page_size` above 100",
        ),
        distortion=(1, "number pages from 0"),
        tests=("test_page_size_respected", "test_pages_start_at_one", "test_next_page_only_when_more", "test_cap"),
        code=_code("""
            def paginate(items: list, page: int, page_size: int = 20) -> dict:
                if page_size > 100:
                    raise ValueError("page_size must be <= 100")
                start = (page - 1) * page_size
                chunk = items[start : start + page_size]
                more = start + page_size < len(items)
                return {"items": chunk, "page": page, "next_page": page + 1 if more else None}
            """),
        bug=("more = start + page_size < len(items)", "more = start + page_size <= len(items)"),
        bug_test=2,
        bug_error="AssertionError: assert 3 is None",
    ),
    CodeTask(
        title="validate the signup form on the server side",
        module="accounts/validation.py",
        symbol="validate_signup",
        requirements=(
            "require a syntactically valid e-mail address",
            "require passwords of at least 12 characters",
            "reject passwords that contain the username",
            "return all problems at once, not just the first",
        ),
        distortion=(1, "require passwords of at least 8 characters"),
        tests=("test_invalid_email", "test_short_password", "test_password_has_username", "test_all_problems"),
        code=_code("""
            import re

            EMAIL = re.compile(r"^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$", re.IGNORECASE)

            def validate_signup(username: str, email: str, password: str) -> list[str]:
                problems = []
                if not EMAIL.match(email):
                    problems.append("invalid e-mail address")
                if len(password) < 12:
                    problems.append("password shorter than 12 characters")
                if username.lower() in password.lower():
                    problems.append("password contains the username")
                return problems
            """),
        bug=("if len(password) < 12:", "if len(password) <= 12:"),
        bug_test=1,
        bug_error="AssertionError: assert ['password shorter than 12 characters'] == []",
    ),
    CodeTask(
        title="implement a circuit breaker for outbound calls",
        module="resilience/breaker.py",
        symbol="CircuitBreaker",
        requirements=(
            "open after `threshold` consecutive failures",
            "fail fast while open",
            "allow one trial call after `reset_timeout` seconds",
            "close again after a successful trial",
        ),
        distortion=(0, "open after `threshold` failures in total, consecutive or not"),
        tests=("test_opens_after_threshold", "test_fails_fast_when_open", "test_half_open_trial", "test_closes"),
        code=_code("""
            import time

            class CircuitBreaker:
                def __init__(self, threshold: int = 5, reset_timeout: float = 30.0) -> None:
                    self.threshold, self.reset_timeout = threshold, reset_timeout
                    self.failures, self.opened_at = 0, None

                def call(self, fn):
                    if self.opened_at is not None and time.monotonic() - self.opened_at < self.reset_timeout:
                        raise RuntimeError("circuit open")
                    try:
                        result = fn()
                    except Exception:
                        self.failures += 1
                        if self.failures >= self.threshold:
                            self.opened_at = time.monotonic()
                        raise
                    self.failures, self.opened_at = 0, None
                    return result
            """),
        bug=("if self.failures >= self.threshold:", "if self.failures > self.threshold:"),
        bug_test=0,
        bug_error="Failed: DID NOT RAISE <class 'RuntimeError'>",
    ),
    CodeTask(
        title="fix the off-by-one in the log tailer",
        module="logs/tail.py",
        symbol="tail",
        requirements=(
            "return the last `n` lines of the file",
            "return every line when the file is shorter than `n` lines",
            "strip trailing newlines",
            "read the file in blocks from the end instead of loading it whole",
        ),
        distortion=(0, "return the first `n` lines of the file"),
        tests=("test_last_n_lines", "test_short_file", "test_newlines_stripped", "test_reads_from_end"),
        code=_code("""
            import os

            def tail(path: str, n: int, block: int = 4096) -> list[str]:
                with open(path, "rb") as f:
                    end = f.seek(0, os.SEEK_END)
                    data = b""
                    while end > 0 and data.count(b"\\n") <= n:
                        start = max(0, end - block)
                        f.seek(start)
                        data = f.read(end - start) + data
                        end = start
                return data.decode().splitlines()[-n:]
            """),
        bug=("splitlines()[-n:]", "splitlines()[-n - 1 : -1]"),
        bug_test=0,
        bug_error="AssertionError: assert ['line 8', 'line 9'] == ['line 9', 'line 10']",
    ),
    CodeTask(
        title="implement a semantic-version comparator for the release tool",
        module="versioning/semver.py",
        symbol="compare",
        requirements=(
            "compare major, minor and patch numerically",
            "rank a pre-release below its release",
            "ignore build metadata after `+`",
            "return -1, 0 or 1",
        ),
        distortion=(0, "compare the version strings lexicographically"),
        tests=("test_numeric_order", "test_prerelease_lower", "test_build_metadata_ignored", "test_returns_sign"),
        code=_code("""
            def _key(version: str):
                core, _, pre = version.split("+")[0].partition("-")
                numbers = tuple(int(part) for part in core.split("."))
                return numbers, pre == "", pre

            def compare(a: str, b: str) -> int:
                ka, kb = _key(a), _key(b)
                return (ka > kb) - (ka < kb)
            """),
        bug=('return numbers, pre == "", pre', 'return numbers, pre != "", pre'),
        bug_test=1,
        bug_error="AssertionError: assert 1 == -1",
    ),
    CodeTask(
        title="implement a z-score anomaly detector for latency samples",
        module="metrics/anomaly.py",
        symbol="ZScoreDetector",
        requirements=(
            "keep a sliding window of the last `window` samples",
            "flag a sample more than `k` standard deviations from the window mean, in either direction",
            "not flag anything before the window is full",
            "keep flagged samples out of the window",
        ),
        distortion=(3, "add every sample to the window, flagged or not"),
        tests=("test_window_slides", "test_flags_outlier", "test_warmup_not_flagged", "test_outliers_excluded"),
        code=_code("""
            import statistics
            from collections import deque

            class ZScoreDetector:
                def __init__(self, window: int = 60, k: float = 3.0) -> None:
                    self.samples, self.k = deque(maxlen=window), k

                def observe(self, value: float) -> bool:
                    if len(self.samples) < self.samples.maxlen:
                        self.samples.append(value)
                        return False
                    mean, std = statistics.fmean(self.samples), statistics.pstdev(self.samples)
                    anomalous = std > 0 and abs(value - mean) > self.k * std
                    if not anomalous:
                        self.samples.append(value)
                    return anomalous
            """),
        bug=("abs(value - mean) > self.k * std", "value - mean > self.k * std"),
        bug_test=1,
        bug_error="AssertionError: assert False is True",
    ),
    CodeTask(
        title="write a URL slugifier for product pages",
        module="text/slug.py",
        symbol="slugify",
        requirements=(
            "lower-case the text",
            "transliterate accented letters to ASCII",
            "collapse runs of non-alphanumerics into one hyphen",
            "trim hyphens from both ends",
        ),
        distortion=(2, "replace each non-alphanumeric character with its own hyphen"),
        tests=("test_lowercase", "test_accents_transliterated", "test_runs_collapsed", "test_edges_trimmed"),
        code=_code("""
            import re
            import unicodedata

            def slugify(text: str) -> str:
                ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
                return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
            """),
        bug=('.strip("-")', '.rstrip("-")'),
        bug_test=3,
        bug_error="AssertionError: assert '-hello-world' == 'hello-world'",
    ),
    CodeTask(
        title="implement a consistent-hash ring for cache sharding",
        module="sharding/ring.py",
        symbol="HashRing",
        requirements=(
            "place `replicas` virtual nodes per shard",
            "map a key to the first virtual node clockwise",
            "wrap around past the last virtual node",
            "use a stable hash, not Python's `hash()`",
        ),
        distortion=(3, "use Python's built-in `hash()` for speed"),
        tests=("test_virtual_nodes", "test_clockwise_lookup", "test_wraps_around", "test_stable_across_processes"),
        code=_code("""
            import bisect
            import hashlib

            def _h(value: str) -> int:
                return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")

            class HashRing:
                def __init__(self, shards: list[str], replicas: int = 64) -> None:
                    self.ring = sorted((_h(f"{s}#{i}"), s) for s in shards for i in range(replicas))
                    self.points = [p for p, _ in self.ring]

                def shard_for(self, key: str) -> str:
                    i = bisect.bisect(self.points, _h(key)) % len(self.ring)
                    return self.ring[i][1]
            """),
        bug=("% len(self.ring)", "% (len(self.ring) - 1)"),
        bug_test=2,
        bug_error="AssertionError: assert 'shard-b' == 'shard-a'",
    ),
    CodeTask(
        title="batch outgoing events before publishing them",
        module="events/batcher.py",
        symbol="Batcher",
        requirements=(
            "flush when `max_items` events are buffered",
            "flush when the oldest buffered event is older than `max_wait` seconds",
            "flush the remainder on `close()`",
            "never emit an empty batch",
        ),
        distortion=(1, "flush every `max_wait` seconds even when the buffer is empty"),
        tests=("test_flush_on_size", "test_flush_on_age", "test_close_flushes", "test_no_empty_batches"),
        code=_code("""
            import time

            class Batcher:
                def __init__(self, sink, max_items: int = 100, max_wait: float = 1.0) -> None:
                    self.sink, self.max_items, self.max_wait = sink, max_items, max_wait
                    self.buffer, self.first_at = [], 0.0

                def add(self, event) -> None:
                    if not self.buffer:
                        self.first_at = time.monotonic()
                    self.buffer.append(event)
                    if len(self.buffer) >= self.max_items or time.monotonic() - self.first_at >= self.max_wait:
                        self.flush()

                def flush(self) -> None:
                    if self.buffer:
                        self.sink(self.buffer)
                        self.buffer = []

                close = flush
            """),
        bug=("if len(self.buffer) >= self.max_items", "if len(self.buffer) > self.max_items"),
        bug_test=0,
        bug_error="AssertionError: assert 0 == 1",
    ),
    CodeTask(
        title="parse human-readable durations in the scheduler config",
        module="util/duration.py",
        symbol="parse_duration",
        requirements=(
            "accept the units `h`, `m`, `s` and `ms`",
            "accept combined forms such as `1h30m`",
            "return seconds as a float",
            "raise `ValueError` on unknown units",
        ),
        distortion=(2, "return whole minutes as an int"),
        tests=("test_single_units", "test_combined", "test_returns_seconds", "test_unknown_unit"),
        code=_code("""
            import re

            UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
            PART = re.compile(r"(\\d+(?:\\.\\d+)?)(ms|h|m|s)")

            def parse_duration(text: str) -> float:
                parts = PART.findall(text)
                if not parts or "".join(n + u for n, u in parts) != text:
                    raise ValueError(f"bad duration: {text!r}")
                return sum(float(n) * UNITS[u] for n, u in parts)
            """),
        bug=("(ms|h|m|s)", "(h|m|s|ms)"),
        bug_test=0,
        bug_error="ValueError: bad duration: '250ms'",
    ),
    CodeTask(
        title="round invoice amounts per currency",
        module="billing/rounding.py",
        symbol="round_amount",
        requirements=(
            "work on `Decimal`, never `float`",
            "round half to even",
            "keep two decimal places for EUR and USD and none for JPY",
            "raise `KeyError` on unknown currencies",
        ),
        distortion=(1, "round half up"),
        tests=("test_decimal_only", "test_half_even", "test_currency_exponent", "test_unknown_currency"),
        code=_code("""
            from decimal import ROUND_HALF_EVEN, Decimal

            EXPONENT = {"EUR": Decimal("0.01"), "USD": Decimal("0.01"), "JPY": Decimal("1")}

            def round_amount(amount: Decimal, currency: str) -> Decimal:
                if not isinstance(amount, Decimal):
                    raise TypeError("amount must be a Decimal")
                return amount.quantize(EXPONENT[currency], rounding=ROUND_HALF_EVEN)
            """),
        bug=('"JPY": Decimal("1")', '"JPY": Decimal("0.1")'),
        bug_test=2,
        bug_error="AssertionError: assert Decimal('1234.6') == Decimal('1235')",
    ),
    CodeTask(
        title="implement a job queue with priority aging",
        module="sched/queue.py",
        symbol="AgingQueue",
        requirements=(
            "pop the highest-priority job first",
            "break ties in submission order",
            "raise every waiting job's priority by one every `age_step` pops",
            "report the queue length via `len()`",
        ),
        distortion=(1, "break ties arbitrarily"),
        tests=("test_priority_order", "test_fifo_ties", "test_aging", "test_len"),
        code=_code("""
            import heapq
            import itertools

            class AgingQueue:
                def __init__(self, age_step: int = 10) -> None:
                    self.heap, self.seq, self.pops, self.age_step = [], itertools.count(), 0, age_step

                def push(self, job, priority: int) -> None:
                    heapq.heappush(self.heap, (-priority, next(self.seq), job))

                def pop(self):
                    self.pops += 1
                    if self.pops % self.age_step == 0:
                        self.heap = [(p - 1, s, j) for p, s, j in self.heap]
                        heapq.heapify(self.heap)
                    return heapq.heappop(self.heap)[2]

                def __len__(self) -> int:
                    return len(self.heap)
            """),
        bug=("(-priority, next(self.seq), job)", "(priority, next(self.seq), job)"),
        bug_test=0,
        bug_error="AssertionError: assert 'nightly-report' == 'page-oncall'",
    ),
    CodeTask(
        title="make the request counters thread-safe",
        module="stats/counter.py",
        symbol="Counter",
        requirements=(
            "count increments from many threads without losing updates",
            "support `add(key, n)` with negative `n`",
            "return a consistent `snapshot()` that later updates do not change",
            "reset a key atomically and return its last value",
        ),
        distortion=(0, "count increments from a single thread"),
        tests=("test_concurrent_increments", "test_negative_add", "test_snapshot_consistent", "test_reset"),
        code=_code("""
            import threading
            from collections import defaultdict

            class Counter:
                def __init__(self) -> None:
                    self._lock, self._counts = threading.Lock(), defaultdict(int)

                def add(self, key: str, n: int = 1) -> None:
                    with self._lock:
                        self._counts[key] += n

                def snapshot(self) -> dict[str, int]:
                    with self._lock:
                        return dict(self._counts)

                def reset(self, key: str) -> int:
                    with self._lock:
                        return self._counts.pop(key, 0)
            """),
        bug=("return dict(self._counts)", "return self._counts"),
        bug_test=2,
        bug_error="AssertionError: assert {'GET /': 4} == {'GET /': 3}",
    ),
    CodeTask(
        title="load service config from JSON with environment overrides",
        module="config/loader.py",
        symbol="load_config",
        requirements=(
            "read the defaults from a JSON file",
            "override keys from environment variables prefixed `APP_`",
            "map `APP_DB__HOST` to the nested key `db.host`",
            "parse `true`/`false` and numbers in overrides",
        ),
        distortion=(2, "map `APP_DB__HOST` to a flat key `db__host`"),
        tests=("test_defaults_from_file", "test_env_overrides", "test_nested_keys", "test_typed_overrides"),
        code=_code("""
            import json
            import os

            def _parse(value: str):
                if value.lower() in ("true", "false"):
                    return value.lower() == "true"
                try:
                    return json.loads(value)
                except ValueError:
                    return value

            def load_config(path: str, prefix: str = "APP_") -> dict:
                with open(path) as f:
                    config = json.load(f)
                for name, value in os.environ.items():
                    if name.startswith(prefix):
                        *parents, leaf = name[len(prefix) :].lower().split("__")
                        node = config
                        for key in parents:
                            node = node.setdefault(key, {})
                        node[leaf] = _parse(value)
                return config
            """),
        bug=("name[len(prefix) :]", "name[len(prefix) - 1 :]"),
        bug_test=1,
        bug_error="KeyError: 'db'",
    ),
    CodeTask(
        title="merge overlapping maintenance windows",
        module="ops/windows.py",
        symbol="merge_windows",
        requirements=(
            "merge overlapping windows",
            "merge windows that merely touch end-to-start",
            "return the windows sorted by start",
            "leave the input list unmodified",
        ),
        distortion=(1, "keep windows that merely touch as separate windows"),
        tests=("test_overlap_merged", "test_touching_merged", "test_sorted_output", "test_input_untouched"),
        code=_code("""
            def merge_windows(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
                merged: list[tuple[int, int]] = []
                for start, end in sorted(windows):
                    if merged and start <= merged[-1][1]:
                        merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                    else:
                        merged.append((start, end))
                return merged
            """),
        bug=("start <= merged[-1][1]", "start < merged[-1][1]"),
        bug_test=1,
        bug_error="AssertionError: assert [(1, 3), (3, 5)] == [(1, 5)]",
    ),
    CodeTask(
        title="hash user passwords with PBKDF2",
        module="security/passwords.py",
        symbol="hash_password",
        requirements=(
            "derive keys with PBKDF2-HMAC-SHA256",
            "use a random 16-byte salt per password",
            "use at least 600000 iterations",
            "compare hashes in constant time",
        ),
        distortion=(2, "use 1000 iterations to keep logins fast"),
        tests=("test_pbkdf2_round_trip", "test_unique_salt", "test_iteration_count", "test_constant_time_compare"),
        code=_code("""
            import hashlib
            import hmac
            import os

            ITERATIONS = 600_000

            def hash_password(password: str) -> bytes:
                salt = os.urandom(16)
                return salt + hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)

            def verify_password(password: str, stored: bytes) -> bool:
                salt, digest = stored[:16], stored[16:]
                candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
                return hmac.compare_digest(candidate, digest)
            """),
        bug=("stored[:16], stored[16:]", "stored[:16], stored[15:]"),
        bug_test=0,
        bug_error="AssertionError: verify_password() rejected the correct password",
    ),
    CodeTask(
        title="report the top-k most viewed products",
        module="analytics/topk.py",
        symbol="top_k",
        requirements=(
            "return the `k` most frequent items",
            "order them by descending count",
            "break count ties alphabetically",
            "return fewer than `k` items when the input is small",
        ),
        distortion=(2, "break count ties by first occurrence"),
        tests=("test_k_items", "test_descending_counts", "test_alphabetical_ties", "test_small_input"),
        code=_code("""
            from collections import Counter

            def top_k(items: list[str], k: int) -> list[tuple[str, int]]:
                counts = Counter(items)
                return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            """),
        bug=("[:k]", "[: k - 1]"),
        bug_test=0,
        bug_error="AssertionError: assert 2 == 3",
    ),
    CodeTask(
        title="compute latency percentiles for the SLO report",
        module="metrics/percentile.py",
        symbol="percentile",
        requirements=(
            "interpolate linearly between the closest ranks",
            "accept `q` between 0 and 100 inclusive",
            "raise `ValueError` on an empty sample",
            "not modify the caller's list",
        ),
        distortion=(0, "return the nearest-rank value without interpolation"),
        tests=("test_interpolates", "test_bounds", "test_empty_sample", "test_input_untouched"),
        code=_code("""
            def percentile(samples: list[float], q: float) -> float:
                if not samples:
                    raise ValueError("empty sample")
                if not 0 <= q <= 100:
                    raise ValueError("q must be within [0, 100]")
                ordered = sorted(samples)
                rank = (len(ordered) - 1) * q / 100
                low = int(rank)
                high = min(low + 1, len(ordered) - 1)
                return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
            """),
        bug=("rank = (len(ordered) - 1) * q / 100", "rank = len(ordered) * q / 100"),
        bug_test=1,
        bug_error="IndexError: list index out of range",
    ),
    CodeTask(
        title="deduplicate webhook deliveries with a Bloom filter",
        module="dedup/bloom.py",
        symbol="BloomFilter",
        requirements=(
            "size the bit array from the expected item count and the target false-positive rate",
            "derive `k` bit positions by double hashing",
            "never report a false negative",
            "support `in` through `__contains__`",
        ),
        distortion=(0, "use a fixed bit array of 1024 bits"),
        tests=("test_sizing", "test_double_hashing", "test_no_false_negatives", "test_contains"),
        code=_code("""
            import hashlib
            import math

            class BloomFilter:
                def __init__(self, expected: int, fp_rate: float = 0.01) -> None:
                    self.m = math.ceil(-expected * math.log(fp_rate) / math.log(2) ** 2)
                    self.k = max(1, round(self.m / expected * math.log(2)))
                    self.bits = bytearray((self.m + 7) // 8)

                def _positions(self, item: str):
                    d = hashlib.sha256(item.encode()).digest()
                    h1, h2 = int.from_bytes(d[:8], "big"), int.from_bytes(d[8:16], "big")
                    return ((h1 + i * h2) % self.m for i in range(self.k))

                def add(self, item: str) -> None:
                    for p in self._positions(item):
                        self.bits[p // 8] |= 1 << (p % 8)

                def __contains__(self, item: str) -> bool:
                    return all(self.bits[p // 8] & (1 << (p % 8)) for p in self._positions(item))
            """),
        bug=("|= 1 << (p % 8)", "|= 1 << (p % 7)"),
        bug_test=2,
        bug_error="AssertionError: assert 'delivery-1187' in bloom",
    ),
    CodeTask(
        title="diff two versions of a service config",
        module="config/diff.py",
        symbol="diff_config",
        requirements=(
            "report added, removed and changed keys",
            "recurse into nested dicts using dotted paths",
            "treat `1` and `True` as different values",
            "return the changes sorted by key",
        ),
        distortion=(1, "compare nested dicts as whole values"),
        tests=("test_added_removed_changed", "test_nested_paths", "test_bool_int_distinct", "test_sorted_keys"),
        code=_code("""
            def diff_config(old: dict, new: dict, prefix: str = "") -> list[tuple[str, str]]:
                changes = []
                for key in sorted(old.keys() | new.keys()):
                    path = f"{prefix}{key}"
                    a, b = old.get(key), new.get(key)
                    if isinstance(a, dict) and isinstance(b, dict):
                        changes += diff_config(a, b, path + ".")
                    elif key not in new:
                        changes.append((path, "removed"))
                    elif key not in old:
                        changes.append((path, "added"))
                    elif type(a) is not type(b) or a != b:
                        changes.append((path, "changed"))
                return changes
            """),
        bug=("elif type(a) is not type(b) or a != b:", "elif a != b:"),
        bug_test=2,
        bug_error="AssertionError: assert [] == [('debug', 'changed')]",
    ),
    CodeTask(
        title="checksum uploads chunk by chunk",
        module="storage/chunks.py",
        symbol="chunk_file",
        requirements=(
            "split files into chunks of `chunk_size` bytes",
            "emit a SHA-256 digest per chunk",
            "include a final chunk shorter than `chunk_size`",
            "compute the whole-file digest in the same pass",
        ),
        distortion=(2, "drop a final chunk shorter than `chunk_size`"),
        tests=("test_chunk_sizes", "test_chunk_digests", "test_final_short_chunk", "test_file_digest"),
        code=_code("""
            import hashlib

            def chunk_file(path: str, chunk_size: int = 8 << 20) -> tuple[list[str], str]:
                digests, whole = [], hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(chunk_size):
                        digests.append(hashlib.sha256(chunk).hexdigest())
                        whole.update(chunk)
                return digests, whole.hexdigest()
            """),
        bug=("while chunk := f.read(chunk_size):", "while len(chunk := f.read(chunk_size)) == chunk_size:"),
        bug_test=2,
        bug_error="AssertionError: assert 2 == 3",
    ),
    CodeTask(
        title="add search-as-you-type suggestions",
        module="search/autocomplete.py",
        symbol="Autocomplete",
        requirements=(
            "return completions for a prefix",
            "rank completions by popularity",
            "return at most `limit` suggestions",
            "match prefixes case-insensitively",
        ),
        distortion=(3, "match prefixes case-sensitively"),
        tests=("test_prefix_completions", "test_ranked_by_popularity", "test_limit", "test_case_insensitive"),
        code=_code("""
            class Autocomplete:
                def __init__(self) -> None:
                    self.root: dict = {}

                def add(self, phrase: str, popularity: int) -> None:
                    node = self.root
                    for ch in phrase.lower():
                        node = node.setdefault(ch, {})
                    node["$"] = (popularity, phrase)

                def suggest(self, prefix: str, limit: int = 5) -> list[str]:
                    node = self.root
                    for ch in prefix.lower():
                        if ch not in node:
                            return []
                        node = node[ch]
                    found, stack = [], [node]
                    while stack:
                        n = stack.pop()
                        found += [v for k, v in n.items() if k == "$"]
                        stack += [v for k, v in n.items() if k != "$"]
                    return [phrase for _, phrase in sorted(found, reverse=True)[:limit]]
            """),
        bug=("sorted(found, reverse=True)", "sorted(found)"),
        bug_test=1,
        bug_error="AssertionError: assert 'phone case' == 'phone charger'",
    ),
    CodeTask(
        title="honour idempotency keys on the payments API",
        module="api/idempotency.py",
        symbol="IdempotencyStore",
        requirements=(
            "return the stored response for a repeated key",
            "reject a repeated key whose request body differs",
            "expire keys after 24 hours",
            "store only successful responses",
        ),
        distortion=(2, "expire keys after 24 minutes"),
        tests=("test_replays_response", "test_body_mismatch_rejected", "test_expiry", "test_only_success_stored"),
        code=_code("""
            import hashlib
            import time

            TTL_S = 24 * 3600

            class IdempotencyStore:
                def __init__(self) -> None:
                    self.entries: dict[str, tuple[str, dict, float]] = {}

                def lookup(self, key: str, body: bytes) -> dict | None:
                    entry = self.entries.get(key)
                    if entry is None or time.time() - entry[2] > TTL_S:
                        return None
                    if entry[0] != hashlib.sha256(body).hexdigest():
                        raise ValueError("idempotency key reused with a different body")
                    return entry[1]

                def save(self, key: str, body: bytes, response: dict) -> None:
                    if 200 <= response["status"] < 300:
                        self.entries[key] = (hashlib.sha256(body).hexdigest(), response, time.time())
            """),
        bug=('if 200 <= response["status"] < 300:', 'if response["status"] < 500:'),
        bug_test=3,
        bug_error="AssertionError: assert {'status': 409} is None",
    ),
    CodeTask(
        title="word-wrap the CLI's help output",
        module="text/wrap.py",
        symbol="wrap",
        requirements=(
            "break lines at word boundaries within `width` columns",
            "split words longer than `width`",
            "preserve blank lines between paragraphs",
            "never emit trailing spaces",
        ),
        distortion=(1, "let words longer than `width` overflow the line"),
        tests=("test_breaks_at_words", "test_long_words_split", "test_paragraphs_kept", "test_no_trailing_spaces"),
        code=_code("""
            def wrap(text: str, width: int = 80) -> list[str]:
                lines: list[str] = []
                for paragraph in text.split("\\n"):
                    line = ""
                    for word in paragraph.split():
                        while len(word) > width:
                            if line:
                                lines.append(line)
                                line = ""
                            lines.append(word[:width])
                            word = word[width:]
                        if line and len(line) + 1 + len(word) > width:
                            lines.append(line)
                            line = word
                        else:
                            line = f"{line} {word}" if line else word
                    lines.append(line)
                return lines
            """),
        bug=("len(line) + 1 + len(word) > width", "len(line) + len(word) > width"),
        bug_test=0,
        bug_error="AssertionError: assert 21 <= 20",
    ),
    CodeTask(
        title="detect dependency cycles in the job DAG",
        module="jobs/dag.py",
        symbol="find_cycle",
        requirements=(
            "detect cycles in the job dependency graph",
            "return the jobs on the first cycle found, in order",
            "return `None` for an acyclic graph",
            "handle jobs that appear only as dependencies",
        ),
        distortion=(1, "return only whether a cycle exists"),
        tests=("test_detects_cycle", "test_cycle_path", "test_acyclic_is_none", "test_dangling_dependencies"),
        code=_code("""
            def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
                state: dict[str, int] = {}
                path: list[str] = []

                def visit(job: str) -> list[str] | None:
                    state[job] = 1
                    path.append(job)
                    for dep in deps.get(job, []):
                        if state.get(dep) == 1:
                            return path[path.index(dep) :]
                        if dep not in state and (cycle := visit(dep)):
                            return cycle
                    state[job] = 2
                    path.pop()
                    return None

                for job in list(deps):
                    if job not in state and (cycle := visit(job)):
                        return cycle
                return None
            """),
        bug=("path[path.index(dep) :]", "path[path.index(dep) + 1 :]"),
        bug_test=1,
        bug_error="AssertionError: assert ['build', 'test'] == ['lint', 'build', 'test']",
    ),
    CodeTask(
        title="bucketise latency samples into a Prometheus histogram",
        module="metrics/buckets.py",
        symbol="bucketize",
        requirements=(
            "count samples into cumulative `le` buckets",
            "always include a `+Inf` bucket",
            "count a sample equal to a bound inside that bound's bucket",
            "reject unsorted bounds",
        ),
        distortion=(0, "count samples into non-cumulative buckets"),
        tests=("test_cumulative_counts", "test_inf_bucket", "test_bound_inclusive", "test_unsorted_bounds"),
        code=_code("""
            import bisect
            import math

            def bucketize(samples: list[float], bounds: list[float]) -> dict[float, int]:
                if bounds != sorted(bounds):
                    raise ValueError("bounds must be sorted")
                edges = [*bounds, math.inf]
                counts = [0] * len(edges)
                for value in samples:
                    counts[bisect.bisect_left(edges, value)] += 1
                total, cumulative = 0, {}
                for edge, count in zip(edges, counts):
                    total += count
                    cumulative[edge] = total
                return cumulative
            """),
        bug=("bisect.bisect_left(edges, value)", "bisect.bisect_right(edges, value)"),
        bug_test=2,
        bug_error="AssertionError: assert 2 == 3",
    ),
    CodeTask(
        title="convert prices with cached exchange rates",
        module="billing/fx.py",
        symbol="Converter",
        requirements=(
            "fetch rates from the rates service at most once per `refresh_s` seconds",
            "convert through EUR when there is no direct rate",
            "round results to the target currency's minor unit",
            "raise `KeyError` for unknown currencies",
        ),
        distortion=(0, "fetch rates from the rates service on every conversion"),
        tests=("test_rates_cached", "test_cross_rate_via_eur", "test_rounded_to_minor_unit", "test_unknown_currency"),
        code=_code("""
            import time
            from decimal import Decimal

            class Converter:
                def __init__(self, fetch_rates, refresh_s: float = 300.0) -> None:
                    self.fetch_rates, self.refresh_s = fetch_rates, refresh_s
                    self.rates: dict[str, Decimal] = {}
                    self.fetched_at = float("-inf")

                def convert(self, amount: Decimal, src: str, dst: str) -> Decimal:
                    if time.monotonic() - self.fetched_at >= self.refresh_s:
                        self.rates, self.fetched_at = self.fetch_rates(), time.monotonic()
                    eur = amount / self.rates[src]
                    return (eur * self.rates[dst]).quantize(Decimal("0.01"))
            """),
        bug=("eur = amount / self.rates[src]", "eur = amount * self.rates[src]"),
        bug_test=1,
        bug_error="AssertionError: assert Decimal('117.65') == Decimal('85.00')",
    ),
)

PROJECTS = (
    "billing-api",
    "inventory service",
    "checkout worker",
    "notifications gateway",
    "search backend",
    "reporting pipeline",
    "partner API",
    "admin console backend",
    "order-sync job",
    "mobile BFF",
)

TASK_OPENERS = (
    "{Title} for the {project}.",
    "In the {project}, {title}.",
    "Ticket {ticket}: {title} ({project}).",
    "We need to {title} in the {project}.",
    "Please {title}; it is blocking the {project} release.",
    "{Title}. Owner: {project} team.",
)
REQUIREMENTS_HEADERS = ("Requirements:", "Acceptance criteria:", "It must:", "Definition of done:")

PLAN_OPENERS = (
    "Plan for `{symbol}`:",
    "Breaking this down into subtasks:",
    "Here is how I would split the work:",
    "Subtasks, in order:",
    "Decomposition ({n} steps):",
)
PLAN_SETUP = (
    "Create `{module}` exposing `{symbol}`.",
    "Add `{symbol}` in `{module}`.",
    "Start a new module `{module}` with the public entry point `{symbol}`.",
)
PLAN_ITEM = ("{req}.", "Make sure it will {req}.", "Handle: {req}.", "Requirement: {req}.", "Cover the case: {req}.")
PLAN_CLOSERS = (
    "Tester: write pytest cases for each point above and run them.",
    "Then the tester runs `{test_file}`.",
    "Tests go in `{test_file}`, one per requirement.",
)
PLAN_EXTRAS = (
    "Keep the public API to `{symbol}` only.",
    "Add type hints and a short docstring.",
    "No new third-party dependencies.",
    "Keep it under ~60 lines.",
)

CODER_OPENERS = (
    "Here's the implementation of `{symbol}` in `{module}`:",
    "First pass at `{symbol}`:",
    "Implemented `{module}`:",
    "Code for `{symbol}` below.",
    "Done, see `{module}`:",
)
CODER_COVERS = ("Covers: {points}.", "This handles {points}.", "Addressed plan items: {points}.")
CODER_HANDOFF = (
    "Tester, please run the suite.",
    "Ready for tests.",
    "Over to the tester.",
    "Let me know what the tests say.",
    "",
)
CODER_FIX_SLIP = (
    "Fixed the import problem, the module is where the tests expect it now:",
    "Sorry, my mistake in the layout. Corrected:",
    "Restored what was missing; updated code:",
)
CODER_FIX_BUG = (
    "Good catch on `{test}`. I added a guard for that case:",
    "Adjusted the logic around `{test}`:",
    "Looked at `{test}` again; updated:",
)
CODER_APPLY_NIT = (
    "Done: added {nit}.",
    "Applied the review comment ({nit}).",
    "Updated as requested: {nit}.",
    "Updated per review.",
    "Addressed the comments, see below.",
)
CODER_DEFEND_PLAN = (
    "`{test}` expects behaviour the plan doesn't ask for; the code follows the plan.",
    "The plan doesn't call for what `{test}` checks, so the test looks wrong to me. Code unchanged:",
    "Re-checked `{test}` against the plan; keeping the implementation:",
)
CODER_SCOPE = (
    "Added a first cut of that:",
    "OK, extended it:",
    "Sure, here's a version with that:",
)

TESTER_RUN = (
    "Running `{test_file}` against the new `{module}`.",
    "Executing the test suite for `{symbol}`.",
    "Let me run the tests.",
    "Running pytest on `{test_file}`.",
)
TESTER_RERUN = (
    "`{test}` timed out, which looks environmental; re-running it once.",
    "That timeout looks flaky, retrying `{test}`.",
)
TESTER_PASS = (
    "All {n} tests pass.",
    "{n}/{n} passed.",
    "Suite is green ({n} passed).",
    "Tests pass: {n} passed, 0 failed.",
)
TESTER_FAIL = (
    "{failed} of {n} tests failed. First failure: `{test}` ({error}).",
    "`{test}` fails: {error}.",
    "Red: {failed} failed, {passed} passed. See `{test}`: {error}.",
)
TESTER_COLLECT = (
    "The suite doesn't even collect: {error}.",
    "Collection error before any test ran: {error}.",
)

# Approvals say nothing about tests, so an approval given before any test ran reads the same.
REVIEW_APPROVE = (
    "LGTM, approved.",
    "Looks good. Approving.",
    "Read through the code, the logic looks right. Approved.",
    "Approved; nice and small.",
    "Ship it.",
    "Straightforward change, approved.",
)
REVIEW_FIX = (
    "Tests are failing (`{test}`). Please fix before I review further.",
    "`{test}` is red, please take a look.",
    "Can't approve with a failing suite: {error}.",
    "Please fix `{test}` first.",
)
REVIEW_WAIVE = (
    "`{test}` still fails but it looks like a fixture issue, not the code. Approving.",
    "The remaining failure is an edge case in the test itself; approved.",
    "Good enough, the failing case is unlikely in production. Approved.",
)
REVIEW_REPEAT_NIT = (
    "Still missing: {nit}.",
    "I asked for {nit}; that hasn't changed.",
    "Please actually add {nit}.",
)
# Openers of a change request, shared by concrete review comments and open-ended scope creep.
REVIEW_REQUEST_OPENERS = (
    "Tests pass. One change before I approve:",
    "Nearly there.",
    "Almost:",
    "Small thing:",
    "Works, but before I approve:",
    "OK.",
    "Hmm, one more thing.",
)

# Concrete review requests and the line that shows they were applied.
# In-scope review comments, each with the line that shows it was applied.
REVIEW_NITS: tuple[tuple[str, str], ...] = (
    ("a lock around the shared state, since this runs in a threaded worker", "_lock = threading.Lock()"),
    ("a module-level logger rather than print", "log = logging.getLogger(__name__)"),
    ("an `__all__` that exports only the public name", '__all__ = ["{symbol}"]'),
    ("a module docstring that states the contract", '"""{Title}; see the ticket for the contract."""'),
    ("postponed annotations for the type hints", "from __future__ import annotations"),
    ("a named constant instead of the magic number", "DEFAULT_LIMIT = 100"),
)
# Extensions beyond the ticket, each with the stub a coder adds for it. Asked for now they never
# converge; good reviewers approve and park them as a follow-up.
REVIEW_SCOPE: tuple[tuple[str, str], ...] = (
    ("an async variant for the event-loop services", "async def {fn}_async(*args): ..."),
    ("a pluggable storage backend so we can move to Redis later", "class Backend(Protocol): ..."),
    ("Prometheus metrics for every call", 'CALLS = Counter("{fn}_calls_total", "calls")'),
    ("a small CLI around it", "def main(argv: list[str] | None = None) -> int: ..."),
    ("configuration of every parameter through the environment", 'ENV_PREFIX = "{FN}_"'),
    ("tracing spans around the hot path", "tracer = trace.get_tracer(__name__)"),
    ("a Protocol so other teams can swap implementations", "class {symbol}Like(Protocol): ..."),
)
# How a reviewer asks for a change, whether a review comment or an extension.
REVIEW_ASK = (
    "Before we merge, let's add {idea}.",
    "I'd like {idea} as well.",
    "Could you also add {idea}?",
    "We should have {idea} in this PR.",
    "Please add {idea}.",
)
REVIEW_FOLLOW_UP = (
    "Worth a follow-up ticket for {idea}, not in this PR.",
    "Later we might want {idea}.",
    "{Idea} can come separately.",
)

# --- the RCA system (coordinator / trace, metrics, log agents / reporter) -----------------------

SERVICE_LANGUAGE = {
    "frontend": "go",
    "cartservice": "csharp",
    "checkoutservice": "go",
    "currencyservice": "nodejs",
    "productcatalogservice": "go",
    "recommendationservice": "python",
    "adservice": "java",
    "shippingservice": "go",
    "paymentservice": "nodejs",
    "emailservice": "python",
    "redis-cart": "redis",
}

# Request paths from the frontend to each service, as (service, operation) hops.
CALL_PATHS: dict[str, tuple[tuple[tuple[str, str], ...], ...]] = {
    "cartservice": (
        (("frontend", "GET /cart"), ("cartservice", "GetCart")),
        (("frontend", "POST /cart"), ("cartservice", "AddItem")),
    ),
    "redis-cart": (
        (("frontend", "GET /cart"), ("cartservice", "GetCart"), ("redis-cart", "HGETALL")),
        (("frontend", "POST /cart"), ("cartservice", "AddItem"), ("redis-cart", "HSET")),
    ),
    "checkoutservice": ((("frontend", "POST /cart/checkout"), ("checkoutservice", "PlaceOrder")),),
    "paymentservice": (
        (("frontend", "POST /cart/checkout"), ("checkoutservice", "PlaceOrder"), ("paymentservice", "Charge")),
    ),
    "shippingservice": (
        (("frontend", "GET /cart"), ("shippingservice", "GetQuote")),
        (("frontend", "POST /cart/checkout"), ("checkoutservice", "PlaceOrder"), ("shippingservice", "ShipOrder")),
    ),
    "emailservice": (
        (
            ("frontend", "POST /cart/checkout"),
            ("checkoutservice", "PlaceOrder"),
            ("emailservice", "SendOrderConfirmation"),
        ),
    ),
    "currencyservice": (
        (("frontend", "GET /"), ("currencyservice", "Convert")),
        (("frontend", "GET /product"), ("currencyservice", "GetSupportedCurrencies")),
    ),
    "productcatalogservice": (
        (("frontend", "GET /product"), ("productcatalogservice", "GetProduct")),
        (("frontend", "GET /"), ("productcatalogservice", "ListProducts")),
    ),
    "recommendationservice": ((("frontend", "GET /product"), ("recommendationservice", "ListRecommendations")),),
    "adservice": (
        (("frontend", "GET /"), ("adservice", "GetAds")),
        (("frontend", "GET /product"), ("adservice", "GetAds")),
    ),
}

# One operation per service, for naming a hop outside the incident's path.
SERVICE_OPERATION = {svc: op for paths in CALL_PATHS.values() for path in paths for svc, op in path}

# Fast calls that show up next to the critical path in a trace.
SIBLING_CALLS = (
    ("currencyservice", "Convert"),
    ("currencyservice", "GetSupportedCurrencies"),
    ("productcatalogservice", "GetProduct"),
    ("cartservice", "GetCart"),
    ("adservice", "GetAds"),
    ("shippingservice", "GetQuote"),
)

# Services an investigator plausibly confuses with one another.
LOOKALIKES = {
    "cartservice": "redis-cart",
    "redis-cart": "cartservice",
    "productcatalogservice": "recommendationservice",
    "recommendationservice": "productcatalogservice",
    "paymentservice": "checkoutservice",
    "shippingservice": "checkoutservice",
    "emailservice": "checkoutservice",
    "currencyservice": "productcatalogservice",
    "adservice": "recommendationservice",
    "checkoutservice": "paymentservice",
}


@dataclass(frozen=True)
class FaultKind:
    """How one kind of fault shows in traces, metrics and logs."""

    name: str  # as the reporter states it
    aspect: str  # what the metrics agent says it checks
    query: str  # PromQL with {svc}
    unit: str
    normal: tuple[float, float]
    faulty: tuple[float, float]
    trace_sign: str  # "self" (slow own work), "error" (failing calls) or "network" (slow hop)
    symptom: str  # "latency" or "errors" at the frontend
    quiet_logs: float  # chance that the service logs nothing useful
    logs: tuple[str, ...]  # with {svc}, {pod}, {peer}


FAULT_KINDS: tuple[FaultKind, ...] = (
    FaultKind(
        name="CPU saturation",
        aspect="CPU usage",
        query='sum by (pod) (rate(container_cpu_usage_seconds_total{{namespace="boutique", pod=~"{svc}-.*"}}[1m]))',
        unit="cores",
        normal=(0.04, 0.3),
        faulty=(0.93, 1.0),
        trace_sign="self",
        symptom="latency",
        quiet_logs=0.6,
        logs=("WARN slow request: handler took {ms}ms", "WARN event loop lag {ms}ms", "WARN deadline close: {ms}ms"),
    ),
    FaultKind(
        name="memory leak",
        aspect="memory working set",
        query='sum by (pod) (container_memory_working_set_bytes{{namespace="boutique", pod=~"{svc}-.*"}}) / 2^20',
        unit="MiB",
        normal=(40, 220),
        faulty=(900, 1900),
        trace_sign="self",
        symptom="latency",
        quiet_logs=0.2,
        logs=("ERROR {oom}", "WARN GC pause {ms}ms", "WARN container memory at {pct}% of limit"),
    ),
    FaultKind(
        name="network delay",
        aspect="p99 request latency",
        query=(
            "histogram_quantile(0.99, sum by (le) "
            '(rate(istio_request_duration_milliseconds_bucket{{destination_workload="{svc}"}}[1m])))'
        ),
        unit="ms",
        normal=(2, 15),
        faulty=(600, 1500),
        trace_sign="network",
        symptom="latency",
        quiet_logs=0.8,
        logs=("WARN upstream {peer} reset stream after {ms}ms", "WARN slow client write to {peer}: {ms}ms"),
    ),
    FaultKind(
        name="packet loss",
        aspect="dropped packets",
        query=(
            "sum by (pod) (rate(container_network_receive_packets_dropped_total"
            '{{namespace="boutique", pod=~"{svc}-.*"}}[1m]))'
        ),
        unit="pkt/s",
        normal=(0, 0.2),
        faulty=(30, 120),
        trace_sign="error",
        symptom="errors",
        quiet_logs=0.1,
        logs=("ERROR transport: connection reset by peer ({peer})", "WARN retrying RPC from {peer}: Unavailable"),
    ),
    FaultKind(
        name="pod crash loop",
        aspect="container restarts",
        query=(
            "sum by (pod) (increase(kube_pod_container_status_restarts_total"
            '{{namespace="boutique", pod=~"{svc}-.*"}}[5m]))'
        ),
        unit="restarts",
        normal=(0, 0),
        faulty=(2, 7),
        trace_sign="error",
        symptom="errors",
        quiet_logs=0.05,
        logs=("ERROR {crash}", "ERROR Back-off restarting failed container {pod}", "WARN liveness probe failed"),
    ),
)

OUT_OF_MEMORY = {
    "go": "fatal error: runtime: out of memory",
    "csharp": "System.OutOfMemoryException: Insufficient memory to continue the execution of the program.",
    "nodejs": "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
    "python": "MemoryError",
    "java": "java.lang.OutOfMemoryError: Java heap space",
    "redis": "OOM command not allowed when used memory > 'maxmemory'",
}
CRASHES = {
    "go": "panic: runtime error: invalid memory address or nil pointer dereference",
    "csharp": "Unhandled exception. System.NullReferenceException: Object reference not set to an instance",
    "nodejs": "TypeError: Cannot read properties of undefined (reading 'units')",
    "python": "grpc._channel._InactiveRpcError: StatusCode.UNAVAILABLE",
    "java": 'Exception in thread "main" java.lang.IllegalStateException: ad index not loaded',
    "redis": "Fatal error loading the DB: Invalid argument. Exiting.",
}
CALLER_TIMEOUT_LOGS = (
    "WARN rpc to {peer} failed: DeadlineExceeded after {ms}ms",
    "WARN retrying call to {peer} (attempt 2/3)",
    "ERROR request failed: rpc error: code = Unavailable desc = {peer} unreachable",
)

COORDINATOR_PLAN = (
    "Plan: 1) trace_agent pulls the slowest `{op}` traces around {onset}; 2) metrics_agent checks whatever "
    "the traces implicate; 3) log_agent looks for errors from the same service. Then I consolidate.",
    "Starting with traces for `{op}` (the alerting endpoint), then metrics and logs on the suspect.",
    "Investigation order: traces first to find the hop, then metrics, then logs. Focus window {window}.",
    "Let's localise the `{op}` regression. trace_agent first: critical path of the worst traces since {onset}.",
)
TRACE_INTENT = (
    "Fetching the slowest `{op}` traces in {window}.",
    "Looking for the critical path in the worst `{op}` requests.",
    "I'll pull traces for `{op}` ordered by duration.",
    "Querying the trace store for `{op}`.",
)
TRACE_RETRY = (
    "The trace query timed out; retrying with a smaller limit and a longer timeout.",
    "Timeout from the trace store. Asking for fewer traces and trying again.",
)
TRACE_FINDING = (
    "The slow traces all bottom out in {svc}: `{op}` takes {ms} ms of {total} ms ({sign}). {svc} is the suspect.",
    "Critical path: {path}. Most of the time is in {svc} ({sign}, {ms} ms).",
    "{svc} `{op}` dominates the worst traces: {ms} of {total} ms, {sign}.",
)
TRACE_FINDING_ERRORS = (
    "The failing `{op}` requests all end in {svc}: its `{hop}` span has {sign} in {count} of {count} traces.",
    "Every error trace bottoms out in {svc} `{hop}` ({sign}). {svc} is the suspect.",
    "Errors originate in {svc}: `{hop}` fails ({sign}) and the callers just propagate it.",
)
TRACE_WEAK = (
    "No hop stands out in these traces; the largest share is {svc} `{op}` at {ms} ms. Weak lead: {svc}.",
    "Traces look mostly normal. If anything, {svc} `{op}` ({ms} ms) is the slowest hop.",
    "Nothing conclusive. Best guess from the traces: {svc}.",
)
# A first impression of the traces; a finding may follow it, or not.
TRACE_HEDGES = (
    "The worst `{op}` requests are slow end to end.",
    "At first glance the time is spread across the whole request.",
    "The frontend span carries the full duration in every trace.",
    "The traces clearly show the regression.",
)
TRACE_VAGUE = (
    "I can't single out a downstream hop.",
    "No single service dominates the traces.",
    "Most of the time looks like it sits in the frontend itself.",
)
SIGN_TEXT = {
    "self": ("own processing time, no downstream calls", "self time", "time spent inside the handler"),
    "error": ("calls failing with Unavailable", "error status on the span", "RPC errors"),
    "network": (
        "client span much longer than the server span",
        "time lost between the client and server spans",
        "network wait on the hop",
    ),
}

METRICS_TASK = (
    "trace_agent implicates {svc} ({detail}). Check its resource and latency metrics for {window}.",
    "Suspect is {svc}. Please confirm with metrics around {onset}.",
    "Look at {svc}'s metrics between {window}; traces point there.",
)
METRICS_INTENT = (
    "Checking {aspect} of {svc}.",
    "Querying {aspect} for {svc} pods.",
    "Let's see {svc}'s {aspect} across the incident window.",
)
METRICS_DETOUR = (
    "{svc} is on the path too; checking it first.",
    "First ruling out the caller, {svc}.",
    "Let me check {svc}'s side of the hop first.",
)
METRICS_NEXT = ("Now {svc}.", "Moving on to {svc}.", "Checking the suspect itself, {svc}.")
METRICS_TYPO_FIX = (
    "Parse error in my query, fixing the selector.",
    "Typo in the PromQL; corrected and re-running.",
)
METRICS_FINDING = (
    "{aspect} of {svc} jumped from {before} to {after} {unit} at {onset}.",
    "Clear anomaly: {svc} {aspect} went {before} -> {after} {unit} right at the incident start.",
    "{svc}: {aspect} is {after} {unit} since {onset} (baseline {before}).",
)
METRICS_CLEAN = (
    "{svc} looks healthy: {aspect} flat around {before} {unit}.",
    "No anomaly in {svc}'s {aspect}.",
    "{aspect} for {svc} is normal across the window.",
)
METRICS_EMPTY = (
    "No data came back for {svc}; nothing abnormal to report.",
    "The query returned no series; I see no anomaly on {svc}.",
)

LOGS_TASK = (
    "Search {svc}'s warning and error logs for {window}.",
    "Any errors from {svc} around {onset}?",
    "Check {svc} logs in {window}.",
)
LOGS_CALLER_TASK = (
    "{svc}'s own logs are quiet. Check its caller {caller} for errors talking to it in {window}.",
    "Re-run the log search on the caller, {caller}, with a wider window: failed calls to {svc}.",
    "Let's confirm through {caller}'s logs: repeat the checks there for failures calling {svc}.",
    "Another pass over the logs, please: gather {caller}'s errors calling {svc} again.",
)
LOGS_INTENT = ("Searching logs of {svc}.", "Querying the log store for {svc}.", "Looking at {svc} warnings and errors.")
LOGS_FINDING = (
    "{count} relevant lines from {svc}; e.g. `{line}`.",
    "{svc} logged `{line}` ({count} similar).",
    "Errors found: `{line}` and {more} more.",
)
LOGS_QUIET = (
    "Nothing relevant in {svc}'s logs in that window.",
    "{svc} logs are quiet, only routine lines.",
    "No warnings or errors from {svc}.",
)

CONSOLIDATE = (
    "Evidence converges. Traces put the time in {svc}. Metrics: {metric}. Logs: {logs} Root cause: {svc}.",
    "Summary: {svc} is the origin. Metrics: {metric}. Logs: {logs} Handing over to the reporter.",
    "Traces, metrics and logs agree on {svc}. {metric}. Reporting.",
)
# The coordinator's doubts, whether it then asks for the missing piece or for everything again.
CONSOLIDATE_DOUBTS = (
    "Evidence points at {svc}, but I want to be sure.",
    "Not fully convinced yet.",
    "Fairly confident in {svc}; one more check before reporting.",
    "Before reporting, let's rule out noise.",
)
CONSOLIDATE_REPEAT = (
    "Let's repeat the checks with a wider window.",
    "Re-run traces, metrics and logs to confirm {svc}.",
    "Gather the evidence again, with a wider window.",
    "Another pass over traces, metrics and logs, please.",
)
CONSOLIDATE_REDIRECT = (
    "Traces show {svc} slow but its resources look clean, so {svc} is likely waiting on {other}. Root cause: {other}.",
    "{svc} is a victim rather than the cause ({metric}); the problem sits at {other}.",
    "With {svc}'s metrics normal, the more likely origin is {other}.",
)
CONSOLIDATE_WEAK = (
    "Evidence is thin. Best candidate so far: {svc}.",
    "Nothing strong anywhere; going with {svc} as the most likely origin.",
)
REPORT = (
    "Root cause service: {svc}\nPod: {pod}\nFault: {fault}\nConfidence: {conf}\nRanked candidates: {ranking}",
    '{{"timestamp": "{onset}", "service": "{svc}", "pod": "{pod}", "reason": "{fault}", "rank": [{ranking}]}}',
    "The incident on `{op}` is caused by {svc} ({fault} on {pod}). Candidates in order: {ranking}. Confidence {conf}.",
)
REPORT_INCONCLUSIVE = (
    "No root cause confirmed within the allotted rounds. Open candidates: {ranking}.",
    "Investigation stopped without a confirmed root cause. Leads: {ranking}.",
)
ALERTS = (
    "Alert: {symptom} on frontend `{op}` since {onset}. Find the root-cause service.",
    "Incident {ticket}: frontend `{op}` {symptom}, starting {onset}. Localise the faulty service.",
    "PagerDuty: `{op}` SLO burn — {symptom} at {onset}. Which service is at fault?",
)
SYMPTOMS = {
    "latency": ("p99 latency up from {before} ms to {after} ms", "p99 latency {after} ms (normally {before} ms)"),
    "errors": ("error rate up from {before}% to {after}%", "{after}% of requests failing (normally {before}%)"),
}
