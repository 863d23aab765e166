"""One analysis end to end: a telemetry window -> selected traces -> the agent tree -> an RcaReport."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.pb.faultline.v1 import rca_pb2
from services.rca.agents import AgentResult, LlmReasoner, Reasoner, Toolbox
from services.rca.orchestrator import run_tree
from services.rca.selection import select_traces
from services.rca.synthesizer import Candidate, synthesize
from services.rca.telemetry import Telemetry
from services.rca.tools import LogTool, MetricTool, TraceTool


@dataclass(frozen=True)
class AnalysisOptions:
    max_traces: int = 20
    max_workers: int = 8  # the Agents Pool
    agent_deadline_s: float = 30.0
    case_deadline_s: float = 120.0
    metric_delta_s: float = 300.0  # δ of the Metric Tool after the anomalous period starts


def build_tools(telemetry: Telemetry, options: AnalysisOptions) -> Toolbox:
    traces = TraceTool(telemetry)
    services = set(telemetry.spans.service.unique()) | set(telemetry.metrics.service.unique())
    return Toolbox(
        traces,
        MetricTool(telemetry, options.metric_delta_s),
        LogTool(telemetry),
        {str(s) for s in services if s},
        telemetry.start_s,
        min(telemetry.end_s, telemetry.start_s + options.metric_delta_s),
        dict(telemetry.pod_node),
    )


def _timestamp(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def _verdict_proto(result: AgentResult) -> rca_pb2.AgentVerdict:
    span, own, verdict = result.span, result.own, result.verdict
    return rca_pb2.AgentVerdict(
        span_id=span.span_id,
        trace_id=span.trace_id,
        service=span.service,
        pod=span.pod,
        operation=span.operation,
        is_abnormal=bool(own.get("is_abnormal")),
        symptoms=[str(s) for s in own.get("key_symptoms", [])],
        local_root_cause=str(verdict.get("local_root_cause", "")),
        local_fault_type=str(verdict.get("fault_type", "unknown")),
        confidence=float(verdict.get("confidence", 0.0)),
        reason=str(verdict.get("reason", "")),
        children=result.children,
        duration_ms=span.duration_us / 1000,
        timed_out=result.timed_out,
        self_score=float(own.get("self_score", 0.0)),
    )


@dataclass
class Analysis:
    report: rca_pb2.RcaReport
    candidates: list[Candidate]

    def pod_ranking(self) -> list[str]:
        """Pods in candidate order, each service's most suspicious pod first."""
        return [p for c in self.candidates for p in ([c.pod] if c.pod else []) + [q for q in c.pods if q != c.pod]]


def analyze(
    telemetry: Telemetry,
    reasoner: Reasoner,
    options: AnalysisOptions = AnalysisOptions(),
    trace_ids: list[str] | None = None,
    incident_id: str = "",
    on_result: Callable[[AgentResult, rca_pb2.AgentVerdict, int, int], None] | None = None,
) -> Analysis:
    began = time.perf_counter()
    tools = build_tools(telemetry, options)
    selected = trace_ids or [
        s.trace_id for s in select_traces(tools.traces, int(telemetry.end_s * 1e6), options.max_traces)
    ]
    selection_ms = (time.perf_counter() - began) * 1000
    trees = [tools.traces.tree(t) for t in selected]
    trees = [t for t in trees if t[0]]

    def progress(result: AgentResult, done: int, total: int) -> None:
        if on_result is not None:
            on_result(result, _verdict_proto(result), done, total)

    run = run_tree(
        trees,
        tools,
        reasoner,
        max_workers=options.max_workers,
        agent_deadline_s=options.agent_deadline_s,
        case_deadline_s=options.case_deadline_s,
        on_result=progress,
    )
    candidates = synthesize(run.results, run.roots, tools)
    usage = reasoner.usage if isinstance(reasoner, LlmReasoner) else None
    report = rca_pb2.RcaReport(
        id=str(uuid.uuid4()),
        incident_id=incident_id,
        system=telemetry.system,
        candidates=[
            rca_pb2.RootCauseCandidate(
                service=c.service,
                pod=c.pod,
                node=c.node,
                fault_type=c.fault_type,
                confidence=round(c.score, 4),
                reason=c.reason,
                rank=i + 1,
            )
            for i, c in enumerate(candidates)
        ],
        evidence=rca_pb2.EvidenceGraph(nodes=[_verdict_proto(r) for r in run.results.values()], roots=run.roots),
        trace_ids=selected,
        mode=reasoner.mode,
        partial=run.partial,
        timings=rca_pb2.RcaTimings(
            agents=len(run.results),
            agents_timed_out=run.timed_out,
            llm_calls=usage.calls if usage else 0,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            selection_ms=selection_ms,
            load_ms=telemetry.load_ms,
        ),
    )
    report.window.start.CopyFrom(_timestamp(telemetry.start_s))
    report.window.end.CopyFrom(_timestamp(telemetry.end_s))
    report.created_at.GetCurrentTime()
    if candidates:
        top = candidates[0]
        where = f"{top.service}/{top.pod}" if top.pod else top.service
        report.summary = (
            f"most likely root cause: {where} ({top.fault_type}); {len(selected)} traces, {len(run.results)} agents"
        )
    else:
        report.summary = "no root cause found"
    report.timings.total_ms = (time.perf_counter() - began) * 1000
    return Analysis(report, candidates)
