"""``faultline eval rca``: RCLAgent (evidence path) against RCAEval's baselines on simulator cases.

Cases use held-out seeds (from 1000; thresholds were tuned on seeds below 100), both shipped
topologies, every fault kind, targets drawn per case. Each case is written once in the RCAEval
layout under ``~/.cache/faultline/rca-cases`` and every method reads the same directory.
Scores: AC@1, AC@3, Avg@5 and MRR at service level (pod level where the fault is on one pod).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from services.rca import baselines
from services.rca.agents import EvidenceReasoner
from services.rca.analysis import AnalysisOptions, analyze
from services.rca.telemetry import load_rcaeval

CASES_DIR = Path.home() / ".cache" / "faultline" / "rca-cases"
RESULTS = Path(__file__).resolve().parents[2] / "bench-results"
KINDS = ("cpu", "memory", "disk", "delay", "loss", "pod-kill", "code")
SYSTEMS = ("online-boutique", "train-ticket")
METHODS = ("rclagent", *baselines.METHODS)


def make_cases(systems: tuple[str, ...], seeds: list[int], duration_s: int, rate_scale: float) -> list[Path]:
    from loadtests.simulator.dataset import write_rcaeval
    from loadtests.simulator.scenario import Scenario, ScenarioSpec

    out = []
    for system in systems:
        probe = Scenario(ScenarioSpec(system=system, duration_s=1))
        entry = probe.topology.entry_services()
        for seed in seeds:
            rng = np.random.default_rng(seed * 7 + len(system))
            for kind in KINDS:
                # A network fault on the entry service has no caller inside the system to show it.
                services = [s for s in probe.topology.services if s not in entry or kind in ("cpu", "memory")]
                service = str(rng.choice(services))
                target = service
                if kind == "code":
                    target += "/" + str(rng.choice(list(probe.topology.services[service].operations)))
                elif kind == "pod-kill" or rng.random() < 0.25:
                    target = str(rng.choice(probe.topology.services[service].pods))  # a pod-level fault
                start = duration_s // 2
                spec = ScenarioSpec(
                    system=system,
                    faults=(f"{kind}:{target}@{start}s+{duration_s - start}s",),
                    duration_s=duration_s,
                    seed=seed,
                    rate_scale=rate_scale,
                )
                case = CASES_DIR / f"{system}-{kind}-s{seed}-d{duration_s}-r{rate_scale}"
                if not (case / "ground_truth.json").is_file():
                    scenario = Scenario(spec)
                    write_rcaeval(scenario, scenario.run(), case)
                out.append(case)
    return out


def scores(ranks: list[int | None], k_max: int = 5) -> dict[str, float]:
    """AC@k (answer in the top k), Avg@5 (mean of AC@1..5) and MRR over cases (None: not ranked)."""
    r = np.array([x if x is not None else 10**6 for x in ranks], dtype=float)
    if len(r) == 0:
        return {}
    ac = {k: float(np.mean(r <= k)) for k in range(1, k_max + 1)}
    return {
        "AC@1": ac[1],
        "AC@3": ac[3],
        "Avg@5": float(np.mean(list(ac.values()))),
        "MRR": float(np.mean(1.0 / r)),
        "cases": len(r),
    }


def _rank(ranking: list[str], answer: str) -> int | None:
    return ranking.index(answer) + 1 if answer in ranking else None


def run(
    systems: tuple[str, ...] = SYSTEMS,
    seeds: list[int] | None = None,
    duration_s: int = 600,
    rate_scale: float = 0.3,
    with_baselines: bool = True,
) -> dict[str, object]:
    seeds = seeds or [1000, 1001]
    began = time.time()
    cases = make_cases(systems, seeds, duration_s, rate_scale)
    print(f"{len(cases)} cases ready in {time.time() - began:.0f}s ({CASES_DIR})", flush=True)
    process, status = baselines.start(cases) if with_baselines else (None, "not requested")
    if process is None:
        print(f"baselines: {status}", flush=True)
    rows = []
    options = AnalysisOptions()
    for case in cases:
        truth = json.loads((case / "ground_truth.json").read_text())
        telemetry = load_rcaeval(case)
        analysis = analyze(telemetry, EvidenceReasoner(), options)
        report = analysis.report
        services = [c.service for c in report.candidates]
        rows.append(
            {
                "case": str(case),
                "system": truth["system"],
                "kind": truth["fault_type"],
                "service": truth["root_cause_service"],
                "pod": truth["root_cause_pod"],
                "rclagent": _rank(services, truth["root_cause_service"]),
                "rclagent_pod": _rank(analysis.pod_ranking(), truth["root_cause_pod"])
                if truth["root_cause_pod"]
                else None,
                "latency_ms": report.timings.total_ms,
                "load_ms": report.timings.load_ms,
                "agents": report.timings.agents,
            }
        )
        print(f"  {case.name}: rank {rows[-1]['rclagent']} ({report.timings.total_ms:.0f} ms)", flush=True)
    if process is not None:
        found = baselines.collect(process)
        for row in rows:
            for method in baselines.METHODS:
                answer = found.get((row["case"], method), {})
                row[method] = _rank(list(answer.get("ranks", [])), row["service"]) if "ranks" in answer else None
                row[f"{method}_s"] = answer.get("seconds")
                if "error" in answer:
                    row[f"{method}_error"] = answer["error"]
    methods = [m for m in METHODS if m == "rclagent" or process is not None]
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for kind in (*KINDS, "all"):
        chosen = [r for r in rows if kind == "all" or r["kind"] == kind]
        for method in methods:
            table[kind][method] = scores([r[method] for r in chosen])
        pod_rows = [r for r in chosen if r["pod"]]
        if pod_rows:
            table[kind]["rclagent_pod"] = scores([r["rclagent_pod"] for r in pod_rows])
    latencies = [r["latency_ms"] for r in rows]
    result = {
        "cases": len(rows),
        "systems": list(systems),
        "seeds": seeds,
        "baselines": status,
        "table": table,
        "latency_ms": {
            "median": statistics.median(latencies),
            "p95": float(np.percentile(latencies, 95)),
        },
        "rows": rows,
        "wall_s": time.time() - began,
    }
    _print(table, methods, result)
    return result


def _print(table: dict[str, dict[str, dict[str, float]]], methods: list[str], result: dict[str, object]) -> None:
    header = f"{'fault':>9} " + " ".join(f"{m:>27}" for m in [*methods, "rclagent_pod"])
    print(header)
    print(f"{'':>9} " + " ".join(f"{'AC@1  AC@3  Avg@5   MRR':>27}" for _ in [*methods, "pod"]))
    for kind, row in table.items():
        cells = []
        for method in [*methods, "rclagent_pod"]:
            s = row.get(method)
            cells.append(
                f"{s['AC@1']:5.2f} {s['AC@3']:5.2f} {s['Avg@5']:6.2f} {s['MRR']:5.2f}".rjust(27) if s else " " * 27
            )
        print(f"{kind:>9} " + " ".join(cells))
    lat = result["latency_ms"]
    print(f"RCLAgent (evidence) analysis latency per case: median {lat['median']:.0f} ms, p95 {lat['p95']:.0f} ms")


def plot(result: dict[str, object], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["table"]
    kinds = list(table)
    methods = [m for m in METHODS if m in table["all"]]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ax.bar(np.arange(len(kinds)) + i * width, [table[k][method]["AC@1"] for k in kinds], width, label=method)
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds)
    ax.set_ylabel("AC@1 (service level)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Root cause localisation, {result['cases']} simulator cases (held-out seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline eval rca", description=__doc__)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1000, 1001])
    parser.add_argument("--duration", type=int, default=600, help="scenario seconds; the fault starts half way")
    parser.add_argument("--rate-scale", type=float, default=0.3)
    parser.add_argument("--no-baselines", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    result = run(tuple(args.systems), args.seeds, args.duration, args.rate_scale, not args.no_baselines)
    from loadtests.bench import stamp

    result |= stamp(load)  # machine, settings, load, date: the README's Figures table shows them
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rca_eval.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {plot(result, RESULTS / 'rca_eval.png')} and {RESULTS / 'rca_eval.json'}")
    return 0
