"""The generation engine: continuous batching over the packed model step.

Requests join and leave between steps. Each step packs, for every running request, either a
chunk of its prompt (prefill, bounded per step so a long prompt cannot stall the others) or
its last token (decode); one forward pass serves them all, each segment attending over its
own KV cache with its own attention backend. Tokens stream out through per-request queues.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch
from prometheus_client import Counter, Gauge, Histogram

from services.inference.attention import AttentionBackend, create_backend
from services.inference.kv_cache import SequenceCache
from services.inference.model import Segment, Transformer
from services.inference.sampling import SamplingParams, sample
from services.inference.tokenizer import IncrementalDetokenizer, Tokenizer

log = logging.getLogger(__name__)

QUEUE_LENGTH = Gauge("faultline_inference_queue_length", "Requests waiting for a batch slot")
RUNNING = Gauge("faultline_inference_running_requests", "Requests in the running batch")
TOKENS = Counter("faultline_inference_generated_tokens_total", "Tokens generated")
PROMPT_TOKENS = Counter("faultline_inference_prompt_tokens_total", "Prompt tokens prefilled")
TTFT = Histogram(
    "faultline_inference_time_to_first_token_seconds",
    "Time from submission to the first generated token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
KV_BYTES = Gauge("faultline_inference_kv_cache_bytes", "Bytes held by the KV caches of running requests")
KV_DENSE_BYTES = Gauge(
    "faultline_inference_kv_cache_dense_equivalent_bytes",
    "Bytes the running requests' caches would hold with dense attention (before any compression)",
)
FINISHED = Counter("faultline_inference_requests_total", "Finished requests", ["finish_reason"])
TV_MAX = Gauge(
    "faultline_inference_tv_distance_max",
    "Certified total-variation distance (max over heads and layers) of the last request that measured one",
)


class ContextTooLong(ValueError):
    """The prompt does not fit the engine's context limit."""


@dataclass(frozen=True)
class StreamEvent:
    text: str  # new text since the previous event
    token_ids: tuple[int, ...]  # new tokens since the previous event
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    # On the final event: what an approximate attention backend measured (e.g. tv_max, tv_mean).
    attention: dict[str, float] = field(default_factory=dict)


def attention_summary(stats: dict[str, float]) -> dict[str, float]:
    """The per-request figures clients see, from the raw sums a backend accumulates."""
    out: dict[str, float] = {}
    if stats.get("tv_count"):
        out["tv_max"] = stats["tv_max"]
        out["tv_mean"] = stats["tv_sum"] / stats["tv_count"]
    if stats.get("keys_total"):
        out["keys_scored_fraction"] = stats["keys_scored"] / stats["keys_total"]
        out["keys_kept_fraction"] = stats["keys_kept"] / stats["keys_total"]  # k/n
    return out


class RequestHandle:
    """The caller's side of a request: its events, and a way to cancel it."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self._events: queue.Queue[StreamEvent] = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, event: StreamEvent) -> None:
        self._events.put(event)

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            event = self._events.get()
            yield event
            if event.finished:
                return

    async def aiter(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await asyncio.to_thread(self._events.get)
            yield event
            if event.finished:
                return

    def result(self) -> tuple[str, StreamEvent]:
        """Blocks until done: (whole generated text, final event)."""
        parts = []
        for event in self:
            parts.append(event.text)
        return "".join(parts), event


@dataclass
class _Sequence:
    handle: RequestHandle
    prompt: list[int]
    params: SamplingParams
    backend: AttentionBackend
    cache: SequenceCache
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    submitted_at: float
    max_new: int
    prefilled: int = 0
    output: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already streamed
    sent_ids: int = 0  # tokens of `output` already streamed

    @property
    def decoding(self) -> bool:
        # The last prompt token goes through a decode step, not the prefill: the first answer
        # token then comes from the request's attention backend like every later one (sparse
        # backends approximate decode only).
        return self.prefilled == len(self.prompt) - 1

    def dense_equivalent_bytes(self) -> int:
        """What this sequence's cache would hold uncompressed: every token seen, K and V only."""
        seen = self.prefilled + len(self.output)  # each emitted token came from one decode step
        return seen * sum(layer.kv_bytes_per_token() for layer in self.cache.layers)


@dataclass(frozen=True)
class EngineSettings:
    max_batch_size: int = 8
    max_context: int = 65_536
    prefill_chunk: int = 2048  # prompt tokens per step, shared by all prefilling requests
    attention_backend: str = "dense"  # for requests that do not choose one
    # Per backend, the defaults a request's options are merged over (e.g. HATA's hash weights).
    backend_options: dict[str, dict[str, object]] = field(default_factory=dict)


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, settings: EngineSettings | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or EngineSettings()
        config = model.config
        self._dtype = next(model.parameters()).dtype
        self._eos = set(tokenizer.eos_ids) | set(config.eos_token_id)
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._lock = threading.Condition()
        self._backends: dict[tuple, AttentionBackend] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.generated_tokens = 0
        self.peak_batch = 0  # most sequences served by one step so far

    # -- requests ----------------------------------------------------------------------------

    def backend_for(self, options: dict[str, object]) -> AttentionBackend:
        """The backend a request asked for (instances are shared by requests with equal options)."""
        options = dict(options)
        name = str(options.pop("backend", self.settings.attention_backend))
        merged = {**self.settings.backend_options.get(name, {}), **options}
        key = (name, tuple(sorted((k, repr(v)) for k, v in merged.items())))
        if key not in self._backends:
            backend = create_backend(name, **merged)
            backend.validate(self.model.config)
            self._backends[key] = backend
        return self._backends[key]

    def submit_text(self, prompt: str, params: SamplingParams, request_id: str | None = None) -> RequestHandle:
        if not prompt:
            raise ValueError("the prompt is empty")
        return self.submit(self.tokenizer.encode(prompt), params, request_id)

    def submit(self, prompt: list[int], params: SamplingParams, request_id: str | None = None) -> RequestHandle:
        """Queue a request; raises ValueError (a client error) for an empty or too-long prompt."""
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.settings.max_context:
            raise ContextTooLong(
                f"the prompt has {len(prompt)} tokens; the context limit is {self.settings.max_context}"
            )
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in prompt):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        backend = self.backend_for(params.attention)
        config = self.model.config
        handle = RequestHandle(request_id or f"req-{next(self._ids)}")
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        sequence = _Sequence(
            handle=handle,
            prompt=list(prompt),
            params=params,
            backend=backend,
            cache=SequenceCache.empty(
                config.num_hidden_layers, config.num_key_value_heads, config.head_dim, self._dtype
            ),
            detok=IncrementalDetokenizer(self.tokenizer),
            generator=generator,
            submitted_at=time.perf_counter(),
            max_new=min(params.max_tokens, self.settings.max_context - len(prompt)),
        )
        with self._lock:
            self._waiting.append(sequence)
            QUEUE_LENGTH.set(len(self._waiting))
            self._lock.notify()
        return handle

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not (self._waiting or self._running) and not self._stop.is_set():
                    self._lock.wait(timeout=1.0)
            if self._stop.is_set():
                break
            try:
                self.step()
            except Exception as error:  # a bug must not leave clients waiting forever
                log.exception("engine step failed")
                for seq in self._running:
                    self._finish(seq, "error", error=f"{type(error).__name__}: {error}")
                self._running.clear()

    def step(self) -> int:
        """One scheduler iteration; returns the number of tokens processed."""
        with self._lock:
            while self._waiting and len(self._running) < self.settings.max_batch_size:
                self._running.append(self._waiting.popleft())
            QUEUE_LENGTH.set(len(self._waiting))
        for seq in [s for s in self._running if s.handle.cancelled.is_set()]:
            self._finish(seq, "cancelled")
        tokens: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        sampled: list[_Sequence | None] = []
        budget = self.settings.prefill_chunk
        for seq in self._running:
            decode = seq.decoding
            if decode:
                new = [seq.output[-1] if seq.output else seq.prompt[-1]]
            else:
                count = min(len(seq.prompt) - 1 - seq.prefilled, budget)
                if count == 0:
                    continue
                budget -= count
                new = seq.prompt[seq.prefilled : seq.prefilled + count]
                seq.prefilled += count
                PROMPT_TOKENS.inc(count)
            start = seq.cache.length
            segments.append(Segment(seq.cache, len(tokens), len(new), seq.backend))
            tokens += new
            positions += range(start, start + len(new))
            sampled.append(seq if decode else None)
        if not segments:
            return 0
        self.peak_batch = max(self.peak_batch, len(segments))
        logits = self.model.forward_packed(torch.tensor(tokens), torch.tensor(positions), segments)
        for seq, row in zip(sampled, logits, strict=True):
            if seq is not None:  # prefill chunks sample nothing
                self._emit(seq, sample(row, seq.params, seq.generator))
        RUNNING.set(len(self._running))
        KV_BYTES.set(sum(s.cache.nbytes() for s in self._running))
        KV_DENSE_BYTES.set(sum(s.dense_equivalent_bytes() for s in self._running))
        return len(tokens)

    def _emit(self, seq: _Sequence, token: int) -> None:
        if not seq.output:
            TTFT.observe(time.perf_counter() - seq.submitted_at)
        seq.output.append(token)
        TOKENS.inc()
        self.generated_tokens += 1
        if token in self._eos and not seq.params.ignore_eos:
            self._finish(seq, "stop")
            return
        seq.text += seq.detok.push(token)
        stop_at = min((i for s in seq.params.stop if (i := seq.text.find(s)) >= 0), default=-1)
        if stop_at >= 0:
            seq.text = seq.text[:stop_at]
            self._finish(seq, "stop")
            return
        if len(seq.output) >= seq.max_new:
            self._finish(seq, "length")
            return
        # Hold back a tail that could still become a stop string.
        hold = max(
            (k for s in seq.params.stop for k in range(len(s) - 1, 0, -1) if seq.text.endswith(s[:k])), default=0
        )
        ready = len(seq.text) - hold
        if ready > seq.sent:
            seq.handle.put(
                StreamEvent(
                    seq.text[seq.sent : ready],
                    (token,),
                    prompt_tokens=len(seq.prompt),
                    completion_tokens=len(seq.output),
                )
            )
            seq.sent = ready

    def _finish(self, seq: _Sequence, reason: str, error: str | None = None) -> None:
        attention = attention_summary(seq.cache.stats)
        if "tv_max" in attention:
            TV_MAX.set(attention["tv_max"])
        seq.handle.put(
            StreamEvent(
                seq.text[seq.sent :],
                tuple(seq.output[seq.sent_ids :]),
                finished=True,
                finish_reason=reason,
                prompt_tokens=len(seq.prompt),
                completion_tokens=len(seq.output),
                error=error,
                attention=attention,
            )
        )
        seq.sent = len(seq.text)
        FINISHED.labels(reason).inc()
        if seq in self._running:
            self._running.remove(seq)

    # -- figures -----------------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        return {
            "waiting": len(self._waiting),
            "running": len(self._running),
            "kv_cache_bytes": sum(s.cache.nbytes() for s in self._running),
            "kv_cache_dense_equivalent_bytes": sum(s.dense_equivalent_bytes() for s in self._running),
            "generated_tokens": self.generated_tokens,
            "peak_batch": self.peak_batch,
        }
