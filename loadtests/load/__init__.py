"""Load tests run by ``make loadtest``: each steps the offered load up until the system under test stops
keeping up, and prints throughput, latency percentiles and the knee. Loopback only, bounded in time.

Results land in bench-results/loadtest_<name>.json with a plot beside them.
"""

from __future__ import annotations

from pathlib import Path

from loadtests.bench import RESULTS, run_each

# name -> module with ``run() -> dict``.
LOADTESTS: dict[str, str] = {
    "inference": "loadtests.load.inference",
    "pipeline": "loadtests.load.pipeline",
    "rca": "loadtests.load.rca",
    "reliability": "loadtests.reliability",  # not stepped load: each service SIGKILLed once mid-scenario (make chaos)
}


def knee(levels: list[float], throughput: list[float], gain: float = 0.1) -> float:
    """The last load level whose step up still raised throughput by more than ``gain`` (10%): beyond it,
    more offered load buys queueing, not work."""
    for i in range(1, len(levels)):
        if throughput[i] < throughput[i - 1] * (1 + gain):
            return levels[i - 1]
    return levels[-1]


def knee_plot(
    levels: list[float],
    throughput: list[float],
    latency: list[tuple[float, float]],
    labels: tuple[str, str, str],
    title: str,
    name: str,
) -> Path:
    """Throughput (left axis) and a latency percentile (right axis) against the load level, log2 x axis;
    ``labels``: (x axis, throughput, latency); ``latency``: (level, ms) where one was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_label, throughput_label, latency_label = labels
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(levels, throughput, "o-", label=throughput_label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [f"{x:g}" for x in levels])
    ax.set_xlabel(x_label)
    ax.set_ylabel(throughput_label)
    other = ax.twinx()
    other.plot([x for x, _ in latency], [y for _, y in latency], "s--", color="tab:red", label=latency_label)
    other.set_ylabel(latency_label)
    ax.set_title(title)
    lines = ax.get_lines() + other.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
    fig.tight_layout()
    path = RESULTS / f"loadtest_{name}.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(names: list[str] | None = None) -> int:
    return run_each(LOADTESTS, names, kind="loadtest")
