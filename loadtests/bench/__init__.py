"""Benchmarks run by ``make bench``: each prints its figures and writes them under bench-results/.

Every benchmark measures its baseline in the same run and reports a ratio, because these
machines are shared and noisy; absolute numbers are for orientation only.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "bench-results"

# name -> module with ``run() -> dict``; modules import heavy dependencies only when run.
BENCHMARKS: dict[str, str] = {
    "bus": "loadtests.bench.bus",
    "simulator": "loadtests.bench.simulator",
    "inference": "loadtests.bench.inference",
    "attention": "loadtests.bench.attention",
    "attention_quality": "loadtests.bench.attention_quality",
    "retrieval": "loadtests.bench.retrieval",
    "embedding": "loadtests.bench.embedding",
    "detector": "loadtests.bench.detector",
    "rca": "loadtests.bench.rca",
    "kg": "loadtests.bench.kg",
}


def loglog_plot(series: dict[str, dict[int, float]], path: Path, ylabel: str, title: str) -> Path:
    """One line per series against context length, log-log: how every benchmark here shows scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        xs = sorted(points)
        ax.loglog(xs, [points[x] for x in xs], "o-", label=label)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def stamp(load_at_start: float | None = None) -> dict[str, object]:
    """What every result records beside its figures (the README's Figures table shows it): the machine, the
    FAULTLINE_BENCH_*/FAULTLINE_LOAD_* settings it ran with, the 1-minute load average before it started
    (these machines are shared) and when it finished."""
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("FAULTLINE_BENCH_", "FAULTLINE_LOAD_"))}
    return {
        "machine": machine(),
        "env": env,
        **({"load_at_start": round(load_at_start, 2)} if load_at_start is not None else {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(names: list[str] | None = None) -> int:
    return run_each(BENCHMARKS, names, kind="bench")


def run_each(registry: dict[str, str], names: list[str] | None, kind: str) -> int:
    """Run the named entries of ``registry`` (all when none are named), each writing its JSON result."""
    chosen = names or list(registry)
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        print(f"unknown {kind}(s) {unknown}; available: {', '.join(registry)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in chosen:
        out = RESULTS / (name if kind == "bench" else f"{kind}_{name}")
        print(f"== {kind} {name} ({machine()})", flush=True)
        started, load = time.time(), os.getloadavg()[0]
        result = importlib.import_module(registry[name]).run()
        result |= stamp(load)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        print(f"== {kind} {name} done in {time.time() - started:.0f}s -> {out.with_suffix('.json')}", flush=True)
    return update_figures()


def update_figures() -> int:
    """Regenerate the README's Figures rows from what is now in bench-results/ (see loadtests/figures.py)."""
    from loadtests.figures import DEMO_SUMMARY, README, update_readme

    if not README.is_file():  # an installed copy without the repository around it
        return 0
    try:
        changed = update_readme(README, RESULTS, DEMO_SUMMARY)
    except ValueError as e:
        print(f"figures: README not updated: {e}", file=sys.stderr)
        return 1
    print(f"== figures: {', '.join(changed)} updated in {README}" if changed else "== figures: README unchanged")
    return 0
