"""``faultline eval incidents``: incidents from simulated microservice telemetry, through the real models.

Each scenario is played as OTLP records (the bytes the Collector would put on the topics) into the embedding
service's own :class:`~services.embedding.service.EmbeddingEngine` (slicer, rolling baseline, the committed
RuntimeSlicer checkpoint, ``to_proto``), and the StateEmbeddings it emits go through the detector's
:class:`~services.detector.incidents.IncidentTracker` with the service's policy, opening after 1, 2 or 3
anomalous windows. Time is event time throughout, so the figures do not depend on this machine's speed.

- Normal traffic: fault-free online-boutique stretches on held-out seeds, each from a fresh start of the
  engine. False incidents per hour are counted once the baseline has settled (its whole history filled); those
  opened while it was still filling are counted apart, per fresh start (a restart without ``state_path``).
- Faults: one fault per scenario, every simulator fault kind, targets drawn as ``faultline eval slicer`` draws
  them, starting at a random point inside a window after a lead-in long enough for the baseline to settle →
  detected / total, time from fault start to the end of the window that opened the incident, and whether the
  incident's top suspected service is the faulted one (when it opened, and once the scenario is over).

Seeds: the slicer was trained on 1..5 and evaluated on 101..103 (the detector's EAGER on 1..3, 101, 102, 201);
normal stretches use 401.., faults 301...
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.pb.faultline.v1 import detector_pb2, embedding_pb2
from services.detector.incidents import OPEN, IncidentPolicy, IncidentTracker

if TYPE_CHECKING:
    from loadtests.simulator.scenario import Scenario
    from services.embedding.checkpoint import RuntimeSlicerModel

RESULTS = Path(__file__).resolve().parents[2] / "bench-results"
SYSTEM = "online-boutique"
NORMAL_SEEDS_FROM = 401
FAULT_SEEDS_FROM = 301
OPEN_AFTER = (1, 2, 3)
LEAD_IN_S = 450.0  # the baseline settles ~330 s after a fresh start (see settle_s); the fault comes 2 min later
TAIL_S = 120.0  # after the fault: a late opening still counts while its first anomalous window overlaps the fault
CHUNK_S = 10.0  # the simulator's producer batch, as in the slicer's training data

Opened = tuple[detector_pb2.Incident, detector_pb2.Incident]  # an incident as opened, and after the last window


def _seconds(timestamp: Timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def _top(incident: detector_pb2.Incident) -> str:
    return incident.suspected_services[0].service if incident.suspected_services else ""


# ---- pure: tracker output → figures ---------------------------------------------------------------------------


def track(states: Sequence[embedding_pb2.StateEmbedding], policy: IncidentPolicy) -> list[Opened]:
    """Every incident a fresh tracker opens over ``states``: as published when it opened, and as it stands after
    the last state (suspects and failure type keep accumulating while it stays open)."""
    tracker = IncidentTracker(policy)
    opened = [i for s in states if (i := tracker.observe(s)) is not None and i.status == OPEN]
    return [(i, tracker.get(i.id) or i) for i in opened]


@dataclass(frozen=True)
class NormalOutcome:
    settling_incidents: int  # opened before the baseline settled after the fresh start
    steady_incidents: int  # opened after
    steady_windows: int  # windows ending after it settled: the time steady_incidents are counted over


def normal_outcome(
    incidents: Sequence[Opened], states: Sequence[embedding_pb2.StateEmbedding], settle_s: float
) -> NormalOutcome:
    """Splits a fault-free stretch's incidents at ``settle_s`` after its first window started (by the end of the
    window that opened each)."""
    if not states:
        return NormalOutcome(0, 0, 0)
    settled = _seconds(states[0].window.start) + settle_s
    ends = [_seconds(opened.window.end) for opened, _ in incidents]
    return NormalOutcome(
        sum(end <= settled for end in ends),
        sum(end > settled for end in ends),
        sum(_seconds(s.window.end) > settled for s in states),
    )


@dataclass(frozen=True)
class FaultOutcome:
    delay_s: float | None  # fault start → end of the window that opened its incident (event time); None: missed
    lead_in_incidents: int  # opened before the fault started: false incidents (one still open absorbs the fault)
    top_at_open: str  # the incident's top suspected service when it opened
    top_final: str  # and after the scenario's last window
    failure_type_final: str


def fault_outcome(incidents: Sequence[Opened], start_s: float, end_s: float) -> FaultOutcome:
    """The fault's incident is the first whose opening window ends after the fault started and whose first
    anomalous window starts before the fault ended (``start_s``/``end_s``: unix seconds, like the windows)."""
    early = sum(_seconds(opened.window.end) <= start_s for opened, _ in incidents)
    for opened, final in incidents:
        if _seconds(opened.window.end) > start_s and _seconds(opened.opened_at) < end_s:
            return FaultOutcome(
                _seconds(opened.window.end) - start_s, early, _top(opened), _top(final), final.failure_type
            )
    return FaultOutcome(None, early, "", "", "")


def delay_figures(delays: Sequence[float]) -> dict[str, float | None]:
    if not delays:
        return {"median_s": None, "p90_s": None}
    return {"median_s": float(np.median(delays)), "p90_s": float(np.percentile(delays, 90))}


def fault_figures(faults: list[dict], open_after: int) -> dict:
    """One policy's fault figures from the per-fault records (``faults[i]["outcomes"][open_after]``)."""
    outcomes = [(f, FaultOutcome(**f["outcomes"][open_after])) for f in faults]
    found = [(f, o) for f, o in outcomes if o.delay_s is not None]

    def share(hits: int) -> float | None:
        return hits / len(found) if found else None

    return {
        "faults": len(faults),
        "faults_detected": len(found),
        "fault_to_incident": delay_figures([o.delay_s for _, o in found if o.delay_s is not None]),
        "top_suspect_is_faulted_at_open": share(sum(o.top_at_open == f["service"] for f, o in found)),
        "top_suspect_is_faulted_final": share(sum(o.top_final == f["service"] for f, o in found)),
        "failure_type_right_final": share(sum(o.failure_type_final == f["kind"] for f, o in found)),
        "lead_in_false_incidents": sum(o.lead_in_incidents for _, o in outcomes),
    }


def per_kind(faults: list[dict], open_after: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kind in dict.fromkeys(f["kind"] for f in faults):
        delays = [d for f in faults if f["kind"] == kind if (d := f["outcomes"][open_after]["delay_s"]) is not None]
        out[kind] = {"faults": sum(f["kind"] == kind for f in faults), "detected": len(delays)} | delay_figures(delays)
    return out


def normal_figures(outcomes: Sequence[NormalOutcome], stride_s: float) -> dict:
    steady_hours = sum(o.steady_windows for o in outcomes) * stride_s / 3600
    steady = sum(o.steady_incidents for o in outcomes)
    settling = sum(o.settling_incidents for o in outcomes)
    return {
        "false_incidents": steady,
        "false_incidents_per_hour": steady / steady_hours if steady_hours else None,
        "settling_false_incidents": settling,
        "settling_false_incidents_per_start": settling / len(outcomes) if outcomes else None,
    }


# ---- the scenarios through the embedding service's engine -----------------------------------------------------


def replay(model: RuntimeSlicerModel, scenario: Scenario) -> list[embedding_pb2.StateEmbedding]:
    """A scenario into a freshly started embedding engine, record by record as its consumer feeds it
    (decode → slicer → ``emit`` of whatever the watermark closed); the StateEmbeddings it would publish.
    Windows still open when the scenario ends stay unpublished, as in a service that keeps running."""
    from loadtests.simulator.dataset import otlp_records
    from services.embedding.service import EmbeddingEngine

    engine = EmbeddingEngine(model, keep=1)  # the states are collected here, not kept for GetStates
    states: list[embedding_pb2.StateEmbedding] = []
    for chunk in scenario.chunks(CHUNK_S):
        for topic, value, _ in otlp_records(scenario, chunk):
            engine.slicer.add_record(topic, value)
            states += engine.emit(engine.slicer.ready())
    return states


def settle_s(model: RuntimeSlicerModel) -> float:
    """From a fresh start's first window until every window is scored against a full baseline history."""
    from services.embedding.baseline import Baseline

    return model.window.window_s + Baseline().history * model.window.stride_s


def fault_specs(seeds: range) -> list[tuple[str, int, str, float, float]]:
    """(kind, seed, target, start_s, duration_s) for every simulator fault kind and seed."""
    from loadtests.simulator.faults import FAULT_KINDS
    from services.embedding.data import FAULT_LENGTH_S, cases

    out = []
    for case in cases(SYSTEM, FAULT_KINDS, seeds):
        rng = np.random.default_rng([case.seed, FAULT_KINDS.index(case.kind)])
        start = LEAD_IN_S + float(rng.uniform(0, 15.0))  # anywhere inside a window, not on a pane boundary
        out.append((case.kind, case.seed, case.target, round(start, 2), FAULT_LENGTH_S.get(case.kind, 120.0)))
    return out


def evaluate(
    normal_seeds: range, hours: float, fault_seeds: range, log: Callable[..., object] = print
) -> tuple[dict, dict]:
    """The figures, and the score traces for the plot."""
    from loadtests.simulator.scenario import Scenario, ScenarioSpec
    from services.embedding.checkpoint import RuntimeSlicerModel

    model = RuntimeSlicerModel.load()
    policies = {k: replace(IncidentPolicy(), open_after=k) for k in OPEN_AFTER}
    settle = settle_s(model)
    traces: dict = {"faults": []}

    normal: dict[int, list[NormalOutcome]] = {k: [] for k in OPEN_AFTER}
    steady_scores: list[float] = []
    for seed in normal_seeds:
        began = time.perf_counter()
        states = replay(model, Scenario(ScenarioSpec(system=SYSTEM, duration_s=hours * 3600, seed=seed)))
        settled = _seconds(states[0].window.start) + settle
        steady_scores += [s.anomaly_score for s in states if _seconds(s.window.end) > settled]
        for k, policy in policies.items():
            normal[k].append(normal_outcome(track(states, policy), states, settle))
        traces.setdefault("normal", (seed, states))
        counts = " / ".join(f"{n[-1].settling_incidents}+{n[-1].steady_incidents}" for n in normal.values())
        log(
            f"  normal seed {seed}: {len(states)} windows, incidents settling+steady {counts} "
            f"(open after {' / '.join(map(str, OPEN_AFTER))}), {time.perf_counter() - began:.0f}s"
        )

    faults = []
    for kind, seed, target, start, length in fault_specs(fault_seeds):
        began = time.perf_counter()
        spec = f"{kind}:{target}@{start}s+{length:.0f}s"
        scenario = Scenario(ScenarioSpec(system=SYSTEM, faults=(spec,), duration_s=start + length + TAIL_S, seed=seed))
        truth = scenario.ground_truth()
        lo = scenario.spec.epoch_s + float(truth["faults"][0]["start_s"])  # type: ignore[index]
        hi = scenario.spec.epoch_s + float(truth["faults"][0]["end_s"])  # type: ignore[index]
        states = replay(model, scenario)
        outcomes = {k: fault_outcome(track(states, p), lo, hi) for k, p in policies.items()}
        faults.append(
            {
                "kind": kind,
                "seed": seed,
                "fault": spec,
                "service": str(truth["root_cause_service"]),
                "outcomes": {k: asdict(o) for k, o in outcomes.items()},
            }
        )
        traces["faults"].append((spec, lo, hi, states))
        delays = " / ".join("–" if o.delay_s is None else f"{o.delay_s:.0f}" for o in outcomes.values())
        log(f"  {spec} (seed {seed}): fault → incident {delays} s, {time.perf_counter() - began:.0f}s")

    scores = np.array(steady_scores)
    results = {
        "system": SYSTEM,
        "model_version": model.version,
        "window": {"window_s": model.window.window_s, "stride_s": model.window.stride_s},
        "policy": {k: v for k, v in asdict(IncidentPolicy()).items() if k != "max_kept"},
        # The tracker takes a window as anomalous when the embedding service marked it so (score ≥ the
        # checkpoint's head threshold) or its score reaches the policy's threshold: the lower one decides.
        "head_threshold": model.heads.threshold,
        "effective_threshold": min(model.heads.threshold, IncidentPolicy().threshold),
        "normal": {
            "seeds": [normal_seeds.start, normal_seeds.stop - 1],
            "starts": len(normal_seeds),
            "event_hours": len(normal_seeds) * hours,
            "settle_s": settle,
            "steady_hours": sum(o.steady_windows for o in normal[OPEN_AFTER[0]]) * model.window.stride_s / 3600,
            "steady_windows": len(scores),
            "steady_score_p50": float(np.quantile(scores, 0.5)),
            "steady_score_p99": float(np.quantile(scores, 0.99)),
            "steady_score_max": float(scores.max()),
            "steady_anomalous_window_share": float(np.mean(scores >= model.heads.threshold)),
        },
        "fault_seeds": [fault_seeds.start, fault_seeds.stop - 1],
        "lead_in_s": LEAD_IN_S,
        "faults": faults,
        "open_after": {
            str(k): normal_figures(normal[k], model.window.stride_s)
            | fault_figures(faults, k)
            | {"per_kind": per_kind(faults, k)}
            for k in OPEN_AFTER
        },
    }
    return results, traces


# ---- output ----------------------------------------------------------------------------------------------------


def _cell(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table(results: dict) -> str:
    normal = results["normal"]
    lines = [
        f"normal traffic: {normal['event_hours']:.1f} h of event time over seeds "
        f"{normal['seeds'][0]}..{normal['seeds'][1]} ({normal['starts']} fresh starts), {normal['steady_hours']:.2f} h "
        f"with a settled baseline (from {normal['settle_s']:.0f} s after each start; score p50 "
        f"{normal['steady_score_p50']:.3f}, p99 {normal['steady_score_p99']:.3f}, "
        f"max {normal['steady_score_max']:.3f}, {normal['steady_anomalous_window_share']:.2%} of windows over the "
        f"head threshold {results['head_threshold']:.3f})",
        f"faults: {len(results['faults'])} over seeds {results['fault_seeds'][0]}..{results['fault_seeds'][1]}, "
        f"lead-in {results['lead_in_s']:.0f} s; policy threshold {results['policy']['threshold']}, resolve after "
        f"{results['policy']['resolve_after']}",
        f"{'open_after':>10} {'false/h':>7} {'settling/start':>14} {'detected':>9} {'median s':>8} {'p90 s':>6} "
        f"{'top1@open':>9} {'top1 end':>8} {'type end':>8} {'lead-in FP':>10}",
    ]
    for k, r in results["open_after"].items():
        lines.append(
            f"{k:>10} {_cell(r['false_incidents_per_hour'], '.2f'):>7} "
            f"{_cell(r['settling_false_incidents_per_start'], '.2f'):>14} "
            f"{r['faults_detected']:>4}/{r['faults']:<4} {_cell(r['fault_to_incident']['median_s'], '.0f'):>8} "
            f"{_cell(r['fault_to_incident']['p90_s'], '.0f'):>6} "
            f"{_cell(r['top_suspect_is_faulted_at_open'], '.2f'):>9} "
            f"{_cell(r['top_suspect_is_faulted_final'], '.2f'):>8} "
            f"{_cell(r['failure_type_right_final'], '.2f'):>8} {r['lead_in_false_incidents']:>10}"
        )
    default = str(IncidentPolicy().open_after)
    kinds = results["open_after"][default]["per_kind"]
    lines.append(
        f"per kind (open_after {default}): "
        + ", ".join(f"{k} {v['detected']}/{v['faults']} {_cell(v['median_s'], '.0f')} s" for k, v in kinds.items())
    )
    return "\n".join(lines)


def plot(traces: dict, results: dict, path: Path, faults_shown: int = 2) -> Path:
    """Anomaly score over event time for the first normal stretch and a few faults (a missed one first, if any),
    with the thresholds, the fault and the incident openings per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = results["faults"]
    default = IncidentPolicy().open_after
    chosen = [i for i, f in enumerate(faults) if f["outcomes"][default]["delay_s"] is None][:1]
    for i, f in enumerate(faults):
        if len(chosen) < faults_shown and f["kind"] not in {faults[j]["kind"] for j in chosen}:
            chosen.append(i)
    seed, normal = traces["normal"]
    panels = [(f"normal traffic, seed {seed} (grey: baseline settling after the start)", normal, None, None)]
    panels += [(traces["faults"][i][0], traces["faults"][i][3], *traces["faults"][i][1:3]) for i in chosen]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 2.6 * len(panels)))
    policies = {k: replace(IncidentPolicy(), open_after=k) for k in OPEN_AFTER}
    for ax, (title, states, lo, hi) in zip(np.atleast_1d(axes), panels, strict=True):
        origin = _seconds(states[0].window.start)
        ends = [(_seconds(s.window.end) - origin) / 60 for s in states]
        ax.axvspan(0, results["normal"]["settle_s"] / 60, color="grey", alpha=0.15)
        ax.plot(ends, [s.anomaly_score for s in states], lw=0.8, color="black", label="anomaly score")
        ax.axhline(results["head_threshold"], color="C3", ls="--", lw=0.8, label="head threshold (anomalous)")
        ax.axhline(results["policy"]["threshold"], color="grey", ls=":", lw=0.8, label="policy threshold")
        if lo is not None:
            ax.axvspan((lo - origin) / 60, (hi - origin) / 60, color="C1", alpha=0.25, label="fault")
        for n, (k, policy) in enumerate(policies.items()):
            for opened, _ in track(states, policy):
                at = (_seconds(opened.window.end) - origin) / 60
                ax.axvline(at, color=f"C{n}", lw=1.2, ymax=0.9 - 0.1 * n, label=f"incident opens (open_after {k})")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("score")
    np.atleast_1d(axes)[-1].set_xlabel("event time since the first window (min, at each window's end)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline eval incidents", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--normal-seeds", type=int, default=3, help=f"fault-free stretches (seeds {NORMAL_SEEDS_FROM}..)"
    )
    parser.add_argument("--hours", type=float, default=2.0, help="event time per fault-free stretch")
    parser.add_argument(
        "--faults-per-kind", type=int, default=3, help=f"fault scenarios per kind (seeds {FAULT_SEEDS_FROM}..)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the MiniLM backbone)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    began, load = time.time(), os.getloadavg()[0]
    results, traces = evaluate(
        range(NORMAL_SEEDS_FROM, NORMAL_SEEDS_FROM + args.normal_seeds),
        args.hours,
        range(FAULT_SEEDS_FROM, FAULT_SEEDS_FROM + args.faults_per_kind),
        log=lambda *a: print(*a, flush=True),
    )
    print(table(results))
    from loadtests.bench import stamp

    results |= {"wall_s": time.time() - began} | stamp(load)  # the README's Figures table shows them
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "incident-eval.json").write_text(json.dumps(results, indent=2))
    plot(traces, results, RESULTS / "incident-eval.png")
    print(f"wrote {RESULTS / 'incident-eval.json'} and {RESULTS / 'incident-eval.png'}; {time.time() - began:.0f}s")
    return 0
