"""Diagnosis Synthesizer: Root-Level Diagnosis Reports + the Global Evidence Graph -> ranked candidates.

Each analysed trace's root agent reports one local root cause (the recursion's answer). The
Global Evidence Graph keeps every agent's self-evidence, so a cause that the recursion missed
in one trace still counts where its own span (or a call to it) misbehaved. The two are
combined per service, with the service's 3σ resource KPIs and fault log lines as the
cross-modal evidence that also covers faults no trace shows; the pod is named when the
evidence concentrates on one pod of a multi-pod service.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from services.rca.agents import METRIC_FAULT, AgentResult, Toolbox, _sat

# Weights of the four sources (tuned on development seeds, never on the evaluation's held-out ones).
W_ROOT, W_GRAPH, W_METRIC, W_LOGS = 0.45, 0.25, 0.2, 0.1


@dataclass
class Candidate:
    service: str
    score: float
    pod: str = ""
    node: str = ""
    fault_type: str = "unknown"
    reason: str = ""
    pods: list[str] = field(default_factory=list)  # the service's pods, most suspicious first


def _split(cause: str) -> tuple[str, str]:
    service, _, pod = cause.partition("/")
    return service, pod


def synthesize(results: dict[str, AgentResult], roots: list[str], tools: Toolbox, top: int = 10) -> list[Candidate]:
    root_votes: dict[str, float] = defaultdict(float)
    graph: dict[str, float] = defaultdict(float)
    pod_mass: dict[str, Counter[str]] = defaultdict(Counter)
    types: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: dict[str, list[str]] = defaultdict(list)
    for span_id in roots:
        result = results.get(span_id)
        if result is None or not result.verdict.get("local_root_cause"):
            continue
        service, pod = _split(result.verdict["local_root_cause"])
        root_votes[service] += float(result.verdict["confidence"])
        types[service][result.verdict.get("fault_type", "unknown")] += 1
        if pod:
            pod_mass[service][pod] += float(result.verdict["confidence"])
        reasons[service].append(str(result.verdict.get("reason", "")))
    for result in results.values():
        own = result.own
        if own.get("is_abnormal"):
            graph[own["service"]] += float(own["self_score"])
            pod_mass[own["service"]][own.get("pod", "")] += float(own["self_score"])
            types[own["service"]][own.get("fault_type", "unknown")] += 0.5
        for suspect in own.get("suspects", []):
            graph[suspect["service"]] += float(suspect["score"])
            if suspect.get("pod"):
                pod_mass[suspect["service"]][suspect["pod"]] += float(suspect["score"])
            types[suspect["service"]][suspect.get("fault_type", "unknown")] += 0.5
    n_roots = max(len(roots), 1)
    graph_max = max(graph.values(), default=0.0) or 1.0
    pods_of = _pods_of(tools)
    scores: dict[str, float] = {}
    metric_of: dict[str, tuple[float, str]] = {}
    for service in tools.services:
        z, metric = tools.metrics.resource_score(service)
        for pod in pods_of.get(service, ()):
            pz, pmetric = tools.metrics.resource_score(service, pod)
            if pz > z:
                z, metric = pz, pmetric
        metric_of[service] = (z, metric)
        lines = sum(tools.logs.own_fault_lines(p, tools.t0, tools.t1)[0] for p in pods_of.get(service, ()))
        expected = sum(tools.logs.own_fault_lines(p, tools.t0, tools.t1)[1] for p in pods_of.get(service, ()))
        log_score = _sat((lines - 2 * expected - 1) / 10) if lines > 2 * expected + 1 else 0.0
        scores[service] = (
            W_ROOT * root_votes.get(service, 0.0) / n_roots
            + W_GRAPH * graph.get(service, 0.0) / graph_max
            + W_METRIC * _sat((z - 3) / 10)
            + W_LOGS * log_score
        )
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:top]
    total = sum(s for _, s in ranked) or 1.0
    out = []
    for service, score in ranked:
        pods = [p for p, _ in pod_mass[service].most_common() if p and p != service]
        pods += [p for p in sorted(pods_of.get(service, ())) if p not in pods]
        mass = pod_mass[service]
        named = [p for p in mass if p and p != service]
        pod = ""
        if len(pods_of.get(service, ())) > 1 and named:
            best = max(named, key=lambda p: mass[p])
            if mass[best] >= 0.6 * sum(mass[p] for p in named):
                pod = best
        z, metric = metric_of[service]
        fault_type = _fault_type(types[service], z, metric)
        reason = "; ".join(dict.fromkeys(r for r in reasons[service] if r)) or (
            f"{metric} deviates {z:.0f}σ" if z >= 3 else "weak evidence"
        )
        out.append(
            Candidate(
                service,
                score / total,
                pod,
                tools.pod_node.get(pod, "") if pod else "",
                fault_type,
                reason[:300],
                pods,
            )
        )
    return out


def _fault_type(votes: Counter[str], z: float, metric: str) -> str:
    if z >= 6 and metric in METRIC_FAULT:
        return METRIC_FAULT[metric]
    known = [(n, t) for t, n in votes.items() if t != "unknown"]
    return max(known)[1] if known else "unknown"


def _pods_of(tools: Toolbox) -> dict[str, set[str]]:
    frame = tools.traces.frame
    out: dict[str, set[str]] = defaultdict(set)
    for service, pod in frame[["service", "pod"]].drop_duplicates().itertuples(index=False):
        out[str(service)].add(str(pod))
    logs = tools.logs.telemetry.logs
    for service, pod in logs[["service", "pod"]].drop_duplicates().itertuples(index=False):
        out[str(service)].add(str(pod))
    return out
