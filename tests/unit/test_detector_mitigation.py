"""Mitigation plans and the Kubernetes actuator: dry-run by default, the exact request, the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from services.common.pb.faultline.v1 import detector_pb2
from services.detector.detection import UNKNOWN, AlertInfo
from services.detector.knowledge_base import STEP, TRACE
from services.detector.mitigation import KubernetesActuator, plan_for_alert, plan_for_incident

A = detector_pb2


def alert(failure_type: str, level: int = STEP) -> AlertInfo:
    return AlertInfo("a1", "run-1", "code", "coder", 4, failure_type, 0.9, [], level, 0.2, 0.3, 0.0)


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        def call(**kwargs: Any) -> Any:
            self.calls.append((method, kwargs))
            return SimpleNamespace(spec=SimpleNamespace(replicas=2))

        return call


def incident(failure_type: str) -> detector_pb2.Incident:
    out = detector_pb2.Incident(id="i1", system="boutique", failure_type=failure_type, summary="boutique: anomalous")
    out.suspected_services.add(system="boutique", service="cartservice", node="node-3")
    return out


def test_plans_follow_the_diagnosis() -> None:
    assert plan_for_alert(alert("incorrect_code")).action == A.MITIGATION_ACTION_RERUN_STEP_WITH_HINT
    assert "incorrect_code" in plan_for_alert(alert("incorrect_code")).hint
    rollback = plan_for_alert(alert("ignored_feedback"))
    assert rollback.action == A.MITIGATION_ACTION_ROLLBACK_TO_STEP and rollback.rollback_to_step == 3
    assert plan_for_alert(alert("round_limit")).action == A.MITIGATION_ACTION_REPLAN
    assert plan_for_alert(alert("incorrect_code", TRACE)).action == A.MITIGATION_ACTION_REPLAN
    assert plan_for_alert(alert(UNKNOWN)).action == A.MITIGATION_ACTION_ESCALATE
    assert plan_for_incident(incident("memory_leak"), "boutique").action == A.MITIGATION_ACTION_RESTART_DEPLOYMENT
    assert plan_for_incident(incident("cpu"), "boutique").action == A.MITIGATION_ACTION_SCALE
    assert plan_for_incident(incident("node_failure"), "boutique").action == A.MITIGATION_ACTION_CORDON


def test_dry_run_sends_nothing_and_records_the_request(tmp_path: Path) -> None:
    api = FakeApi()
    actuator = KubernetesActuator(audit_path=tmp_path / "audit.jsonl", api_factory=lambda _which: api)
    done = actuator.execute(plan_for_incident(incident("memory_leak"), "boutique"), who="tester")
    assert api.calls == []
    assert done.dry_run and not done.executed
    assert "apps.patch_namespaced_deployment(" in done.result and "restartedAt" in done.result
    (entry,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert entry["who"] == "tester" and entry["what"] == "MITIGATION_ACTION_RESTART_DEPLOYMENT"
    assert entry["target"] == "boutique/cartservice" and entry["dry_run"] and "boutique" in entry["why"]


def test_enabled_actuator_calls_the_client_with_the_request() -> None:
    api = FakeApi()
    actuator = KubernetesActuator(enabled=True, api_factory=lambda _which: api)
    scaled = actuator.execute(plan_for_incident(incident("cpu"), "boutique"))
    assert scaled.executed and not scaled.dry_run
    assert api.calls[0] == ("read_namespaced_deployment_scale", {"name": "cartservice", "namespace": "boutique"})
    method, kwargs = api.calls[1]
    assert method == "patch_namespaced_deployment_scale" and kwargs["body"] == {"spec": {"replicas": 3}}
    cordon = actuator.execute(plan_for_incident(incident("node_failure"), "boutique"))
    assert cordon.executed and api.calls[2] == (
        "patch_node",
        {"name": "node-3", "body": {"spec": {"unschedulable": True}}},
    )
    agent_plan = actuator.execute(plan_for_alert(alert("incorrect_code")))
    assert not agent_plan.executed and len(api.calls) == 3  # agent-level plans never reach the cluster


def test_a_refusing_cluster_is_recorded_not_raised() -> None:
    class Refusing:
        def patch_node(self, **_kwargs: Any) -> None:
            raise RuntimeError("forbidden")

    actuator = KubernetesActuator(enabled=True, api_factory=lambda _which: Refusing())
    done = actuator.execute(plan_for_incident(incident("node_failure"), "boutique"))
    assert not done.executed and done.result.startswith("failed: RuntimeError")


def test_a_plan_is_the_same_event_when_its_alert_or_incident_is_planned_again() -> None:
    from services.detector.detection import AlertInfo, alert_id
    from services.detector.knowledge_base import STEP

    def alert(step_index: int) -> AlertInfo:
        return AlertInfo(
            alert_id("run-1", STEP, step_index), "run-1", "code", "coder", step_index, "ignored_feedback", 0.9, [],
            STEP, 0.9, 0.1, 0.0,
        )  # fmt: skip

    assert plan_for_alert(alert(3)).id == plan_for_alert(alert(3)).id != plan_for_alert(alert(4)).id
    assert plan_for_incident(incident("cpu"), "boutique").id == plan_for_incident(incident("cpu"), "boutique").id
