"""Simulator throughput: spans/s generated and encoded, and spans/s sustained into the local broker.

The baseline is the same scenario generated and encoded to OTLP bytes without Kafka; the
ratio is what producing to the broker costs. A paced run at a target rate (``faultline
simulate --rate``) shows whether the simulator sustains it on this machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from deploy.kafka.broker import KafkaBroker
from loadtests.simulator.dataset import otlp_records
from loadtests.simulator.live import publish
from loadtests.simulator.sanity import run_sanity
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common.admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.topics import CATALOGUE

REPEATS = int(os.environ.get("FAULTLINE_BENCH_REPEATS", "3"))
SCALE = 10.0  # Online Boutique at 10x its default traffic: ~8,000 spans per scenario second
DURATION_S = 30.0
TARGET = float(os.environ.get("FAULTLINE_BENCH_SIM_RATE", "20000"))
COMMAND = "make bench BENCH=simulator  (or: faultline bench simulator)"


def _spec(seed: int, epoch_s: int) -> ScenarioSpec:
    return ScenarioSpec(
        faults=("cpu:cartservice@15s",), duration_s=DURATION_S, seed=seed, epoch_s=epoch_s, rate_scale=SCALE
    )


def generate_only(seed: int) -> float:
    scenario = Scenario(_spec(seed, int(time.time())))
    start = time.perf_counter()
    spans = 0
    for chunk in scenario.chunks(5.0):
        for _record in otlp_records(scenario, chunk):
            pass
        spans += len(chunk.spans)
    return spans / (time.perf_counter() - start)


def run() -> dict:
    rounds: dict[str, list[float]] = {"generate": [], "kafka": []}
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker.ephemeral(Path(tmp)) as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ensure_topics(settings, CATALOGUE)
        for i in range(REPEATS):
            rounds["generate"].append(generate_only(i))
            report = publish(Scenario(_spec(i, int(time.time()) - 60)), settings, speed=0, chunk_s=5.0)
            rounds["kafka"].append(report.spans_per_s)
            print(
                f"  round {i + 1}/{REPEATS}: generate+encode {rounds['generate'][-1]:9,.0f} spans/s, "
                f"into Kafka {rounds['kafka'][-1]:9,.0f} spans/s",
                flush=True,
            )
        # Paced load at the target rate, as `faultline simulate --rate` runs it.
        probe = Scenario(ScenarioSpec(duration_s=30.0, seed=99))
        base = sum(len(c.spans) for c in probe.chunks(10.0)) / 30.0
        paced = publish(
            Scenario(ScenarioSpec(duration_s=20.0, seed=7, epoch_s=int(time.time()), rate_scale=TARGET / base)),
            settings,
            speed=1.0,
            chunk_s=1.0,
        )
    generate, kafka = statistics.median(rounds["generate"]), statistics.median(rounds["kafka"])
    print("  n-sigma sanity (top-1/top-3 of the injected service, 6 Online Boutique cases per kind):")
    sanity = run_sanity(cases=6)
    for kind, row in sanity.items():
        print(f"    {kind:>9}: top1 {row['top1']:.2f}  top3 {row['top3']:.2f}")
    result = {
        "command": COMMAND,
        "generate_spans_per_s": generate,
        "kafka_spans_per_s": kafka,
        "kafka_vs_generate_ratio": kafka / generate,
        "paced_target_spans_per_s": TARGET,
        "paced_achieved_spans_per_s": paced.spans_per_s,
        "paced_spans": paced.spans,
        "nsigma_sanity": sanity,
    }
    print(
        f"  medians of {REPEATS}: generate+encode {generate:,.0f} spans/s; into the local broker {kafka:,.0f} "
        f"spans/s (ratio {kafka / generate:.2f})"
    )
    print(
        f"  paced load: target {TARGET:,.0f} spans/s, achieved {paced.spans_per_s:,.0f} spans/s over 20 s "
        f"({paced.spans:,} spans)"
    )
    print(f"  command: {COMMAND}")
    return result
