"""Reflexive mitigation: a plan per alert or incident, and (for infrastructure) actions on Kubernetes.

Agent failures get the paper's two reflections: model-centric (re-run the flagged agent with the
diagnosis as a hint, or roll back to the step before it) and orchestration-centric (re-plan, when the
whole trace matched or the failure is one of coordination). An alert of an unknown type is escalated.

Infrastructure incidents map to a Deployment restart, a scale-up or a node cordon through the official
``kubernetes`` client. Nothing touches a cluster unless the actuator was enabled explicitly; otherwise
the plan records the exact request it would have sent. Every decision is written to an audit log
(JSON lines: who, what, why, dry-run or not, and the outcome).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from services.common.pb.faultline.v1 import detector_pb2
from services.detector.detection import UNKNOWN, AlertInfo
from services.detector.knowledge_base import MITIGATIONS, TRACE

log = logging.getLogger(__name__)
A = detector_pb2

# Coordination failures are re-planned; a skipped step is redone from the step before it.
REPLAN_TYPES = {"decomposition_error", "round_limit"}
ROLLBACK_TYPES = {"ignored_feedback", "premature_termination"}
# Incident failure types (the embedding service's failure-type head) that a restart clears.
RESTART_TYPES = {"memory", "memory_leak", "oom", "crash", "pod_kill", "pod_failure", "deadlock", "error"}
NODE_TYPES = {"node", "node_failure", "disk", "network_partition"}


def _plan(**fields: Any) -> detector_pb2.MitigationPlan:
    # A plan's id is derived from its incident's or alert's (both derived themselves): planned again after a
    # replay, it is the same plan (the same event id), not a second one.
    about = next((f"{k}/{fields[k]}" for k in ("incident_id", "alert_id") if fields.get(k)), "")
    plan_id = uuid.uuid5(uuid.NAMESPACE_URL, f"faultline:plan/{about}").hex if about else uuid.uuid4().hex
    plan = detector_pb2.MitigationPlan(id=plan_id, dry_run=True, **fields)
    plan.created_at.GetCurrentTime()
    return plan


def plan_for_alert(alert: AlertInfo) -> detector_pb2.MitigationPlan:
    advice = MITIGATIONS.get(alert.failure_type, "")
    if alert.level == TRACE:
        return _plan(
            alert_id=alert.id,
            action=A.MITIGATION_ACTION_REPLAN,
            target=f"{alert.system}-orchestrator",
            hint=advice or f"the whole run resembles known '{alert.failure_type}' failures",
            reason=f"trace matched {alert.failure_type} (confidence {alert.confidence:.2f})",
            requested_by="detector",
        )
    if alert.failure_type == UNKNOWN:
        return _plan(
            alert_id=alert.id,
            action=A.MITIGATION_ACTION_ESCALATE,
            target=alert.agent,
            reason=f"step {alert.step_index} of {alert.agent} deviates from normal behaviour; no known failure matched",
            requested_by="detector",
        )
    hint = (
        f"Your previous output looks like a known '{alert.failure_type}' failure. {advice}".strip()
        if advice
        else f"Your previous output looks like a known '{alert.failure_type}' failure; check it before going on."
    )
    reason = (
        f"step {alert.step_index} of {alert.agent} matched {alert.failure_type} (confidence {alert.confidence:.2f})"
    )
    if alert.failure_type in REPLAN_TYPES:
        return _plan(
            alert_id=alert.id,
            action=A.MITIGATION_ACTION_REPLAN,
            target=f"{alert.system}-orchestrator",
            hint=hint,
            reason=reason,
            requested_by="detector",
        )
    if alert.failure_type in ROLLBACK_TYPES:
        return _plan(
            alert_id=alert.id,
            action=A.MITIGATION_ACTION_ROLLBACK_TO_STEP,
            target=alert.agent,
            hint=hint,
            rollback_to_step=max(alert.step_index - 1, 0),
            reason=reason,
            requested_by="detector",
        )
    return _plan(
        alert_id=alert.id,
        action=A.MITIGATION_ACTION_RERUN_STEP_WITH_HINT,
        target=alert.agent,
        hint=hint,
        reason=reason,
        requested_by="detector",
    )


def plan_for_incident(incident: detector_pb2.Incident, namespace: str) -> detector_pb2.MitigationPlan:
    if not incident.suspected_services:
        return _plan(
            incident_id=incident.id,
            action=A.MITIGATION_ACTION_ESCALATE,
            target=incident.system,
            reason="incident without a suspected service",
            requested_by="detector",
        )
    suspect = incident.suspected_services[0]
    kind = incident.failure_type.lower()
    reason = f"{incident.summary}; failure type {incident.failure_type or 'unknown'}"
    if suspect.node and kind in NODE_TYPES:
        return _plan(
            incident_id=incident.id,
            action=A.MITIGATION_ACTION_CORDON,
            target=suspect.node,
            reason=reason,
            requested_by="detector",
        )
    target = f"{namespace}/{suspect.service}"
    if kind in RESTART_TYPES:
        return _plan(
            incident_id=incident.id,
            action=A.MITIGATION_ACTION_RESTART_DEPLOYMENT,
            target=target,
            reason=reason,
            requested_by="detector",
        )
    # saturation (cpu, latency, load) or unknown: more replicas are the least disruptive step
    return _plan(
        incident_id=incident.id,
        action=A.MITIGATION_ACTION_SCALE,
        target=target,
        replicas=0,
        reason=reason,
        requested_by="detector",
    )


@dataclass(frozen=True)
class KubeRequest:
    """A call on the kubernetes client: which API, which method, which arguments."""

    api: str  # "apps" (AppsV1Api) or "core" (CoreV1Api)
    method: str
    kwargs: dict[str, Any]


class KubernetesActuator:
    """Executes infrastructure plans; dry-run unless ``enabled``. Agent-level plans are never executed here:
    they are published for the agent framework to act on."""

    INFRA: ClassVar[set[int]] = {
        A.MITIGATION_ACTION_RESTART_DEPLOYMENT,
        A.MITIGATION_ACTION_SCALE,
        A.MITIGATION_ACTION_CORDON,
    }

    def __init__(
        self,
        enabled: bool = False,
        audit_path: Path | None = None,
        api_factory: Callable[[str], Any] | None = None,
        max_replicas: int = 10,
    ) -> None:
        self.enabled = enabled
        self.audit_path = audit_path
        self.max_replicas = max_replicas
        self._api_factory = api_factory or _cluster_api
        self._apis: dict[str, Any] = {}
        self._lock = threading.Lock()

    def request_for(self, plan: detector_pb2.MitigationPlan, current_replicas: int | None = None) -> KubeRequest:
        if plan.action == A.MITIGATION_ACTION_CORDON:
            return KubeRequest("core", "patch_node", {"name": plan.target, "body": {"spec": {"unschedulable": True}}})
        namespace, _, name = plan.target.partition("/")
        if plan.action == A.MITIGATION_ACTION_RESTART_DEPLOYMENT:
            # what `kubectl rollout restart` does: a new pod-template annotation rolls the pods
            stamp = datetime.now(UTC).isoformat()
            body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
            return KubeRequest(
                "apps", "patch_namespaced_deployment", {"name": name, "namespace": namespace, "body": body}
            )
        if plan.action == A.MITIGATION_ACTION_SCALE:
            replicas = plan.replicas or min((current_replicas or 1) + 1, self.max_replicas)
            body = {"spec": {"replicas": min(replicas, self.max_replicas)}}
            return KubeRequest(
                "apps", "patch_namespaced_deployment_scale", {"name": name, "namespace": namespace, "body": body}
            )
        raise ValueError(f"{A.MitigationAction.Name(plan.action)} is not an infrastructure action")

    def execute(self, plan: detector_pb2.MitigationPlan, who: str = "detector") -> detector_pb2.MitigationPlan:
        """Carry out (or, in dry-run, describe) an infrastructure plan; returns the plan with the outcome."""
        out = detector_pb2.MitigationPlan()
        out.CopyFrom(plan)
        out.requested_by = who
        if plan.action not in self.INFRA:
            out.dry_run, out.executed = True, False
            out.result = "agent-level plan: published for the agent framework"
            self._audit(out)
            return out
        out.dry_run = not self.enabled
        try:
            current = (
                self._current_replicas(plan) if plan.action == A.MITIGATION_ACTION_SCALE and self.enabled else None
            )
            request = self.request_for(plan, current)
            if out.dry_run:
                out.result = f"dry-run: would call {request.api}.{request.method}({json.dumps(request.kwargs)})"
            else:
                getattr(self._api(request.api), request.method)(**request.kwargs)
                out.executed = True
                out.result = f"called {request.api}.{request.method} on {plan.target}"
        except Exception as error:  # the cluster said no: record it, never crash the detector over it
            out.executed = False
            out.result = f"failed: {type(error).__name__}: {error}"
        self._audit(out)
        return out

    def _current_replicas(self, plan: detector_pb2.MitigationPlan) -> int | None:
        namespace, _, name = plan.target.partition("/")
        scale = self._api("apps").read_namespaced_deployment_scale(name=name, namespace=namespace)
        return int(scale.spec.replicas)

    def _api(self, which: str) -> Any:
        with self._lock:
            if which not in self._apis:
                self._apis[which] = self._api_factory(which)
            return self._apis[which]

    def _audit(self, plan: detector_pb2.MitigationPlan) -> None:
        entry = {
            "time": time.time(),
            "who": plan.requested_by,
            "what": A.MitigationAction.Name(plan.action),
            "target": plan.target,
            "why": plan.reason,
            "dry_run": plan.dry_run,
            "executed": plan.executed,
            "result": plan.result,
            "plan_id": plan.id,
            "alert_id": plan.alert_id,
            "incident_id": plan.incident_id,
        }
        log.info("mitigation", extra={"audit": entry})
        if self.audit_path is not None:
            with self._lock:
                self.audit_path.parent.mkdir(parents=True, exist_ok=True)
                with self.audit_path.open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")


def _cluster_api(which: str) -> Any:
    """The real client: in-cluster service account first, then the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api() if which == "apps" else client.CoreV1Api()
