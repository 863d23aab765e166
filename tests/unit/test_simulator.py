"""The scenario simulator: OTLP output, trace trees, fault visibility, dataset layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from loadtests.simulator.dataset import read_native, write_native, write_rcaeval
from loadtests.simulator.faults import parse_fault
from loadtests.simulator.otlp_encode import SpanEncoder
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from loadtests.simulator.topology import TopologyError, load, parse
from loadtests.simulator.traffic import CAUSE_TIMEOUT, CAUSE_UNAVAILABLE, STATUS_ERROR
from services.common import otlp, topics

FAULT_AT = 120


def _run(fault: str, duration: float = 240, seed: int = 1):
    scenario = Scenario(ScenarioSpec(faults=(fault,), duration_s=duration, seed=seed))
    return scenario, scenario.run()


def _before_after(frame: pd.DataFrame, column: str, epoch: int) -> tuple[float, float]:
    t = frame.time - epoch
    return float(frame[column][t < FAULT_AT].mean()), float(frame[column][(t >= FAULT_AT + 10)].mean())


@pytest.fixture(scope="module")
def cpu_case():
    return _run(f"cpu:cartservice@{FAULT_AT}s")


def test_spans_decode_with_the_official_classes_and_form_trees(cpu_case) -> None:
    scenario, chunk = cpu_case
    spans_by_trace: dict[bytes, list] = {}
    for request, _latest_ns in SpanEncoder(scenario.topology, scenario.fault_model).requests(chunk.spans):
        decoded = ExportTraceServiceRequest.FromString(request.SerializeToString())
        for scoped in otlp.iter_spans(decoded):
            assert scoped.resource["k8s.pod.name"].startswith(scoped.service)
            spans_by_trace.setdefault(scoped.item.trace_id, []).append(scoped.item)
    assert sum(map(len, spans_by_trace.values())) == len(chunk.spans)
    for spans in spans_by_trace.values():
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_span_id]
        assert len(roots) == 1
        assert all(s.parent_span_id in ids for s in spans if s.parent_span_id)
        root = roots[0]
        # A child lies inside its parent's time (async calls may outlive it: none at the root).
        for s in spans:
            assert s.start_time_unix_nano >= root.start_time_unix_nano


def test_cpu_fault_shows_in_the_service_and_upstream_after_injection_only(cpu_case) -> None:
    scenario, chunk = cpu_case
    frame, epoch = chunk.metrics.services, scenario.spec.epoch_s
    cpu_before, cpu_after = _before_after(frame, "cartservice_cpu", epoch)
    assert cpu_after > 2 * cpu_before
    lat_before, lat_after = _before_after(frame, "cartservice_latency-90", epoch)
    assert lat_after > 2 * lat_before
    front_before, front_after = _before_after(frame, "frontend_latency-90", epoch)
    assert front_after > 1.1 * front_before  # callers feel it
    other_before, other_after = _before_after(frame, "currencyservice_cpu", epoch)
    assert abs(other_after - other_before) < 0.25 * other_before  # bystanders do not
    early = frame[(frame.time - epoch) < FAULT_AT - 30]["cartservice_cpu"]
    late_normal = frame[((frame.time - epoch) >= FAULT_AT - 30) & ((frame.time - epoch) < FAULT_AT)]["cartservice_cpu"]
    assert abs(late_normal.mean() - early.mean()) < 0.3 * early.mean()  # nothing leaks before the start


def test_delay_fault_shows_at_the_callers_not_in_the_service_own_spans() -> None:
    scenario, chunk = _run(f"delay:currencyservice@{FAULT_AT}s")
    frame, epoch = chunk.metrics.services, scenario.spec.epoch_s
    own_before, own_after = _before_after(frame, "currencyservice_latency-50", epoch)
    assert own_after < 1.3 * own_before
    front_before, front_after = _before_after(frame, "frontend_latency-50", epoch)
    assert front_after > front_before + 0.2  # three Convert calls, ~200 ms each


def test_code_fault_fails_one_operation_and_propagates_upstream() -> None:
    scenario, chunk = _run(f"code:cartservice/GetCart@{FAULT_AT}s")
    spans, epoch = chunk.spans, scenario.spec.epoch_s
    t = spans.start_us / 1e6 - epoch
    get_cart = spans.op == spans.operations.index("cartservice/GetCart")
    add_item = spans.op == spans.operations.index("cartservice/AddItem")
    errors = spans.status == STATUS_ERROR
    assert errors[get_cart & (t < FAULT_AT)].mean() < 0.01
    assert errors[get_cart & (t >= FAULT_AT)].mean() > 0.4
    assert errors[add_item & (t >= FAULT_AT)].mean() < 0.01
    front = spans.op == spans.operations.index("frontend/GET /")
    assert errors[front & (t >= FAULT_AT)].mean() > 0.3
    cart_logs = chunk.logs[(chunk.logs.service == "cartservice") & (chunk.logs.level == "ERROR")]
    assert (cart_logs.time_ns / 1e9 - epoch >= FAULT_AT).mean() > 0.9
    assert cart_logs.trace_id.str.len().eq(32).all()


def test_pod_kill_fails_calls_then_drains_and_restarts() -> None:
    scenario, chunk = _run(f"pod-kill:cartservice-1@{FAULT_AT}s")
    spans, epoch = chunk.spans, scenario.spec.epoch_s
    t = spans.start_us / 1e6 - epoch
    refused = spans.cause == CAUSE_UNAVAILABLE
    assert refused[(t >= FAULT_AT) & (t < FAULT_AT + 5)].sum() > 0
    assert refused[t < FAULT_AT].sum() == 0
    assert refused[t >= FAULT_AT + 6].sum() == 0  # drained: the other pod takes the traffic
    pods = chunk.metrics.pods
    killed = pods[pods.pod == "cartservice-1"]
    assert killed.restarts.iloc[-1] == 1 and killed.restarts.iloc[0] == 0
    assert (killed[(killed.time - epoch >= FAULT_AT) & (killed.time - epoch < FAULT_AT + 20)].cpu == 0).all()


def test_loss_makes_some_callers_time_out() -> None:
    scenario, chunk = _run(f"loss:paymentservice@{FAULT_AT}s", duration=400)
    spans, epoch = chunk.spans, scenario.spec.epoch_s
    t = spans.start_us / 1e6 - epoch
    place = spans.op == spans.operations.index("checkoutservice/PlaceOrder")
    slow_before = np.median(spans.duration_us[place & (t < FAULT_AT)])
    slow_after = np.percentile(spans.duration_us[place & (t >= FAULT_AT)], 90)
    assert slow_after > slow_before + 150_000
    assert (spans.cause[t < FAULT_AT] == CAUSE_TIMEOUT).sum() == 0


def test_rcaeval_layout_loads_as_rcaeval_expects(cpu_case, tmp_path: Path) -> None:
    scenario, chunk = cpu_case
    out = write_rcaeval(scenario, chunk, tmp_path / "case")
    data = pd.read_csv(out / "data.csv")
    assert data["time"].dtype == np.int64
    assert (np.diff(data["time"]) == 1).all()
    columns = [c for c in data.columns if c != "time"]
    assert {c.split("_")[0] for c in columns} == set(scenario.topology.services)
    assert all(len(c.split("_")) == 2 for c in columns)  # service names carry no '_'
    assert {"cartservice_cpu", "cartservice_mem", "cartservice_latency-90", "cartservice_latency-50"} <= set(columns)
    inject = int((out / "inject_time.txt").read_text())
    assert data["time"].iloc[0] < inject < data["time"].iloc[-1]
    traces = pd.read_csv(out / "traces.csv")
    assert {
        "traceID",
        "spanID",
        "parentSpanID",
        "serviceName",
        "methodName",
        "operationName",
        "startTime",
        "duration",
    } <= set(traces.columns)
    assert traces.startTime.min() > 1e15  # µs, like inject_time * 1_000_000
    logs = pd.read_csv(out / "logs.csv")
    assert {"time", "container_name", "message"} <= set(logs.columns)


def test_native_dataset_replays_the_otlp_records(tmp_path: Path) -> None:
    scenario = Scenario(ScenarioSpec(faults=("memory:adservice@30s+60s",), duration_s=60, seed=5))
    counts = write_native(scenario, tmp_path)
    spans = sum(
        len(list(otlp.iter_spans(ExportTraceServiceRequest.FromString(v))))
        for v in read_native(tmp_path, topics.OTLP_SPANS)
    )
    assert spans == len(Scenario(scenario.spec).run().spans)  # same seed, same traffic
    metrics = list(read_native(tmp_path, topics.OTLP_METRICS))
    assert len(metrics) == counts[topics.OTLP_METRICS] == 60
    names = {m.item.name for m in otlp.iter_metrics(ExportMetricsServiceRequest.FromString(metrics[0]))}
    assert {"container.cpu.utilization", "container.memory.usage", "rpc.server.duration.p90"} <= names
    logs = [
        r
        for v in read_native(tmp_path, topics.OTLP_LOGS)
        for r in otlp.iter_logs(ExportLogsServiceRequest.FromString(v))
    ]
    assert any("memory usage high" in r.item.body.string_value for r in logs)


def test_same_seed_same_data_other_seed_other_data() -> None:
    def digest(seed: int) -> tuple[int, int]:
        chunk = Scenario(ScenarioSpec(duration_s=20, seed=seed)).run()
        return len(chunk.spans), int(chunk.spans.duration_us.sum())

    assert digest(3) == digest(3)
    assert digest(3) != digest(4)


def test_fault_specs_parse_and_fail_clearly() -> None:
    topology = load("online-boutique")
    fault = parse_fault("memory:adservice-0@10m+5m", topology)
    assert (fault.service, fault.pod, fault.start_s, fault.duration_s) == ("adservice", "adservice-0", 600, 300)
    assert parse_fault("code:cartservice/GetCart@60", topology).operation == "GetCart"
    with pytest.raises(ValueError, match="kind:target@start"):
        parse_fault("cpu-cartservice", topology)
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault("fire:cartservice@1s", topology)
    with pytest.raises(TopologyError, match="neither a service nor a pod"):
        parse_fault("cpu:nosuch@1s", topology)


def test_topologies_are_validated() -> None:
    def doc(calls: list, name: str = "a") -> dict:
        return {
            "system": "t",
            "services": {name: {"operations": {"x": {"calls": calls}}}, "b": {"operations": {"y": {"calls": ["a/x"]}}}},
            "traffic": {"flows": [{"operation": f"{name}/x"}]},
        }

    with pytest.raises(TopologyError, match="call cycle"):
        parse(doc(["b/y"]))
    with pytest.raises(TopologyError, match="unknown operation"):
        parse(doc(["c/z"]))
    with pytest.raises(TopologyError, match="must not contain '_'"):
        parse(doc([], name="a_b"))
    with pytest.raises(TopologyError, match="no system"):
        load("no-such-system")


def test_train_ticket_is_a_large_valid_system() -> None:
    topology = load("train-ticket")
    assert len(topology.services) >= 40
    assert all("_" not in s for s in topology.services)
    chunk = Scenario(ScenarioSpec(system="train-ticket", duration_s=20, seed=2)).run()
    per_trace = np.bincount(chunk.spans.trace)
    assert per_trace.mean() > 15  # deep call trees, unlike Online Boutique
    assert len({op.split("/", 1)[0] for op in np.array(chunk.spans.operations)[np.unique(chunk.spans.op)]}) >= 40
    assert (chunk.logs.level == "WARN").sum() < 0.02 * len(chunk.spans)  # "slow" means slow, not deep


def test_agent_runs_dataset_has_steps_labels_and_otlp(tmp_path: Path) -> None:
    from loadtests.simulator.agents import generate_runs
    from loadtests.simulator.dataset import write_agent_runs

    runs = generate_runs("rca", 6, seed=4, failure_rate=0.5)
    out = write_agent_runs(runs, tmp_path / "agents")
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    truth = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["run_id"] for r in records] == [t["run_id"] for t in truth] == [r.run_id for r in runs]
    assert [len(r["steps"]) for r in records] == [len(r.steps) for r in runs]
    step_requests = list(read_native(out, topics.OTLP_SPANS))
    assert len(step_requests) == sum(len(r.steps) for r in runs)  # one record per step, as they happen
    first = next(otlp.iter_spans(ExportTraceServiceRequest.FromString(step_requests[0])))
    assert "gen_ai.operation.name" in otlp.attributes(first.item.attributes)
