"""A scenario: a system, its traffic and the faults injected into it, generated chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd

from loadtests.simulator.faults import Fault, FaultModel, parse_fault
from loadtests.simulator.logs import build_logs
from loadtests.simulator.metrics import MetricFrames, NoiseBank, build_metrics
from loadtests.simulator.topology import Topology, load
from loadtests.simulator.traffic import SpanTable, TrafficGenerator

# Datasets are reproducible: the same seed gives the same bytes, so time starts at a fixed
# epoch (2026-01-01T00:00:00Z) unless the caller (live output) asks for "now".
DEFAULT_EPOCH_S = 1_767_225_600


@dataclass(frozen=True)
class ScenarioSpec:
    system: str = "online-boutique"
    faults: tuple[str, ...] = ()
    duration_s: float = 1200.0
    seed: int = 0
    epoch_s: int = DEFAULT_EPOCH_S
    rate_scale: float = 1.0


@dataclass
class Chunk:
    """Telemetry of scenario time [t0, t1)."""

    t0: float
    t1: float
    spans: SpanTable
    metrics: MetricFrames
    logs: pd.DataFrame = field(repr=False)


class Scenario:
    def __init__(self, spec: ScenarioSpec) -> None:
        self.spec = spec
        self.topology: Topology = load(spec.system)
        self.faults: list[Fault] = [parse_fault(f, self.topology) for f in spec.faults]
        self.fault_model = FaultModel(self.topology, self.faults)
        self._traffic = TrafficGenerator(
            self.topology, self.fault_model, spec.seed, spec.epoch_s, rate_scale=spec.rate_scale
        )
        self._noise = NoiseBank(self.topology, spec.duration_s, spec.seed)

    def chunks(self, chunk_s: float = 10.0) -> Iterator[Chunk]:
        step = self.topology.step_s
        chunk_s = max(step, round(chunk_s / step) * step)  # metric steps never straddle chunks
        t = 0.0
        while t < self.spec.duration_s:
            t1 = min(t + chunk_s, self.spec.duration_s)
            spans = self._traffic.generate(t, t1)
            metrics = build_metrics(
                self.topology, self.fault_model, spans, int(t), int(t1), self._noise, self.spec.epoch_s
            )
            logs = build_logs(self.topology, self.fault_model, spans, t, t1, self.spec.seed + int(t), self.spec.epoch_s)
            yield Chunk(t, t1, spans, metrics, logs)
            t = t1

    def run(self, chunk_s: float = 60.0) -> Chunk:
        """The whole scenario in memory."""
        chunks = list(self.chunks(chunk_s))
        return Chunk(
            0.0,
            self.spec.duration_s,
            SpanTable.concat([c.spans for c in chunks]),
            MetricFrames(
                pods=pd.concat([c.metrics.pods for c in chunks], ignore_index=True),
                services=pd.concat([c.metrics.services for c in chunks], ignore_index=True),
            ),
            pd.concat([c.logs for c in chunks], ignore_index=True),
        )

    def ground_truth(self) -> dict[str, object]:
        first = min(self.faults, key=lambda f: f.start_s) if self.faults else None
        return {
            "system": self.topology.system,
            "seed": self.spec.seed,
            "epoch_s": self.spec.epoch_s,
            "duration_s": self.spec.duration_s,
            "faults": [f.ground_truth(self.topology) for f in self.faults],
            # The first fault is "the" root cause for single-fault evaluation.
            "root_cause_service": first.service if first else None,
            "root_cause_pod": first.pod if first else None,
            "fault_type": first.kind if first else None,
            "inject_time": int(self.spec.epoch_s + first.start_s) if first else None,
        }
