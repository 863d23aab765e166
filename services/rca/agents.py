"""Dedicated Agents: one per span, two phases each, through a statistical or an LLM reasoner.

Phase 1, Self-State Verification: the agent gathers its span's own evidence (Trace Tool: self
time and errors against normal, the overhead around each call it made; Metric Tool: its
service's and pod's 3σ KPIs; Log Tool: its pod's fault lines and the trace's error logs) and
decides whether the span itself misbehaves, and what it suspects.

Phase 2, Evidence Consolidation: it merges that with its children's compact verdicts into
one local root cause, which it passes up. An agent never sees more than its own evidence and
its children's summaries, so its context stays bounded however deep the trace is.

Both phases exchange plain JSON dicts, so the :class:`EvidenceReasoner` (scores the evidence
statistically; no LLM) and the :class:`LlmReasoner` (asks an OpenAI-compatible endpoint for
schema-constrained JSON) are interchangeable; the LLM falls back to the statistics per phase.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.common.llm import LLMClient, LLMError, Usage, validate_schema
from services.rca.tools import LogTool, MetricTool, Span, TraceTool, mentioned_services

FAULT_TYPES = ("cpu", "memory", "disk", "delay", "loss", "pod-kill", "code", "unknown")
METRIC_FAULT = {"cpu": "cpu", "mem": "memory", "restarts": "memory", "diskio": "disk", "netrx": "loss", "nettx": "loss"}

SELF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["span_id", "service", "is_abnormal", "self_score", "key_symptoms", "hypothesis", "suspects"],
    "properties": {
        "span_id": {"type": "string"},
        "service": {"type": "string"},
        "is_abnormal": {"type": "boolean"},
        "self_score": {"type": "number", "minimum": 0, "maximum": 1},
        "fault_type": {"type": "string", "enum": list(FAULT_TYPES)},
        "key_symptoms": {"type": "array", "items": {"type": "string"}},
        "hypothesis": {"type": "string"},
        "suspects": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["service", "score"],
                "properties": {
                    "service": {"type": "string"},
                    "pod": {"type": "string"},
                    "fault_type": {"type": "string", "enum": list(FAULT_TYPES)},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}
CONSOLIDATED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["span_id", "service", "local_root_cause", "confidence", "reason"],
    "properties": {
        "span_id": {"type": "string"},
        "service": {"type": "string"},
        "local_root_cause": {"type": "string"},  # "service" or "service/pod"; "" when nothing is wrong
        "fault_type": {"type": "string", "enum": list(FAULT_TYPES)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
}


def _sat(x: float) -> float:
    """0..1, smoothly: how strongly a non-negative excess counts as evidence."""
    return 1.0 - math.exp(-max(x, 0.0))


# -- evidence gathering (shared by both reasoners) ---------------------------------------------------


@dataclass
class Toolbox:
    traces: TraceTool
    metrics: MetricTool
    logs: LogTool
    services: set[str]
    t0: float
    t1: float
    pod_node: dict[str, str] = field(default_factory=dict)
    _pod_cache: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def context(self, service: str, pod: str) -> dict[str, Any]:
        """Metric and log evidence of a service/pod over the anomalous period (cached: spans share pods)."""
        with self._lock:
            cached = self._pod_cache.get((service, pod))
        if cached is not None:
            return cached
        pod_z, pod_metric = self.metrics.resource_score(service, pod) if pod and pod != service else (0.0, "")
        svc_z, svc_metric = self.metrics.resource_score(service)
        count, expected, samples = self.logs.own_fault_lines(pod, self.t0, self.t1)
        out = {
            "metrics": [f.as_dict() for f in (self.metrics.search(service) + self.metrics.search(service, pod))[:4]],
            "resource_z": round(max(pod_z, svc_z), 1),
            "resource_metric": pod_metric if pod_z >= svc_z else svc_metric,
            "fault_log_lines": count,
            "fault_log_lines_normal": round(expected, 2),
            "fault_log_samples": samples,
        }
        with self._lock:
            self._pod_cache[(service, pod)] = out
        return out

    def evidence(self, span: Span, children: list[Span]) -> dict[str, Any]:
        out = self.traces.describe(span, children)
        out |= self.context(span.service, span.pod)
        if span.error:
            logs = [e for e in self.logs.trace_errors(span.trace_id) if e["pod"] == span.pod]
            text = " ".join([span.status_message, *(str(e["message"]) for e in logs)])
            out["error_logs"] = [str(e["message"]) for e in logs[:3]]
            out["callees_named_in_errors"] = mentioned_services(text, self.services, span.service)
        return out


# -- reasoners -------------------------------------------------------------------------------------


class Reasoner(Protocol):
    mode: str

    def verify(self, evidence: dict[str, Any]) -> dict[str, Any]: ...

    def consolidate(self, own: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]: ...


class EvidenceReasoner:
    """Verdicts from the evidence alone: the deepest misbehaving span (or call) is the local root cause."""

    mode = "evidence"

    def verify(self, ev: dict[str, Any]) -> dict[str, Any]:
        symptoms: list[str] = []
        suspects: list[dict[str, Any]] = []
        fault_type = "unknown"
        # Calls whose overhead rose on both sides, evenly: the callee's network, not our own work.
        network_excess = 0.0
        for call in ev["calls"]:
            before, after = float(call["before_excess_ms"]), float(call["after_excess_ms"])
            if min(call["before_z"], call["after_z"]) > 4 and min(before, after) >= 0.5 * max(before, after):
                network_excess += before + after
                score = _sat(min(call["before_z"], call["after_z"]) / 20) * _sat((before + after) / 10)
                suspects.append(
                    {
                        "service": call["service"],
                        "pod": call["pod"],
                        "fault_type": "delay",
                        "score": round(score, 3),
                        "reason": f"call to {call['service']} took {before + after:.0f} ms more outside its span",
                    }
                )
        own_excess = max(float(ev["self_excess_ms"]) - network_excess, 0.0)
        latency = 0.0
        if ev["self_z"] > 3 and own_excess > 0.5 * float(ev["self_excess_ms"]):
            latency = _sat((ev["self_z"] - 3) / 6) * _sat(own_excess / 3)
            symptoms.append(f"self time {ev['self_ms']} ms vs normal {ev['normal_self_ms']} ms (z={ev['self_z']})")
        error = 0.0
        if ev["error"]:
            named = ev.get("callees_named_in_errors", [])
            if ev["child_errors"]:
                symptoms.append("error propagated from a child span")
            elif named:
                text = " ".join([*ev.get("error_logs", []), ev["status_message"]]).lower()
                kind = "pod-kill" if ("unavailable" in text or "refused" in text) else "loss"
                for callee in named[:2]:
                    suspects.append(
                        {
                            "service": callee,
                            "pod": "",
                            "fault_type": kind,
                            "score": 0.8,
                            "reason": f"call failed: {text[:80]}",
                        }
                    )
                symptoms.append(f"call to {', '.join(named[:2])} failed")
            elif ev["normal_error_rate"] < 0.2:
                error = 0.95
                fault_type = "code"
                symptoms.append("error originates in this span")
        metric = _sat((float(ev["resource_z"]) - 3) / 10)
        if metric > 0:
            symptoms.append(f"{ev['resource_metric']} {ev['resource_z']}σ")
        logs = 0.0
        if ev["fault_log_lines"] > 2 * ev["fault_log_lines_normal"] + 1:
            logs = _sat((ev["fault_log_lines"] - ev["fault_log_lines_normal"]) / 5)
            symptoms.append(f"{ev['fault_log_lines']} fault log lines")
        own = 1 - (1 - max(latency, error)) * (1 - 0.4 * metric) * (1 - 0.3 * logs)
        if max(latency, error) == 0:
            own *= 0.5  # metrics and logs alone do not make this span misbehave
        if fault_type == "unknown" and metric > 0:
            fault_type = METRIC_FAULT.get(str(ev["resource_metric"]), "unknown")
        is_abnormal = max(latency, error) > 0.3
        return {
            "span_id": ev["span_id"],
            "service": ev["service"],
            "pod": ev["pod"],
            "is_abnormal": is_abnormal,
            "self_score": round(own, 3),
            "fault_type": fault_type,
            "key_symptoms": symptoms,
            "hypothesis": symptoms[0] if symptoms else "normal",
            "suspects": suspects,
        }

    def consolidate(self, own: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
        options: list[tuple[float, int, str, str, str]] = []  # (score, depth preference, cause, type, reason)
        if own["is_abnormal"] or own["self_score"] >= 0.5:
            cause = f"{own['service']}/{own['pod']}" if own.get("pod") else own["service"]
            options.append((own["self_score"], 0, cause, own.get("fault_type", "unknown"), own["hypothesis"]))
        for s in own["suspects"]:
            cause = f"{s['service']}/{s['pod']}" if s.get("pod") else s["service"]
            options.append((s["score"], 1, cause, s.get("fault_type", "unknown"), s.get("reason", "")))
        for child in children:
            if child["local_root_cause"]:
                options.append(
                    (
                        child["confidence"],
                        1,
                        child["local_root_cause"],
                        child.get("fault_type", "unknown"),
                        child["reason"],
                    )
                )
        if not options:
            return {
                "span_id": own["span_id"],
                "service": own["service"],
                "local_root_cause": "",
                "fault_type": "unknown",
                "confidence": 0.0,
                "reason": "this span and its children look normal",
            }
        # The deeper explanation wins unless our own evidence is clearly stronger (RCLAgent's recursion).
        best = max(options, key=lambda o: o[0] + 0.15 * o[1])
        return {
            "span_id": own["span_id"],
            "service": own["service"],
            "local_root_cause": best[2],
            "fault_type": best[3],
            "confidence": round(best[0], 3),
            "reason": best[4],
        }


# -- LLM reasoner ------------------------------------------------------------------------------------


SYSTEM_PROMPT = (
    "You are a Dedicated Agent of RCLAgent, responsible for ONE span of a distributed trace during an incident. "
    "You see only this span's evidence (its own time and errors against normal, the overhead around each call it "
    "made, its service's and pod's 3-sigma metrics, its pod's fault logs) and your children's compact verdicts. "
    "Answer with one JSON object that satisfies the given JSON schema, and nothing else."
)


class LlmReasoner:
    """Each phase is one chat completion with the JSON schema in the prompt (and as response_format), validated
    by the shared client, which repairs or re-asks once; a failure falls back to the statistics."""

    mode = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "unused",
        timeout_s: float = 30.0,
        retries: int = 2,
        max_tokens: int = 400,
        fallback: Reasoner | None = None,
    ) -> None:
        self.client = LLMClient(base_url, model, api_key, timeout_s, max_retries=retries, max_tokens=max_tokens)
        self.fallback = fallback or EvidenceReasoner()

    @property
    def usage(self) -> Usage:
        return self.client.usage

    def verify(self, evidence: dict[str, Any]) -> dict[str, Any]:
        hint = self.fallback.verify(evidence)
        task = "Phase 1, Self-State Verification. Is this span itself abnormal, and whom do you suspect?"
        return self._ask(task, {"evidence": evidence, "statistical_hint": hint}, SELF_SCHEMA, hint)

    def consolidate(self, own: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
        hint = self.fallback.consolidate(own, children)
        task = "Phase 2, Evidence Consolidation. Merge your verdict with your children's into one local root cause."
        return self._ask(task, {"own": own, "children": children, "statistical_hint": hint}, CONSOLIDATED_SCHEMA, hint)

    def _ask(
        self, task: str, payload: dict[str, Any], schema: dict[str, Any], fallback: dict[str, Any]
    ) -> dict[str, Any]:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"{task}\nJSON schema:\n{json.dumps(schema)}\nInput:\n{json.dumps(payload, default=str)}",
            },
        ]

        def check(value: Any) -> dict[str, Any]:
            validate_schema(value, schema)
            return value

        try:
            return {**fallback, **self.client.json_call(messages, check, schema)}
        except LLMError as error:  # unreachable, timed out, or invalid twice: the statistics answer
            with self.client.lock:
                self.client.usage.failed += 1
            return {**fallback, "reason": f"{fallback.get('reason', '')} (LLM unavailable: {str(error)[:120]})".strip()}


# -- the agent ---------------------------------------------------------------------------------------


@dataclass
class AgentResult:
    span: Span
    own: dict[str, Any]  # phase 1 answer (the node's self-evidence in the evidence graph)
    verdict: dict[str, Any]  # phase 2 answer (what goes up to the parent)
    children: list[str]
    elapsed_ms: float
    timed_out: bool = False


class DedicatedAgent:
    def __init__(self, span: Span, children: list[Span], tools: Toolbox, reasoner: Reasoner) -> None:
        self.span = span
        self.children = children
        self.tools = tools
        self.reasoner = reasoner

    def run(self, child_verdicts: list[dict[str, Any]]) -> AgentResult:
        began = time.perf_counter()
        own = self.reasoner.verify(self.tools.evidence(self.span, self.children))
        verdict = self.reasoner.consolidate(own, child_verdicts)
        return AgentResult(
            self.span, own, verdict, [c.span_id for c in self.children], (time.perf_counter() - began) * 1000
        )
