"""Detector (EAGER): step-scoring latency, and steps/s end to end through Kafka.

- Latency: :meth:`Detector.observe` per step with an empty text cache (the MiniLM backbone runs for every
  new text), against the baseline of the backbone alone on the same texts; the ratio is what the head,
  the prefix GRU and the knowledge-base search add.
- Throughput: simulated runs' GenAI spans published to a private broker's otlp topic as fast as possible;
  time until the service has scored every step, alerts and mitigations published on the way.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from deploy.kafka.broker import KafkaBroker
from loadtests.simulator.agents import generate_runs, run_to_otlp, run_to_otlp_steps
from services.common.admin import ensure_topics
from services.common.bus import Publisher
from services.common.settings import GrpcSettings, KafkaSettings
from services.common.topics import TopicSpec
from services.detector.detection import Detector
from services.detector.encoder import CHECKPOINT, Backbone, load_encoder
from services.detector.knowledge_base import KnowledgeBase
from services.detector.steps import from_request, group_runs
from services.detector.train import CALIBRATION_FILE, KB_FILE, load_thresholds

RUNS = int(os.environ.get("FAULTLINE_BENCH_DETECTOR_RUNS", "8"))
COMMAND = "make bench BENCH=detector  (or: faultline bench detector)"


def _latency(seed: int) -> dict:
    encoder = load_encoder(CHECKPOINT)
    kb = KnowledgeBase(CHECKPOINT / KB_FILE, encoder_version=encoder.version)
    sims = generate_runs("code", RUNS // 2, seed) + generate_runs("rca", RUNS // 2, seed)
    runs = [run for sim in sims for run in group_runs(from_request(run_to_otlp(sim)))]
    detector = Detector(encoder, Backbone(None, threads=2), kb, load_thresholds(CHECKPOINT / CALIBRATION_FILE))
    full = []
    for run in runs:
        full += [detector.observe(step).latency_ms for step in run.steps]
    baseline_backbone = Backbone(None, threads=2)
    base = []
    for run in runs:
        for step in run.steps:
            started = time.perf_counter()
            baseline_backbone.embed([step.input_text, step.output_text])
            base.append((time.perf_counter() - started) * 1e3)
    return {
        "steps": len(full),
        "observe_ms_mean": statistics.fmean(full),
        "observe_ms_p50": statistics.median(full),
        "observe_ms_p95": sorted(full)[int(len(full) * 0.95)],
        "backbone_only_ms_mean": statistics.fmean(base),
        "ratio_observe_vs_backbone": statistics.fmean(full) / statistics.fmean(base),
    }


def _through_kafka(tmp: Path, seed: int) -> dict:
    from services.detector.main import DetectorSettings, build

    with KafkaBroker.ephemeral(tmp / "kafka") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        names = {k: f"bench.detector.{k}" for k in ("spans", "states", "alerts", "incidents", "mitigations")}
        ensure_topics(
            kafka,
            [s for n in names.values() for s in (TopicSpec(n, 1, 3_600_000), TopicSpec(n + ".dlq", 1, 3_600_000))],
        )
        settings = DetectorSettings(
            kafka=kafka,
            grpc=GrpcSettings(port=0),
            metrics_port=0,
            heartbeat_s=0,
            data_dir=tmp / "data",
            spans_topic=names["spans"],
            states_topic=names["states"],
            alerts_topic=names["alerts"],
            incidents_topic=names["incidents"],
            mitigations_topic=names["mitigations"],
        )
        runtime, app = build(settings)
        runtime.start()
        sims = generate_runs("code", RUNS // 2, seed) + generate_runs("rca", RUNS // 2, seed)
        requests = [(sim.trace_id, r) for sim in sims for r in run_to_otlp_steps(sim)]
        publisher = Publisher(kafka, source="bench/detector")
        started = time.perf_counter()
        for trace_id, request in requests:  # keyed by trace: a run's steps in one partition, in order
            publisher.send(names["spans"], request.SerializeToString(), key=trace_id)
        publisher.flush()
        while app.steps_handled < len(requests):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        publisher.close()
        runtime.stop_event.set()
        runtime.stop()
    return {"kafka_steps": len(requests), "kafka_seconds": elapsed, "kafka_steps_per_s": len(requests) / elapsed}


def run() -> dict:
    result = {"command": COMMAND, "runs": RUNS}
    result |= _latency(seed=301)
    print(
        f"  observe(): {result['observe_ms_mean']:.1f} ms/step mean, p95 {result['observe_ms_p95']:.1f} ms "
        f"({result['steps']} steps); backbone alone {result['backbone_only_ms_mean']:.1f} ms "
        f"(ratio {result['ratio_observe_vs_backbone']:.2f})",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result |= _through_kafka(Path(tmp), seed=302)
    print(
        f"  through Kafka: {result['kafka_steps']} steps in {result['kafka_seconds']:.1f}s = "
        f"{result['kafka_steps_per_s']:.1f} steps/s (cold text cache)",
        flush=True,
    )
    return result
