"""Embedding service cost: spans/s and windows/s from Kafka end to end, and embedding latency per window.

One simulator run (online-boutique, a CPU fault) is put on the OTLP topics of a private
broker; the service's own consumer (the bus, decode, slicer, baseline, views, MiniLM, heads,
publishing StateEmbedding) then reads it from the start. Same-run baselines: the bare
in-process ingest (decode + slice, no Kafka) and a bare kafka-python read of the same records.
A cProfile of the in-process path says what limits throughput.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from kafka import KafkaConsumer

from deploy.kafka.broker import KafkaBroker
from loadtests.simulator.dataset import otlp_records
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common import otlp, topics
from services.common.admin import ensure_topics
from services.common.bus import EventConsumer, Publisher
from services.common.settings import KafkaSettings
from services.common.topics import CATALOGUE
from services.embedding.checkpoint import RuntimeSlicerModel
from services.embedding.ingest import Slicer
from services.embedding.service import EmbeddingEngine

DURATION_S = float(os.environ.get("FAULTLINE_BENCH_EMBEDDING_S", "600"))
RATE_SCALE = float(os.environ.get("FAULTLINE_BENCH_EMBEDDING_RATE", "4"))
COMMAND = "make bench BENCH=embedding  (or: faultline bench embedding)"
DECODERS = {
    topics.OTLP_SPANS: otlp.decode_spans,
    topics.OTLP_METRICS: otlp.decode_metrics,
    topics.OTLP_LOGS: otlp.decode_logs,
}


def records() -> tuple[list[tuple[str, bytes, int]], int]:
    scenario = Scenario(
        ScenarioSpec(faults=("cpu:cartservice@300s+180s",), duration_s=DURATION_S, seed=7, rate_scale=RATE_SCALE)
    )
    out, spans = [], 0
    for chunk in scenario.chunks(10.0):
        spans += len(chunk.spans)
        out += list(otlp_records(scenario, chunk))
    return out, spans


def ingest_only(data: list[tuple[str, bytes, int]]) -> tuple[float, str]:
    """Decode + slice in process (no Kafka, no model): the ceiling of the hot path, with its profile."""
    slicer = Slicer()
    adders = {
        topics.OTLP_SPANS: slicer.add_spans,
        topics.OTLP_METRICS: slicer.add_metrics,
        topics.OTLP_LOGS: slicer.add_logs,
    }
    profile = cProfile.Profile()
    began = time.perf_counter()
    profile.enable()
    for topic, value, _ in data:
        adders[topic](DECODERS[topic](value))
        slicer.ready()
    slicer.ready(flush=True)
    profile.disable()
    elapsed = time.perf_counter() - began
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(8)
    return slicer.spans / elapsed, text.getvalue()


def bare_read(settings: KafkaSettings, count: int) -> float:
    consumer = KafkaConsumer(
        topics.OTLP_SPANS,
        topics.OTLP_METRICS,
        topics.OTLP_LOGS,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5_000,
        **settings.client_config(),
    )
    began = time.perf_counter()
    for seen, _ in enumerate(consumer, 1):
        if seen >= count:
            break
    elapsed = time.perf_counter() - began
    consumer.close()
    return elapsed


def end_to_end(settings: KafkaSettings, model: RuntimeSlicerModel, count: int, spans: int) -> dict:
    engine = EmbeddingEngine(model)
    publisher = Publisher(settings, source="bench/embedding")
    engine.publisher = publisher
    consumer = EventConsumer(settings, f"bench-embedding-{time.time_ns()}", engine.routes(), publisher)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    began = time.perf_counter()
    thread.start()
    while consumer.stats.handled + consumer.stats.dead_lettered < count and time.perf_counter() - began < 600:
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    stop.set()
    thread.join(timeout=60)
    publisher.flush()
    publisher.close()
    return {
        "seconds": elapsed,
        "spans_per_s": spans / elapsed,
        "windows": engine.published,
        "windows_per_s": engine.published / elapsed,
    }


def embedding_latency(model: RuntimeSlicerModel, data: list[tuple[str, bytes, int]]) -> dict:
    """Per window, uncached: baseline scoring + views + MiniLM on three views + projections + heads."""
    engine = EmbeddingEngine(model)
    adders = {
        topics.OTLP_SPANS: engine.slicer.add_spans,
        topics.OTLP_METRICS: engine.slicer.add_metrics,
        topics.OTLP_LOGS: engine.slicer.add_logs,
    }
    windows = []
    for topic, value, _ in data:
        adders[topic](DECODERS[topic](value))
        windows += engine.slicer.ready()
    times = []
    for window in windows:
        model.backbone._cache.clear()  # the worst case: no view seen before
        began = time.perf_counter()
        engine.emit([window])
        times.append(time.perf_counter() - began)
    return {
        "windows": len(times),
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * statistics.quantiles(times, n=10)[-1],
    }


def run() -> dict:
    torch.set_num_threads(2)
    data, spans = records()
    print(f"  scenario: {DURATION_S:.0f}s at {RATE_SCALE}x traffic, {spans} spans in {len(data)} OTLP records")
    ingest_rate, profile = ingest_only(data)
    print(f"  in-process decode+slice: {ingest_rate:,.0f} spans/s")
    model = RuntimeSlicerModel.load()
    latency = embedding_latency(model, data)
    print(
        f"  embedding latency per window (uncached views): median {latency['median_ms']:.1f} ms,"
        f" p90 {latency['p90_ms']:.1f} ms"
    )
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker.ephemeral(Path(tmp)) as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, poll_timeout_ms=100)
        ensure_topics(settings, CATALOGUE)
        producer = Publisher(settings, source="bench/embedding")
        for topic, value, time_ms in data:
            producer.send(topic, value, timestamp_ms=time_ms)
        producer.flush()
        producer.close()
        bare_s = bare_read(settings, len(data))
        e2e = end_to_end(settings, model, len(data), spans)
    print(
        f"  Kafka → StateEmbedding: {e2e['spans_per_s']:,.0f} spans/s, {e2e['windows_per_s']:.1f} windows/s"
        f" ({e2e['windows']} windows)"
    )
    print(f"  bare kafka-python read of the same records: {spans / bare_s:,.0f} spans/s")
    print("  profile of decode+slice (tottime):")
    print("\n".join("    " + line for line in profile.splitlines()[6:18]))
    return {
        "command": COMMAND,
        "spans": spans,
        "records": len(data),
        "ingest_only_spans_per_s": ingest_rate,
        "end_to_end": e2e,
        "bare_kafka_spans_per_s": spans / bare_s,
        "embedding_latency": latency,
        "profile": profile,
    }
