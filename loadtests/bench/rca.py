"""RCLAgent: analysis latency per case (evidence path), and the agent tree's parallel-vs-serial speed-up.

The speed-up is measured with each agent phase taking a fixed 20 ms on top of the evidence
reasoner, standing in for an LLM call's network wait (the evidence path alone is CPU-bound
Python, which threads cannot overlap); both runs are on the same cases in the same process.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from services.rca.agents import EvidenceReasoner
from services.rca.analysis import AnalysisOptions, analyze
from services.rca.evaluation import make_cases
from services.rca.telemetry import load_rcaeval

CALL_S = 0.02


class _WaitingReasoner(EvidenceReasoner):
    def verify(self, evidence: dict[str, Any]) -> dict[str, Any]:
        time.sleep(CALL_S)
        return super().verify(evidence)

    def consolidate(self, own: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
        time.sleep(CALL_S)
        return super().consolidate(own, children)


def run() -> dict[str, object]:
    cases = make_cases(("online-boutique",), [1000], 600, 0.3)
    latencies, parallel, serial = [], [], []
    for case in cases:
        telemetry = load_rcaeval(case)
        latencies.append(analyze(telemetry, EvidenceReasoner(), AnalysisOptions()).report.timings.total_ms)
        for workers, out in ((16, parallel), (1, serial)):
            report = analyze(telemetry, _WaitingReasoner(), AnalysisOptions(max_traces=5, max_workers=workers)).report
            out.append(report.timings.total_ms)
    result = {
        "cases": len(cases),
        "evidence_latency_ms": {"median": statistics.median(latencies), "p95": float(np.percentile(latencies, 95))},
        "tree_parallel_ms": statistics.median(parallel),
        "tree_serial_ms": statistics.median(serial),
        "speedup": statistics.median(serial) / statistics.median(parallel),
        "emulated_call_s": CALL_S,
    }
    print(result)
    return result
