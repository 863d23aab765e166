"""The detector's front ends: Kafka handlers (GenAI spans, system states) and the DetectorService gRPC API.

:class:`DetectorApp` is the one place where verdicts become events: alerts on faultline.alerts.v1,
plans on faultline.mitigations.v1, incidents on faultline.incidents.v1 (CloudEvents, protobuf bodies).
Malformed input raises :class:`PermanentError` on Kafka (→ DLQ) and INVALID_ARGUMENT over gRPC.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from services.common.bus import Delivery, PermanentError, Publisher
from services.common.pb.faultline.v1 import detector_pb2, detector_pb2_grpc, embedding_pb2
from services.detector.detection import AlertInfo, Detector, StepVerdict
from services.detector.incidents import OPEN, IncidentTracker
from services.detector.knowledge_base import MITIGATIONS, NORMAL, STEP, TRACE, Case
from services.detector.mitigation import KubernetesActuator, plan_for_alert, plan_for_incident
from services.detector.steps import RunEnd, Step, StepError, from_proto, from_request

MAX_ALERTS = 10_000
STEPS = Counter("faultline_detector_steps_total", "Agent steps scored", ["system"])
ALERTS_RAISED = Counter("faultline_detector_alerts_total", "Alerts raised", ["system", "level"])
INCIDENTS_CHANGED = Counter("faultline_detector_incidents_total", "Incidents opened or resolved", ["system", "status"])
STEP_SECONDS = Histogram("faultline_detector_step_seconds", "Time to score one step (backbone included)")


@dataclass(frozen=True)
class Topics:
    alerts: str
    incidents: str
    mitigations: str


@dataclass
class _StoredAlert:
    alert: detector_pb2.Alert
    vector: np.ndarray | None  # the step (or trace) embedding it was raised on, for feedback
    level: int


def alert_proto(alert: AlertInfo, encoder_version: str, kb_version: int) -> detector_pb2.Alert:
    message = detector_pb2.Alert(
        id=alert.id,
        run_id=alert.run_id,
        trace_id=alert.trace_id,
        system=alert.system,
        agent=alert.agent,
        step_index=alert.step_index,
        failure_type=alert.failure_type,
        confidence=alert.confidence,
        level=detector_pb2.ALERT_LEVEL_TRACE if alert.level == TRACE else detector_pb2.ALERT_LEVEL_STEP,
        knowledge_score=alert.knowledge,
        deviation_score=alert.deviation,
        ungrounded_score=alert.ungrounded,
        encoder_version=encoder_version,
        kb_version=kb_version,
    )
    for match in alert.matched:
        message.matched.add(
            case_id=match.case.id,
            failure_type=match.case.failure_type,
            similarity=match.similarity,
            agent=match.case.agent,
            run_id=match.case.run_id,
        )
    message.detected_at.FromNanoseconds(int(alert.detected_at * 1e9))
    return message


class DetectorApp:
    def __init__(
        self,
        detector: Detector,
        incidents: IncidentTracker,
        actuator: KubernetesActuator,
        publisher: Publisher | None,
        topics: Topics,
        namespace: str = "default",
    ) -> None:
        self.detector, self.incidents, self.actuator = detector, incidents, actuator
        self.publisher, self.topics, self.namespace = publisher, topics, namespace
        self._alerts: OrderedDict[str, _StoredAlert] = OrderedDict()
        self._lock = threading.Lock()
        self.steps_handled = 0

    # -- steps ---------------------------------------------------------------------------------

    def observe(self, step: Step) -> detector_pb2.Verdict:
        verdict = self.detector.observe(step)
        self.steps_handled += 1
        STEPS.labels(step.system).inc()
        STEP_SECONDS.observe(verdict.latency_ms / 1e3)
        return self._verdict(verdict)

    def _verdict(self, verdict: StepVerdict) -> detector_pb2.Verdict:
        out = detector_pb2.Verdict(
            run_id=verdict.run_id,
            step_index=verdict.step_index,
            knowledge_score=verdict.score.knowledge,
            deviation_score=verdict.score.deviation,
            ungrounded_score=verdict.score.ungrounded,
            latency_ms=verdict.latency_ms,
        )
        if verdict.alert is not None:
            out.alert = True
            out.detail.CopyFrom(self._raise(verdict.alert))
        return out

    def end_run(self, end: RunEnd) -> None:
        alert = self.detector.end_run(end.run_id, end.system, end.trace_id)
        if alert is not None:
            self._raise(alert)

    def _raise(self, alert: AlertInfo) -> detector_pb2.Alert:
        message = alert_proto(alert, self.detector.encoder.version, self.detector.kb.version)
        ALERTS_RAISED.labels(alert.system, "trace" if alert.level == TRACE else "step").inc()
        with self._lock:
            self._alerts[alert.id] = _StoredAlert(message, alert.vector, alert.level)
            while len(self._alerts) > MAX_ALERTS:
                self._alerts.popitem(last=False)
        plan = self.actuator.execute(plan_for_alert(alert))
        if self.publisher is not None:
            self.publisher.publish(
                self.topics.alerts, message, key=alert.run_id, subject=alert.run_id, event_id=alert.id
            )
            self.publisher.publish(self.topics.mitigations, plan, key=alert.run_id, subject=alert.id, event_id=plan.id)
        return message

    def handle_spans(self, delivery: Delivery) -> None:
        try:
            items = list(from_request(delivery.message))  # type: ignore[arg-type]
        except StepError as error:
            raise PermanentError(str(error)) from error
        for item in items:
            if isinstance(item, RunEnd):
                self.end_run(item)
            else:
                self.observe(item)

    # -- states → incidents ---------------------------------------------------------------------

    def handle_state(self, delivery: Delivery) -> None:
        state = delivery.message
        assert isinstance(state, embedding_pb2.StateEmbedding)
        if not state.system or not state.HasField("window"):
            raise PermanentError("a StateEmbedding needs system and window")
        if not 0.0 <= state.anomaly_score <= 1.0:
            raise PermanentError(f"anomaly_score {state.anomaly_score} is outside 0..1")
        incident = self.incidents.observe(state)
        if incident is not None:
            self._incident_changed(incident)
        # Saved once published (a crash in between replays the window: the same incident id again).
        self.incidents.save()

    def _incident_changed(self, incident: detector_pb2.Incident) -> None:
        INCIDENTS_CHANGED.labels(incident.system, detector_pb2.IncidentStatus.Name(incident.status)).inc()
        if self.publisher is not None:
            event_id = f"{incident.id}/{detector_pb2.IncidentStatus.Name(incident.status)}"
            self.publisher.publish(
                self.topics.incidents, incident, key=incident.system, subject=incident.id, event_id=event_id, wait=True
            )
        if incident.status == OPEN:
            plan = self.actuator.execute(plan_for_incident(incident, self.namespace))
            if self.publisher is not None:
                self.publisher.publish(
                    self.topics.mitigations, plan, key=incident.system, subject=incident.id, event_id=plan.id, wait=True
                )

    # -- feedback ---------------------------------------------------------------------------------

    def alert(self, alert_id: str) -> _StoredAlert | None:
        with self._lock:
            return self._alerts.get(alert_id)

    def alerts(self, system: str = "", run_id: str = "", limit: int = 0) -> list[detector_pb2.Alert]:
        with self._lock:
            chosen = [
                s.alert
                for s in reversed(self._alerts.values())
                if (not system or s.alert.system == system) and (not run_id or s.alert.run_id == run_id)
            ]
        return chosen[:limit] if limit > 0 else chosen

    def confirm(self, request: detector_pb2.ConfirmFailureRequest) -> Case:
        if request.alert_id:
            stored = self.alert(request.alert_id)
            if stored is None:
                raise KeyError(f"no alert {request.alert_id}")
            if stored.vector is None:
                raise ValueError(f"alert {request.alert_id} kept no embedding; send the steps")
            a = stored.alert
            failure_type = request.failure_type or a.failure_type
            case = Case(
                "",
                stored.level,
                a.system,
                failure_type,
                a.agent,
                a.step_index,
                a.run_id,
                request.mitigation or MITIGATIONS.get(failure_type, ""),
                "expert",
                request.description,
            )
            return self.detector.kb.add([case], stored.vector[None])[0]
        if not request.steps or not request.failure_type:
            raise ValueError("ConfirmFailure needs alert_id, or steps and failure_type")
        steps = [from_proto(s) for s in request.steps]
        vectors = self.detector.embed(steps)
        last = steps[-1]
        mitigation = request.mitigation or MITIGATIONS.get(request.failure_type, "")
        if request.level == detector_pb2.CASE_LEVEL_TRACE:
            encoder = self.detector.encoder
            _, prefixes = encoder.advance(encoder.start(), vectors)
            case = Case(
                "",
                TRACE,
                last.system,
                request.failure_type,
                "",
                last.index,
                last.run_id,
                mitigation,
                "expert",
                request.description,
            )
            return self.detector.kb.add([case], prefixes[-1:])[0]
        case = Case(
            "",
            STEP,
            last.system,
            request.failure_type,
            last.agent,
            last.index,
            last.run_id,
            mitigation,
            "expert",
            request.description,
        )
        return self.detector.kb.add([case], vectors[-1:])[0]

    def reject(self, request: detector_pb2.RejectAlertRequest) -> Case:
        stored = self.alert(request.alert_id)
        if stored is None:
            raise KeyError(f"no alert {request.alert_id}")
        if stored.vector is None:
            raise ValueError(f"alert {request.alert_id} kept no embedding")
        a = stored.alert
        case = Case(
            "",
            stored.level,
            a.system,
            NORMAL,
            a.agent,
            a.step_index,
            a.run_id,
            "",
            "expert",
            f"rejected alert {a.id}: {request.reason}",
        )
        return self.detector.kb.add([case], stored.vector[None])[0]


class DetectorServicer(detector_pb2_grpc.DetectorServiceServicer):
    def __init__(self, app: DetectorApp) -> None:
        self.app = app

    def ObserveSteps(self, request_iterator, context) -> Iterator[detector_pb2.Verdict]:  # type: ignore[no-untyped-def]
        for message in request_iterator:
            try:
                step = from_proto(message)
            except StepError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            yield self.app.observe(step)

    def ListAlerts(self, request, context):  # type: ignore[no-untyped-def]
        return detector_pb2.ListAlertsResponse(alerts=self.app.alerts(request.system, request.run_id, request.limit))

    def ListIncidents(self, request, context):  # type: ignore[no-untyped-def]
        found = self.app.incidents.list(request.system, request.status, request.limit)
        return detector_pb2.ListIncidentsResponse(incidents=found)

    def GetIncident(self, request, context):  # type: ignore[no-untyped-def]
        found = self.app.incidents.get(request.id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no incident {request.id}")
        return found

    def ConfirmFailure(self, request, context):  # type: ignore[no-untyped-def]
        try:
            case = self.app.confirm(request)
        except KeyError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except (ValueError, StepError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return detector_pb2.ConfirmFailureResponse(case=case.to_proto(), kb_version=self.app.detector.kb.version)

    def RejectAlert(self, request, context):  # type: ignore[no-untyped-def]
        try:
            case = self.app.reject(request)
        except KeyError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return detector_pb2.RejectAlertResponse(
            normal_reference=case.to_proto(), kb_version=self.app.detector.kb.version
        )

    def ListFailureCases(self, request, context):  # type: ignore[no-untyped-def]
        kb = self.app.detector.kb
        cases = kb.list(request.system, request.level, request.failure_type, request.include_normal, request.limit)
        return detector_pb2.ListFailureCasesResponse(cases=[c.to_proto() for c in cases], kb_version=kb.version)

    def DeleteFailureCase(self, request, context):  # type: ignore[no-untyped-def]
        kb = self.app.detector.kb
        return detector_pb2.DeleteFailureCaseResponse(deleted=kb.delete(request.id), kb_version=kb.version)
