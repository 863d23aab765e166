"""Load tests run by ``make loadtest``: each steps the offered load up until the system under test stops
keeping up, and prints throughput, latency percentiles and the knee. Loopback only, bounded in time.

Results land in bench-results/loadtest_<name>.json with a plot beside them.
"""

from __future__ import annotations

from loadtests.bench import run_each

# name -> module with ``run() -> dict``.
LOADTESTS: dict[str, str] = {
    "inference": "loadtests.load.inference",
    "pipeline": "loadtests.load.pipeline",
    "rca": "loadtests.load.rca",
}


def knee(levels: list[float], throughput: list[float], gain: float = 0.1) -> float:
    """The last load level whose step up still raised throughput by more than ``gain`` (10%): beyond it,
    more offered load buys queueing, not work."""
    for i in range(1, len(levels)):
        if throughput[i] < throughput[i - 1] * (1 + gain):
            return levels[i - 1]
    return levels[-1]


def main(names: list[str] | None = None) -> int:
    return run_each(LOADTESTS, names, kind="loadtest")
