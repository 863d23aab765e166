"""RCLAgent on hand-built traces: tools, selection, agent verdicts, synthesis, deadlines, the LLM reasoner."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import grpc
import numpy as np
import pandas as pd
import pytest

from services.common.llm import SchemaError, validate_schema
from services.common.pb.faultline.v1 import rca_pb2
from services.rca.agents import SELF_SCHEMA, EvidenceReasoner, LlmReasoner
from services.rca.analysis import AnalysisOptions, analyze, build_tools
from services.rca.orchestrator import run_tree
from services.rca.selection import select_traces
from services.rca.service import RcaApp, RcaServicer
from services.rca.telemetry import Telemetry

T0 = 1_700_000_000.0  # the anomalous period starts here; 300 s of normal traffic before it


def _trace(i: int, start_s: float, rng: np.random.Generator, fault: str | None) -> list[tuple]:
    """frontend/GET -> cart/GetCart -> redis/GET, plus frontend -> ads/GetAds (all times in µs)."""
    own = {
        s: rng.lognormal(np.log(m), 0.2) for s, m in (("frontend", 3000), ("cart", 2000), ("redis", 500), ("ads", 1000))
    }
    if fault == "cpu:cart":
        own["cart"] *= 8
    net_cart = 300 + (200_000 if fault == "delay:cart" else 0)
    t = int(start_s * 1e6)
    f_pre = own["frontend"] * 0.3
    cart_start = t + f_pre + net_cart / 2
    redis_start = cart_start + own["cart"] * 0.3 + 150
    redis_end = redis_start + own["redis"]
    cart_end = redis_end + 150 + own["cart"] * 0.7
    ads_start = cart_end + net_cart / 2 + 150
    ads_end = ads_start + own["ads"]
    f_end = ads_end + 150 + own["frontend"] * 0.7
    tid = f"{i:032x}"
    err = fault == "code:redis"
    return [
        (tid, f"{i:08x}a", "", "frontend", "frontend-0", "GET /", t, f_end - t, err, ""),
        (tid, f"{i:08x}b", f"{i:08x}a", "cart", "cart-0", "GetCart", cart_start, cart_end - cart_start, err, ""),
        (tid, f"{i:08x}c", f"{i:08x}b", "redis", "redis-0", "GET", redis_start, redis_end - redis_start, err, ""),
        (tid, f"{i:08x}d", f"{i:08x}a", "ads", "ads-0", "GetAds", ads_start, ads_end - ads_start, False, ""),
    ]


def telemetry(fault: str | None, seed: int = 0) -> Telemetry:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1200):
        start = T0 - 300 + i * 0.5
        rows += _trace(i, start, rng, fault if start >= T0 else None)
    spans = pd.DataFrame(
        rows,
        columns=[
            "trace_id",
            "span_id",
            "parent_id",
            "service",
            "pod",
            "operation",
            "start_us",
            "duration_us",
            "error",
            "status_message",
        ],
    )
    spans[["start_us", "duration_us"]] = spans[["start_us", "duration_us"]].astype(np.int64)
    times = np.arange(T0 - 300, T0 + 300)
    metrics = []
    for service in ("frontend", "cart", "redis", "ads"):
        cpu = 20 + rng.normal(0, 1, len(times))
        if fault == "cpu:cart" and service == "cart":
            cpu = np.where(times >= T0, 95.0, cpu)
        metrics.append(pd.DataFrame({"time": times, "service": service, "pod": "", "metric": "cpu", "value": cpu}))
    logs = pd.DataFrame(columns=["time", "service", "pod", "level", "message", "trace_id"])
    return Telemetry("test", T0, T0 + 300, spans, pd.concat(metrics, ignore_index=True), logs)


def test_trace_tool_self_time_and_call_overhead() -> None:
    tools = build_tools(telemetry("delay:cart"), AnalysisOptions())
    late = [t for t in tools.traces.trace_ids() if int(t, 16) >= 600]
    roots, children = tools.traces.tree(late[0])
    evidence = tools.traces.describe(roots[0], children[roots[0].span_id])
    cart_call = next(c for c in evidence["calls"] if c["service"] == "cart")
    ads_call = next(c for c in evidence["calls"] if c["service"] == "ads")
    assert cart_call["before_excess_ms"] > 50 and cart_call["after_excess_ms"] > 50
    assert ads_call["before_excess_ms"] > 50 and ads_call["after_excess_ms"] < 5  # only the gap shared with cart
    cart = children[roots[0].span_id][0]
    assert cart.service == "cart" and tools.traces.op_self["cart/GetCart"].z(cart.self_us) < 4  # its own work is normal


def test_selection_takes_only_anomalous_entry_spans() -> None:
    tools = build_tools(telemetry("delay:cart"), AnalysisOptions())
    picked = select_traces(tools.traces, max_traces=50)
    assert picked and all(int(p.trace_id, 16) >= 600 for p in picked)
    assert select_traces(build_tools(telemetry(None), AnalysisOptions()).traces) == []


@pytest.mark.parametrize(("fault", "expected"), [("cpu:cart", "cart"), ("delay:cart", "cart"), ("code:redis", "redis")])
def test_evidence_path_names_the_faulty_service_first(fault: str, expected: str) -> None:
    report = analyze(telemetry(fault), EvidenceReasoner(), AnalysisOptions(max_traces=5)).report
    assert report.candidates[0].service == expected, report.candidates
    assert report.timings.agents == 4 * len(report.trace_ids) and not report.partial
    root = next(n for n in report.evidence.nodes if n.span_id == report.evidence.roots[0])
    assert root.local_root_cause.split("/")[0] == expected  # the recursion carried it up to the entry span


def test_consolidation_prefers_the_deeper_explanation() -> None:
    reasoner = EvidenceReasoner()
    own = {
        "span_id": "a",
        "service": "frontend",
        "pod": "f-0",
        "is_abnormal": True,
        "self_score": 0.6,
        "fault_type": "unknown",
        "hypothesis": "slow",
        "suspects": [],
    }
    child = {
        "span_id": "b",
        "service": "cart",
        "local_root_cause": "cart/cart-0",
        "fault_type": "cpu",
        "confidence": 0.55,
        "reason": "cart slow",
    }
    assert reasoner.consolidate(own, [child])["local_root_cause"] == "cart/cart-0"
    assert reasoner.consolidate({**own, "self_score": 0.95}, [child])["local_root_cause"] == "frontend/f-0"


class _SlowOn(EvidenceReasoner):
    def __init__(self, service: str) -> None:
        self.service = service

    def verify(self, evidence: dict[str, Any]) -> dict[str, Any]:
        if evidence["service"] == self.service:
            time.sleep(1.5)
        return super().verify(evidence)


def test_agent_deadline_gives_a_partial_result_with_the_childrens_verdicts() -> None:
    tel = telemetry("cpu:cart")
    tools = build_tools(tel, AnalysisOptions())
    trace = select_traces(tools.traces, max_traces=1)[0].trace_id
    run = run_tree([tools.traces.tree(trace)], tools, _SlowOn("frontend"), max_workers=2, agent_deadline_s=0.3)
    root = run.results[run.roots[0]]
    assert run.partial and run.timed_out == 1 and root.timed_out
    assert root.verdict["local_root_cause"].startswith("cart")  # the children's finding still reached the top


def test_schema_validation() -> None:
    good = {
        "span_id": "a",
        "service": "s",
        "is_abnormal": True,
        "self_score": 0.5,
        "key_symptoms": [],
        "hypothesis": "",
        "suspects": [],
    }
    validate_schema(good, SELF_SCHEMA)
    for bad in (
        {**good, "self_score": 2},
        {**good, "is_abnormal": "yes"},
        {k: v for k, v in good.items() if k != "service"},
    ):
        with pytest.raises(SchemaError):
            validate_schema(bad, SELF_SCHEMA)


class _FakeLlm(BaseHTTPRequestHandler):
    answers: ClassVar[list[str]] = []
    delay_s = 0.0
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        time.sleep(type(self).delay_s)
        content = type(self).answers.pop(0) if type(self).answers else "{}"
        payload = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_llm() -> Any:
    server = HTTPServer(("127.0.0.1", 0), _FakeLlm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeLlm.answers, _FakeLlm.seen, _FakeLlm.delay_s = [], [], 0.0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _evidence() -> dict[str, Any]:
    tools = build_tools(telemetry("cpu:cart"), AnalysisOptions())
    trace = select_traces(tools.traces, max_traces=1)[0].trace_id
    roots, children = tools.traces.tree(trace)
    cart = children[roots[0].span_id][0]
    return tools.evidence(cart, children.get(cart.span_id, []))


def test_llm_reasoner_repairs_a_malformed_answer(fake_llm: str) -> None:
    answer = {
        "span_id": "b",
        "service": "cart",
        "is_abnormal": True,
        "self_score": 0.9,
        "key_symptoms": ["slow"],
        "hypothesis": "cart CPU saturated",
        "suspects": [],
    }
    _FakeLlm.answers = ["not json at all", json.dumps(answer)]
    reasoner = LlmReasoner(fake_llm, "replay", timeout_s=5, retries=2)
    out = reasoner.verify(_evidence())
    assert out["hypothesis"] == "cart CPU saturated"
    assert reasoner.usage.calls == 2 and reasoner.usage.prompt_tokens == 200
    assert "not valid" in _FakeLlm.seen[1]["messages"][-1]["content"]  # the repair turn carries the error
    assert _FakeLlm.seen[0]["response_format"]["type"] == "json_schema"


def test_llm_reasoner_falls_back_to_statistics_on_timeout(fake_llm: str) -> None:
    _FakeLlm.delay_s = 1.0
    reasoner = LlmReasoner(fake_llm, "replay", timeout_s=0.2, retries=1)
    evidence = _evidence()
    out = reasoner.verify(evidence)
    assert (
        out == EvidenceReasoner().verify(evidence)
        or out["is_abnormal"] == EvidenceReasoner().verify(evidence)["is_abnormal"]
    )
    assert reasoner.usage.failed == 1 and reasoner.usage.calls == 0


class _Abort(Exception):
    pass


class _Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Abort(details)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (rca_pb2.AnalyzeRequest(), "incident or an explicit window"),
        (rca_pb2.AnalyzeRequest(window=rca_pb2.ExplicitWindow(system="x")), "start and an end"),
        (rca_pb2.AnalyzeRequest(incident={"id": "i"}, mode="oracle"), "start and an end"),
    ],
)
def test_bad_analyze_request_is_invalid_argument(request_: rca_pb2.AnalyzeRequest, reason: str) -> None:
    app = RcaApp(lambda *_: telemetry(None), {"evidence": EvidenceReasoner}, None, "unused")
    context = _Context()
    with pytest.raises(_Abort):
        list(RcaServicer(app).Analyze(request_, context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and reason in context.details


def test_analyze_streams_progress_then_the_report() -> None:
    app = RcaApp(
        lambda *_: telemetry("cpu:cart"), {"evidence": EvidenceReasoner}, None, "unused", AnalysisOptions(max_traces=3)
    )
    request = rca_pb2.AnalyzeRequest(window=rca_pb2.ExplicitWindow(system="test"))
    request.window.window.start.FromSeconds(int(T0))
    request.window.window.end.FromSeconds(int(T0) + 300)
    updates = list(RcaServicer(app).Analyze(request, _Context()))  # type: ignore[arg-type]
    assert updates[-1].report.candidates[0].service == "cart"
    assert [u.agents_finished for u in updates[:-1]] == list(range(1, 13))
    assert app.report(updates[-1].report.id) is not None


def test_metric_series_with_no_history_before_the_incident_rank_nothing_instead_of_failing() -> None:
    from services.rca.tools import MetricTool

    # A fresh start: every series begins at the incident, so there is no normal behaviour to deviate from.
    metrics = pd.DataFrame(
        {
            "time": [T0, T0 + 1, T0],
            "service": ["cart", "cart", "db"],
            "pod": "",
            "metric": "cpu",
            "value": [1.0, 2.0, 3.0],
        }
    )
    window = Telemetry("test", T0, T0 + 60, pd.DataFrame(), metrics, pd.DataFrame())
    assert MetricTool(window).fluctuations() == []
